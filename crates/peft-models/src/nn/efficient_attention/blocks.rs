//! The attention's forward and backward arithmetic on one backend's primitives. The backward
//! pass goes a block of query rows at a time, so that no `[batch, heads, rows, keys]` tensor
//! larger than a block exists.

use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Shape, Slice};
use std::ops::Range;

/// Queries `[b, g, n, d]` (the `n` rows of the query heads that share each of the `g` key/value
/// heads), keys and values `[b, g, t, d]`, the mask `[b, 1, n, t]` (`true` = may not attend)
/// and the scores' scale; backward computes `block_elements` scores at most at a time.
pub(super) struct Inputs<B: Backend> {
    pub query: FloatTensor<B>,
    pub key: FloatTensor<B>,
    pub value: FloatTensor<B>,
    pub mask: BoolTensor<B>,
    pub scale: f64,
    pub block_elements: usize,
}

/// The gradients of the queries, keys and values; `None` where the caller does not want one.
pub(super) struct InputGradients<B: Backend> {
    pub query: Option<FloatTensor<B>>,
    pub key: Option<FloatTensor<B>>,
    pub value: Option<FloatTensor<B>>,
}

/// `softmax(q·kᵀ·scale, masked) · v` `[b, g, n, d]`: the backend's own attention, a fused
/// kernel where it has one (flex's tiled CPU kernel, CubeCL's flash attention), which keeps
/// nothing.
pub(super) fn forward<B: Backend>(inputs: &Inputs<B>) -> FloatTensor<B> {
    let shape = inputs.query.shape();
    let [b, g, n, _] = dims4(&shape);
    let t = dims4(&inputs.key.shape())[2];
    let mask = B::bool_expand(inputs.mask.clone(), Shape::new([b, g, n, t]));
    B::attention(
        inputs.query.clone(),
        inputs.key.clone(),
        inputs.value.clone(),
        Some(mask),
        None,
        AttentionModuleOptions {
            scale: Some(inputs.scale),
            softcap: None,
            is_causal: false,
        },
    )
}

/// The gradients of [`forward`]'s inputs from the gradient of its output `[b, g, n, d]`,
/// recomputing the attention weights block by block (FlashAttention's backward):
/// `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dQ = dS·K·scale`,
/// `dK = dSᵀ·Q·scale`.
pub(super) fn backward<B: Backend>(
    inputs: &Inputs<B>,
    grad_output: FloatTensor<B>,
    wanted: [bool; 3],
) -> InputGradients<B> {
    let [want_query, want_key, want_value] = wanted;
    let key_t = B::float_transpose(inputs.key.clone());
    let value_t = B::float_transpose(inputs.value.clone());
    let mut grad_query = Vec::new();
    let mut grad_key: Option<FloatTensor<B>> = None;
    let mut grad_value: Option<FloatTensor<B>> = None;
    for rows in row_blocks(inputs) {
        let weights = softmax::<B>(masked_scores(inputs, &key_t, rows.clone()));
        let grad_out = slice_rows::<B>(&grad_output, &rows);
        if want_value {
            let block = B::float_matmul(B::float_transpose(weights.clone()), grad_out.clone());
            grad_value = Some(accumulate::<B>(grad_value, block));
        }
        if !(want_query || want_key) {
            continue;
        }
        let grad_weights = B::float_matmul(grad_out, value_t.clone());
        let row_dot = B::float_sum_dim(B::float_mul(weights.clone(), grad_weights.clone()), 3);
        let grad_scores = B::float_mul_scalar(
            B::float_mul(weights, B::float_sub(grad_weights, row_dot)),
            inputs.scale.into(),
        );
        if want_query {
            grad_query.push(B::float_matmul(grad_scores.clone(), inputs.key.clone()));
        }
        if want_key {
            let query = slice_rows::<B>(&inputs.query, &rows);
            let block = B::float_matmul(B::float_transpose(grad_scores), query);
            grad_key = Some(accumulate::<B>(grad_key, block));
        }
    }
    InputGradients {
        query: want_query.then(|| concat_rows::<B>(grad_query)),
        key: grad_key,
        value: grad_value,
    }
}

/// `q·kᵀ·scale` for the query rows `rows`, with masked entries at −∞ `[b, g, rows, t]`.
fn masked_scores<B: Backend>(
    inputs: &Inputs<B>,
    key_t: &FloatTensor<B>,
    rows: Range<usize>,
) -> FloatTensor<B> {
    let query = slice_rows::<B>(&inputs.query, &rows);
    let scores = B::float_mul_scalar(B::float_matmul(query, key_t.clone()), inputs.scale.into());
    let mask = B::bool_expand(
        B::bool_slice(inputs.mask.clone(), &row_slices(&rows)),
        scores.shape(),
    );
    B::float_mask_fill(scores, mask, f32::NEG_INFINITY.into())
}

/// The softmax of `scores` along the keys, clamped as in Burn's own attention so that a row with
/// every key masked gets zero weights instead of NaN.
fn softmax<B: Backend>(scores: FloatTensor<B>) -> FloatTensor<B> {
    let (lowest, smallest) = softmax_clamps::<B>(&scores);
    let max = B::float_clamp_min(B::float_max_dim(scores.clone(), 3), lowest.into());
    let weights = B::float_exp(B::float_sub(scores, max));
    let sum = B::float_clamp_min(B::float_sum_dim(weights.clone(), 3), smallest.into());
    B::float_div(weights, sum)
}

/// Consecutive blocks of query rows, each with at most `inputs.block_elements` scores (one row
/// at least).
fn row_blocks<B: Backend>(inputs: &Inputs<B>) -> impl Iterator<Item = Range<usize>> {
    let [batch, heads, rows, _] = dims4(&inputs.query.shape());
    let keys = dims4(&inputs.key.shape())[2];
    let per_block = (inputs.block_elements / (batch * heads * keys).max(1)).clamp(1, rows.max(1));
    (0..rows)
        .step_by(per_block)
        .map(move |start| start..(start + per_block).min(rows))
}

/// Rows `rows` of a `[b, g, n, _]` tensor; the tensor itself when that is all of it.
fn slice_rows<B: Backend>(tensor: &FloatTensor<B>, rows: &Range<usize>) -> FloatTensor<B> {
    if rows.start == 0 && rows.end == dims4(&tensor.shape())[2] {
        return tensor.clone();
    }
    B::float_slice(tensor.clone(), &row_slices(rows))
}

/// The slice of a `[b, g, n, _]` tensor holding rows `rows`.
fn row_slices(rows: &Range<usize>) -> [Slice; 4] {
    [
        Slice::full(),
        Slice::full(),
        Slice::from(rows.clone()),
        Slice::full(),
    ]
}

/// The blocks of rows put back together.
fn concat_rows<B: Backend>(mut blocks: Vec<FloatTensor<B>>) -> FloatTensor<B> {
    if blocks.len() == 1 {
        return blocks.remove(0);
    }
    B::float_cat(blocks, 2)
}

/// `sum + block`, or `block` for the first one.
fn accumulate<B: Backend>(sum: Option<FloatTensor<B>>, block: FloatTensor<B>) -> FloatTensor<B> {
    match sum {
        Some(sum) => B::float_add(sum, block),
        None => block,
    }
}

/// The four dimensions of an attention tensor's shape.
fn dims4(shape: &Shape) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}

/// The most negative finite value and the smallest positive normal one of the scores' float
/// type: the softmax's clamps.
fn softmax_clamps<B: Backend>(scores: &FloatTensor<B>) -> (f64, f64) {
    let info = scores
        .dtype()
        .finfo()
        .unwrap_or_else(|| FloatDType::F32.finfo());
    (info.min, info.min_positive)
}
