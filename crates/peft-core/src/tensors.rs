//! Tensors on the host: f32 values with their shape, as read from a weights file or from the
//! device, and the safetensors encoding both ways. The one tensor toolkit of the workspace:
//! adapter files, model checkpoints and the parity tool all go through it.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{PeftError, Result};

/// A tensor on the host: row-major f32 values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// The first NaN or infinite value and its row-major index, if any.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        self.data
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i, self.data[i]))
    }

    /// Reads a tensor back from the device.
    pub fn read<const D: usize>(t: Tensor<D>) -> Result<Self> {
        let shape = t.dims().to_vec();
        let data = t
            .try_into_data()
            .map_err(|e| PeftError::Backend(format!("{e:?}")))?
            .try_into_vec_as::<f32>()
            .map_err(|e| PeftError::Backend(format!("{e:?}")))?;
        Ok(Self { shape, data })
    }

    /// The transpose of a 2-D tensor, row-major (so that it uploads as a contiguous tensor:
    /// a transposed view would make every later product read it strided).
    pub fn transposed(self) -> Self {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self {
            shape: vec![cols, rows],
            data,
        }
    }

    /// A 2-D tensor with only the rows (`axis` 0) or columns (`axis` 1) that `keep` marks.
    pub fn keep_along(self, axis: usize, keep: &[bool]) -> Self {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        let data: Vec<f32> = self
            .data
            .iter()
            .enumerate()
            .filter(|(i, _)| keep[if axis == 0 { i / cols } else { i % cols }])
            .map(|(_, v)| *v)
            .collect();
        let kept = keep.iter().filter(|k| **k).count();
        let shape = if axis == 0 {
            vec![kept, cols]
        } else {
            vec![rows, kept]
        };
        Self { shape, data }
    }

    /// Uploads the tensor to `device`. The caller has checked the shape's rank (readers
    /// compare every shape with the one the model expects before uploading).
    pub fn upload<const D: usize>(self, device: &Device) -> Tensor<D> {
        let shape: [usize; D] = self
            .shape
            .try_into()
            .expect("shape checked against the rank by the reader");
        Tensor::from_data(TensorData::new(self.data, shape), device)
    }
}

/// A parameter's value, or with `grads` its gradient (`None` when it has none).
pub fn value_or_grad<const D: usize>(
    p: &Param<Tensor<D>>,
    grads: Option<&Gradients>,
) -> Option<Tensor<D>> {
    match grads {
        None => Some(p.val()),
        Some(g) => p.val().grad(g),
    }
}

/// Gives a layer the tensor named `suffix` with shape `expected`, or an error naming its key.
pub type TensorReader<'a> = dyn FnMut(&str, &[usize]) -> Result<HostTensor> + 'a;

/// Little-endian F32, F16 or BF16 bytes as f32 values; `None` for other dtypes.
pub fn decode_floats(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let halves = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(halves().map(|h| half::f16::from_bits(h).to_f32()).collect()),
        Dtype::BF16 => Some(
            halves()
                .map(|h| half::bf16::from_bits(h).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// Serialises named tensors as f32 safetensors with PEFT's metadata (`format: pt`).
pub fn to_safetensors(tensors: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (k.clone(), v))
                .map_err(|e| PeftError::Backend(format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize(views, metadata).map_err(|e| PeftError::Backend(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_moves_rows_to_columns() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        let t = HostTensor {
            shape: vec![2, 3],
            data: vec![1., 2., 3., 4., 5., 6.],
        };
        let t = t.transposed();
        assert_eq!(t.shape, [3, 2]);
        assert_eq!(t.data, [1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn keep_along_selects_rows_or_columns() {
        let t = HostTensor {
            shape: vec![2, 3],
            data: vec![1., 2., 3., 4., 5., 6.],
        };
        let rows = t.clone().keep_along(0, &[false, true]);
        assert_eq!((rows.shape, rows.data), (vec![1, 3], vec![4., 5., 6.]));
        let cols = t.keep_along(1, &[true, false, true]);
        assert_eq!((cols.shape, cols.data), (vec![2, 2], vec![1., 3., 4., 6.]));
    }

    #[test]
    fn decodes_half_precision_exactly() {
        let one_f16 = half::f16::from_f32(1.5).to_bits().to_le_bytes();
        let one_bf16 = half::bf16::from_f32(-2.0).to_bits().to_le_bytes();
        assert_eq!(decode_floats(&one_f16, Dtype::F16), Some(vec![1.5]));
        assert_eq!(decode_floats(&one_bf16, Dtype::BF16), Some(vec![-2.0]));
        assert_eq!(decode_floats(&[0u8; 8], Dtype::I64), None);
    }
}
