//! Mixed precision: a frozen base in bf16 or f16 with adapters in f32. Each adapter casts its
//! input to its own type and its result back to the base's, as PEFT's `_cast_input_dtype`
//! does, so that adapter weights, their gradients and the optimizer's state stay f32.

use burn::tensor::{DType, Tensor};

/// `x` as `dtype`; `x` itself when it already is (no copy).
pub fn to_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

/// `x` as f32 (logits before the loss, statistics of norms).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    to_dtype(x, DType::F32)
}
