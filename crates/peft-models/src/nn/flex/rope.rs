//! Rotary position embedding, `x · cos + rotate_half(x) · sin`, as one node of the autodiff
//! graph with a one-pass forward and a one-pass backward. Composed, it is two slices, a
//! negation, a concatenation, two products and a sum forward, and their backward, each on one
//! thread.

use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use peft_core::flex_node::{binary, FlexOp};
use rayon::prelude::*;

use super::simd::widest;
use super::storage::{contiguous, f32s, tensor_of};

/// Rows (of `head_dim` values) each parallel task takes.
const TASK_ROWS: usize = 64;

/// RoPE on `x` `[batch, heads, seq, head_dim]` with the tables `cos` and `sin`
/// `[batch or 1, 1, seq, head_dim]`, all f32 on flex, with or without autodiff (the tables
/// untracked); `None` elsewhere, and the caller composes it.
pub(crate) fn rotary(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
    let [batch, _, seq, head_dim] = x.dims();
    let [table_batch, one, table_seq, table_dim] = cos.dims();
    let shapes_fit = (table_batch == batch || table_batch == 1)
        && one == 1
        && (table_seq, table_dim) == (seq, head_dim)
        && sin.dims() == cos.dims()
        && head_dim > 0
        && head_dim % 2 == 0;
    let all_f32 = [x, cos, sin].iter().all(|t| t.dtype() == DType::F32);
    if !shapes_fit || !all_f32 {
        return None;
    }
    // One table, `[batch or 1, 2, seq, head_dim]`: cos, then sin.
    let table = Tensor::cat(vec![cos.clone(), sin.clone()], 1);
    binary(Rotary, x, &table)
}

/// [`rotary`] as a node of the autodiff graph, which keeps the table for the input's gradient.
#[derive(Debug, Clone, Copy)]
struct Rotary;

impl FlexOp<2> for Rotary {
    fn forward(&self, [x, table]: [&FlexTensor; 2]) -> FlexTensor {
        // out[j] = x[j]·cos[j] − x[j + h]·sin[j] for j < h, x[j]·cos[j] + x[j − h]·sin[j] after.
        each_row(x, table, |out, x, cos, sin| {
            let half = x.len() / 2;
            let (x_lo, x_hi) = x.split_at(half);
            let (out_lo, out_hi) = out.split_at_mut(half);
            let (cos_lo, cos_hi) = cos.split_at(half);
            let (sin_lo, sin_hi) = sin.split_at(half);
            for j in 0..half {
                out_lo[j] = x_lo[j] * cos_lo[j] + (-x_hi[j]) * sin_lo[j];
                out_hi[j] = x_hi[j] * cos_hi[j] + x_lo[j] * sin_hi[j];
            }
        })
    }

    fn kept(&self, [x_tracked, _]: [bool; 2]) -> [bool; 2] {
        // The input's gradient needs the table only.
        [false, x_tracked]
    }

    fn gradients(
        &self,
        [_, table]: [Option<FlexTensor>; 2],
        grad_output: &FlexTensor,
        [want_x, _]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let table = table.expect("kept");
        // The transpose of the forward's map: dx[j] = dy[j]·cos[j] + dy[j + h]·sin[j + h] for
        // j < h, dy[j]·cos[j] − dy[j − h]·sin[j − h] after.
        let grad_x = want_x.then(|| {
            each_row(grad_output, &table, |out, d, cos, sin| {
                let half = d.len() / 2;
                let (d_lo, d_hi) = d.split_at(half);
                let (out_lo, out_hi) = out.split_at_mut(half);
                let (cos_lo, cos_hi) = cos.split_at(half);
                let (sin_lo, sin_hi) = sin.split_at(half);
                for j in 0..half {
                    out_lo[j] = d_lo[j] * cos_lo[j] + d_hi[j] * sin_hi[j];
                    out_hi[j] = d_hi[j] * cos_hi[j] - d_lo[j] * sin_lo[j];
                }
            })
        });
        [grad_x, None]
    }
}

/// A new tensor of `input`'s shape `[batch, heads, seq, head_dim]`, each row of `head_dim`
/// values written by `row(out, input, cos, sin)` with its position's rows of `table`
/// `[batch or 1, 2, seq, head_dim]`.
fn each_row(
    input: &FlexTensor,
    table: &FlexTensor,
    row: impl Fn(&mut [f32], &[f32], &[f32], &[f32]) + Sync,
) -> FlexTensor {
    let shape = input.layout().shape().clone();
    let (heads, seq, head_dim) = (shape[1], shape[2], shape[3]);
    let table_batch = table.layout().shape()[0];
    let (input, table) = (contiguous(input), contiguous(table));
    let (values, table) = (f32s(&input), f32s(&table));
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(TASK_ROWS * head_dim)
        .zip(values.par_chunks(TASK_ROWS * head_dim))
        .enumerate()
        .for_each(|(task, (out, values))| {
            widest(|| {
                let rows = out
                    .chunks_exact_mut(head_dim)
                    .zip(values.chunks_exact(head_dim));
                for (i, (out, values)) in rows.enumerate() {
                    let index = task * TASK_ROWS + i;
                    let (position, batch) = (index % seq, index / (heads * seq));
                    let table_row = if table_batch == 1 { 0 } else { batch };
                    let cos = (table_row * 2 * seq + position) * head_dim;
                    let sin = cos + seq * head_dim;
                    let (cos, sin) = (&table[cos..cos + head_dim], &table[sin..sin + head_dim]);
                    row(out, values, cos, sin);
                }
            })
        });
    tensor_of(out, shape)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::nn::flex::test_support::{assert_close, values};

    /// The composed form, as `apply_rotary` computes it without this kernel.
    fn composed(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
        let half = x.dims()[3] / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        x.clone() * cos + Tensor::cat(vec![x2.neg(), x1], 3) * sin
    }

    #[test]
    fn value_and_gradient_equal_the_composed_form() {
        let device = Device::flex().autodiff();
        // A table per sequence (left padding) and one shared; rows past one task.
        for table_batch in [3, 1] {
            let x = Tensor::<4>::random([3, 5, 11, 8], Distribution::Normal(0.0, 2.0), &device)
                .require_grad();
            let angles =
                Tensor::<4>::random([table_batch, 1, 11, 8], Distribution::Default, &device);
            let (cos, sin) = (angles.clone().cos(), angles.sin());
            let upstream = Tensor::<4>::random([3, 5, 11, 8], Distribution::Default, &device);

            let fused = rotary(&x, &cos, &sin).expect("flex f32 under autodiff");
            let grads = (fused.clone() * upstream.clone()).sum().backward();
            let reference = composed(x.clone(), cos, sin);
            let ref_grads = (reference.clone() * upstream).sum().backward();

            assert_close(values(fused), values(reference), "value");
            let got = values(x.grad(&grads).expect("x's gradient"));
            assert_close(got, values(x.grad(&ref_grads).expect("x")), "x");
        }
    }

    #[test]
    fn a_strided_view_and_inference_give_the_composed_value() {
        let device = Device::flex();
        // Heads and sequence swapped, as attention's projections are.
        let x = Tensor::<4>::random([2, 7, 3, 6], Distribution::Default, &device).swap_dims(1, 2);
        let angles = Tensor::<4>::random([1, 1, 7, 6], Distribution::Default, &device);
        let (cos, sin) = (angles.clone().cos(), angles.sin());
        let fused = rotary(&x, &cos, &sin).expect("flex f32");
        assert_close(values(fused), values(composed(x, cos, sin)), "value");
    }

    #[test]
    fn declines_other_types_and_shapes() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 2, 3, 4], &device);
        let table = Tensor::<4>::zeros([1, 1, 3, 4], &device);
        assert!(rotary(&x, &Tensor::zeros([1, 1, 2, 4], &device), &table).is_none());
        let half = x.clone().cast(DType::BF16);
        assert!(rotary(&half, &table, &table).is_none());
        let empty = Tensor::<4>::zeros([1, 2, 3, 0], &device);
        let empty_table = Tensor::<4>::zeros([1, 1, 3, 0], &device);
        assert!(rotary(&empty, &empty_table, &empty_table).is_none());
    }
}
