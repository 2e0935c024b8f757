//! The causal language-modelling loss as transformers computes it: labels shifted left by one
//! inside, positions labelled -100 ignored, mean over the rest.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// The label that marks a position without loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Mean next-token cross-entropy of `logits` `[batch, seq, vocab]` against `labels`
/// `[batch, seq]`, where position `t`'s logits predict `labels[t + 1]`. Returns `[1]`; NaN when
/// no position has a label, as in transformers.
///
/// Logits longer than the labels start with virtual tokens (prompt tuning): the labels are
/// padded in front with [`IGNORE_INDEX`], as PEFT pads them, so the last virtual position
/// predicts the first label.
pub fn causal_lm_loss(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    let labels = match seq.saturating_sub(labels.dims()[1]) {
        0 => labels,
        extra => {
            let pad = Tensor::<2, Int>::full([batch, extra], IGNORE_INDEX, &labels.device());
            Tensor::cat(vec![pad, labels], 1)
        }
    };
    let n = batch * (seq - 1);
    let logits = logits.narrow(1, 0, seq - 1).reshape([n, vocab]);
    let labels = labels.narrow(1, 1, seq - 1).reshape([n]);
    let counted = labels.clone().not_equal_elem(IGNORE_INDEX);
    // Any valid index will do where the label is ignored; those positions are masked out below.
    let targets = labels
        .mask_fill(counted.clone().bool_not(), 0)
        .reshape([n, 1]);
    let picked = log_softmax(logits, 1).gather(1, targets).reshape([n]);
    let weights = counted.float();
    (picked * weights.clone()).sum().neg() / weights.sum()
}
