//! Contiguous f32 storage for the flex element kernels.

use burn::tensor::{Shape, TensorData};
use burn_flex::FlexTensor;

/// `tensor`'s storage as one contiguous run of f32 (copied into one if it is a strided view).
pub(super) fn contiguous(tensor: &FlexTensor) -> FlexTensor {
    if tensor.layout().contiguous_offsets().is_some() {
        tensor.clone()
    } else {
        tensor.to_contiguous()
    }
}

/// A new f32 tensor of `shape` from `values`.
pub(super) fn tensor_of(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The f32 values of a contiguous tensor.
pub(super) fn f32s(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("made contiguous f32 by the caller")
}
