//! The causal language-modelling loss as transformers computes it: labels shifted left by one
//! inside, positions labelled -100 ignored, mean over the rest; from logits, or from the last
//! hidden states in chunks without keeping any `[tokens, vocab]` tensor for backward.

use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use peft_core::precision::{to_dtype, to_f32};
use peft_core::product::{add_product, linear};
use peft_core::Projection;

#[cfg(feature = "flex")]
use crate::nn::flex::cross_entropy_rows;
use crate::registry::CausalLm;
use packed_head::packed_cross_entropy;

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

/// Labels `[batch, seq]` as the host holds them (row-major), -100 where there is no loss: the
/// loss from hidden states picks its positions from them without reading the device.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLabels {
    values: Vec<i64>,
    seq: usize,
}

impl HostLabels {
    /// Labels of rows of `seq` positions each, one row after the other (`values.len()` is a
    /// multiple of `seq`).
    pub fn new(values: Vec<i64>, seq: usize) -> Self {
        debug_assert!(
            seq > 0 && values.len() % seq == 0,
            "labels must fill [batch, seq]"
        );
        Self { values, seq }
    }

    /// Rows.
    pub fn batch(&self) -> usize {
        self.values.len().checked_div(self.seq).unwrap_or(0)
    }

    /// The labels as a device tensor `[batch, seq]`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let data = TensorData::new(self.values.clone(), [self.batch(), self.seq]);
        Tensor::from_data(data, device)
    }

    /// Where each counted prediction is read and what it must predict, for hidden states of
    /// `hidden_seq` positions per row (more than the labels' when virtual tokens come first):
    /// position `t` predicts the label at `t + 1`, as in [`causal_lm_loss`].
    fn counted_positions(&self, hidden_seq: usize) -> (Vec<i64>, Vec<i64>) {
        let extra = hidden_seq.saturating_sub(self.seq);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (b, row) in self.values.chunks(self.seq.max(1)).enumerate() {
            for (j, &label) in row.iter().enumerate() {
                // The label at padded position extra + j is predicted by the position before.
                let Some(t) = (extra + j).checked_sub(1) else {
                    continue;
                };
                if label != IGNORE_INDEX {
                    rows.push((b * hidden_seq + t) as i64);
                    targets.push(label);
                }
            }
        }
        (rows, targets)
    }
}

/// Elements of one chunk of logits `[rows, vocab]` (64 MiB in f32): the most [`lm_loss`]
/// holds at a time, whatever the batch.
pub const CHUNK_ELEMENTS: usize = 1 << 24;

/// [`causal_lm_loss`] of `model` on `input_ids` against `labels`, equal to it (to rounding) in
/// value and gradients but computed from the last hidden states when the output head is one
/// linear layer (no adapter computing beside it): logits only at the labelled positions, in
/// chunks of rows, each chunk's gradient taken at once, so that no `[tokens, vocab]` tensor is
/// kept for backward. Otherwise it computes every logit and [`causal_lm_loss`].
pub fn lm_loss(
    model: &CausalLm,
    input_ids: Tensor<2, Int>,
    padding_mask: Option<&Tensor<2, Int>>,
    labels: &HostLabels,
) -> Tensor<1> {
    lm_loss_in_chunks(model, input_ids, padding_mask, labels, CHUNK_ELEMENTS)
}

/// [`lm_loss`] with chunks of at most `chunk_elements` logits (at least one row each).
pub fn lm_loss_in_chunks(
    model: &CausalLm,
    input_ids: Tensor<2, Int>,
    padding_mask: Option<&Tensor<2, Int>>,
    labels: &HostLabels,
    chunk_elements: usize,
) -> Tensor<1> {
    let hidden = model.hidden_states(input_ids, padding_mask, None);
    loss_of_hidden(hidden, model.lm_head(), labels, chunk_elements)
}

/// [`lm_loss_in_chunks`] from the last hidden states `[batch, seq, hidden]` and the output
/// head.
pub(crate) fn loss_of_hidden(
    hidden: Tensor<3>,
    head: &Projection,
    labels: &HostLabels,
    chunk_elements: usize,
) -> Tensor<1> {
    let [batch, seq, width] = hidden.dims();
    let device = hidden.device();
    let (rows, targets) = labels.counted_positions(seq);
    let count = rows.len();
    let upload = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [count]), &device);
    // A packed head without a bias: expanded a slice of columns at a time.
    if let Some(packed) = head.as_packed().filter(|p| p.bias.is_none() && count > 0) {
        let picked = hidden.reshape([batch * seq, width]).select(0, upload(rows));
        let targets = upload(targets);
        return packed_cross_entropy(picked, &packed.weight, targets, chunk_elements);
    }
    let dense = match head.as_linear() {
        Some(dense) if !rows.is_empty() => dense,
        // An adapter on the head, or nothing to count (NaN, as transformers gives).
        _ => return causal_lm_loss(to_f32(head.forward(hidden)), labels.to_tensor(&device)),
    };
    let picked = hidden.reshape([batch * seq, width]).select(0, upload(rows));
    let vocab = head.out_features();
    let chunk_rows = (chunk_elements / vocab.max(1)).max(1);
    let uploaded = upload(targets.clone());
    chunked_cross_entropy(picked, &dense, (uploaded, &targets), chunk_rows)
}

/// Mean cross-entropy of `head(hidden)` `[rows, vocab]` against `targets` `[rows]` (on the
/// device, and as the host holds them), computed
/// `chunk_rows` rows at a time outside autodiff: each chunk gives its share of the loss and of
/// the gradients of `hidden` (and of the layer's weight and bias where they train), `softmax −
/// one_hot`, at once. The result carries those gradients through a surrogate
/// `Σ hidden ⊙ G` whose value is cancelled, so backward reproduces exactly what autodiff
/// of the plain loss would give.
fn chunked_cross_entropy(
    hidden: Tensor<2>,
    head: &Linear,
    (targets, host_targets): (Tensor<1, Int>, &[i64]),
    chunk_rows: usize,
) -> Tensor<1> {
    let rows = hidden.dims()[0];
    let device = hidden.device();
    let weight = head.weight.val();
    let bias = head.bias.as_ref().map(|b| b.val());
    let vocab = weight.dims()[1];
    let wants_hidden = hidden.is_tracked();
    let wants_weight = weight.is_tracked();
    let wants_bias = bias.as_ref().is_some_and(|b| b.is_tracked());
    // Products in the head's type (bf16 on a bf16 base, as transformers multiplies), the
    // softmax and the loss in f32.
    let dtype = weight.dtype();
    let (h, w) = (
        to_dtype(hidden.clone().detach(), dtype),
        weight.clone().detach(),
    );
    let b = bias.clone().map(|b| to_f32(b.detach().reshape([1, vocab])));

    let mut total = Tensor::<1>::zeros([1], &device);
    let mut grad_hidden = Vec::new();
    let mut grad_weight: Option<Tensor<2>> = None;
    let mut grad_bias: Option<Tensor<2>> = None;
    for start in (0..rows).step_by(chunk_rows) {
        let len = chunk_rows.min(rows - start);
        let h_chunk = h.clone().narrow(0, start, len);
        let mut logits = to_f32(linear(h_chunk.clone(), w.clone(), None));
        if let Some(b) = &b {
            logits = logits + b.clone();
        }
        // The chunk's loss and d(loss)/d(logits), up to the 1/rows of the mean.
        let fused = cross_entropy_rows(logits, &host_targets[start..start + len]);
        let grad = match fused {
            Ok((loss, grad)) => {
                total = total.add_scalar(loss);
                grad
            }
            Err(logits) => {
                let t_chunk = targets.clone().narrow(0, start, len).reshape([len, 1]);
                let (loss, grad) = composed_cross_entropy_rows(*logits, t_chunk);
                total = total + loss;
                grad
            }
        };
        if !(wants_hidden || wants_weight || wants_bias) {
            continue;
        }
        if wants_hidden {
            let product = linear(to_dtype(grad.clone(), dtype), w.clone().transpose(), None);
            grad_hidden.push(to_dtype(product, hidden.dtype()));
        }
        if wants_weight {
            // Summed into one buffer by the products themselves (on flex).
            let (h_t, g) = (h_chunk.transpose(), to_dtype(grad.clone(), dtype));
            grad_weight = Some(match grad_weight {
                None => to_dtype(linear(h_t, g, None), dtype),
                Some(acc) => add_product(acc, h_t, g),
            });
        }
        if wants_bias {
            let g = to_dtype(grad.sum_dim(0), dtype);
            grad_bias = Some(grad_bias.map_or(g.clone(), |acc| acc + g));
        }
    }
    let scale = 1.0 / rows as f64;
    let loss = total.mul_scalar(scale);
    let mut surrogate: Option<Tensor<1>> = None;
    let mut add = |term: Tensor<1>| {
        surrogate = Some(surrogate.take().map_or(term.clone(), |s| s + term));
    };
    // Each term's value cancels.
    if wants_hidden {
        add(carry(hidden, Tensor::cat(grad_hidden, 0), scale));
    }
    if let Some(grad) = grad_weight {
        add(carry(weight, grad, scale));
    }
    if let (Some(bias), Some(grad)) = (bias, grad_bias) {
        add(carry(bias, grad.reshape([vocab]), scale));
    }
    match surrogate {
        Some(s) => loss + s.clone() - s.detach(),
        None => loss,
    }
}

/// A `[1]` f32 term whose backward gives `tensor` the gradient `scale · grad`: on flex in f32
/// one node that hands it over (a zero), elsewhere the surrogate `Σ tensor ⊙ (scale · grad)`
/// (f32, so that its sum with the f32 loss is well typed).
fn carry<const D: usize>(tensor: Tensor<D>, grad: Tensor<D>, scale: f64) -> Tensor<1> {
    #[cfg(feature = "flex")]
    if let Some(zero) = crate::nn::flex::gradient_carrier(&tensor, &grad, scale as f32) {
        return zero;
    }
    to_f32((tensor * grad.mul_scalar(scale)).sum())
}

/// `nn::flex::cross_entropy_rows` composed of tensor operations, for every backend: the sum of
/// the rows' losses `[1]` and `softmax − one_hot` of `logits` `[rows, vocab]` against `targets`
/// `[rows, 1]`.
fn composed_cross_entropy_rows(
    logits: Tensor<2>,
    targets: Tensor<2, Int>,
) -> (Tensor<1>, Tensor<2>) {
    let rows = logits.dims()[0];
    let max = logits.clone().max_dim(1);
    let exp = (logits.clone() - max.clone()).exp();
    let sum = exp.clone().sum_dim(1);
    let target_logit = logits.gather(1, targets.clone());
    let loss = (sum.clone().log() + max - target_logit).sum();
    let minus_one = Tensor::<2>::full([rows, 1], -1.0, &loss.device());
    let grad = (exp / sum).scatter(1, targets, minus_one, IndexingUpdateOp::Add);
    (loss, grad)
}

/// Without flex, every chunk is composed of tensor operations.
#[cfg(not(feature = "flex"))]
fn cross_entropy_rows(
    logits: Tensor<2>,
    _targets: &[i64],
) -> Result<(f64, Tensor<2>), Box<Tensor<2>>> {
    Err(Box::new(logits))
}

mod packed_head;
#[cfg(test)]
mod tests;
