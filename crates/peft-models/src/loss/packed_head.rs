//! Cross-entropy through a packed output head (QLoRA's base): the head is expanded to f32 a
//! slice of vocabulary columns at a time, never whole, so that the loss holds one slice
//! (`chunk_elements` logits and their weights) instead of a `[hidden, vocab]` copy of the head
//! (1 GiB for Llama 3.2 1B). The price is a second pass over the vocabulary for the
//! gradient: the softmax needs every column's logit before any column's probability.

use burn::tensor::{IndexingUpdateOp, Int, Tensor};
use peft_core::PackedWeight;

/// Mean cross-entropy of `hidden · W` against `targets` (`W` = `weight` `[width, vocab]`),
/// with the gradient of `hidden` carried by a surrogate `Σ hidden ⊙ G` whose value cancels,
/// as in the dense head's chunked loss.
pub(super) fn packed_cross_entropy(
    hidden: Tensor<2>,
    weight: &PackedWeight,
    targets: Tensor<1, Int>,
    chunk_elements: usize,
) -> Tensor<1> {
    let [rows, _] = hidden.dims();
    let vocab = weight.dims()[1];
    let columns = (chunk_elements / rows.max(1)).clamp(1, vocab);
    let h = hidden.clone().detach();
    let targets = targets.reshape([rows, 1]);
    let slices: Vec<(usize, usize)> = (0..vocab)
        .step_by(columns)
        .map(|start| (start, columns.min(vocab - start)))
        .collect();
    // Where each target falls in a slice: its column there, and whether it is there at all.
    let in_slice = |start: usize, len: usize| {
        let shifted = targets.clone().sub_scalar(start as i64);
        let inside = shifted
            .clone()
            .greater_equal_elem(0)
            .bool_and(shifted.clone().lower_elem(len as i64));
        (shifted.clamp(0, len as i64 - 1), inside)
    };

    // Pass 1: a running log-sum-exp over the slices, and the target's logit.
    let device = h.device();
    let mut max = Tensor::<2>::full([rows, 1], f32::NEG_INFINITY, &device);
    let mut sum = Tensor::<2>::zeros([rows, 1], &device);
    let mut target_logit = Tensor::<2>::zeros([rows, 1], &device);
    for &(start, len) in &slices {
        let logits = h.clone().matmul(weight.column_range(start, len));
        let slice_max = logits.clone().max_dim(1);
        let new_max = max.clone().max_pair(slice_max);
        sum = sum * (max - new_max.clone()).exp()
            + (logits.clone() - new_max.clone()).exp().sum_dim(1);
        max = new_max;
        let (column, inside) = in_slice(start, len);
        let picked = logits.gather(1, column);
        target_logit = target_logit + picked.mask_fill(inside.bool_not(), 0.0);
    }
    let log_sum_exp = max + sum.log();
    let scale = 1.0 / rows as f64;
    let loss = (log_sum_exp.clone() - target_logit)
        .sum()
        .reshape([1])
        .mul_scalar(scale);
    if !hidden.is_tracked() {
        return loss;
    }

    // Pass 2: d(loss)/d(hidden) = (softmax − one_hot) · Wᵀ, slice by slice.
    let mut grad = Tensor::<2>::zeros(h.dims(), &device);
    for &(start, len) in &slices {
        let w = weight.column_range(start, len);
        let probabilities = (h.clone().matmul(w.clone()) - log_sum_exp.clone()).exp();
        let (column, inside) = in_slice(start, len);
        let minus_one =
            Tensor::<2>::full([rows, 1], -1.0, &device).mask_fill(inside.bool_not(), 0.0);
        let d_logits = probabilities.scatter(1, column, minus_one, IndexingUpdateOp::Add);
        grad = grad + d_logits.matmul(w.transpose());
    }
    let surrogate = (hidden * grad.mul_scalar(scale)).sum();
    loss + surrogate.clone() - surrogate.detach()
}
