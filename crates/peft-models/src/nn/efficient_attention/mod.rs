//! Softmax attention for training whose backward pass recomputes the attention weights instead of
//! keeping them. Under autodiff, Burn 0.22 runs `attention` through its decomposed fallback, whose
//! graph keeps the exponentials and the softmax of every layer, two `[batch, heads, seq, seq]`
//! tensors (2 × 38 MB a layer for SmolLM2 at 4×512 in f32, more than the rest of a LoRA step's
//! activations together). Here the attention is one node of the graph: its forward pass is the
//! backend's own attention (a fused kernel on flex and the GPU backends) and keeps nothing, and
//! its backward pass recomputes the weights a block of query rows at a time from the queries and
//! keys, as FlashAttention's does. Grouped-query attention
//! runs without repeating keys and values: the query heads that share a key/value head are
//! stacked along the rows.
//!
//! It is a backend extension (Burn's `try_into_primitive`, the autodiff `Backward` trait), so it
//! runs on the backends this crate's features name (`flex`, `ndarray`, `wgpu`, `cuda`); on any
//! other, and without autodiff, callers use Burn's own attention.

mod autodiff;
mod blocks;

use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::Autodiff;
use burn::backend::{Backend, DispatchKindConversion};
use burn::tensor::{Bool, DispatchTensor, Tensor};

/// Softmax attention of `query` `[b, h, s, d]` over `key` and `value` `[b, g, t, d]` (`g` key/value
/// heads, each serving `h / g` consecutive query heads) with `mask` `[b, 1, s, t]` (`true` = may
/// not attend), scores scaled by `scale`: `[b, h, s, d]`, recorded for backward as described in
/// the module's documentation. `None` when the tensors are not on an autodiff device of a backend
/// this crate was built for; the caller then uses Burn's attention.
pub fn attention(
    query: &Tensor<4>,
    key: &Tensor<4>,
    value: &Tensor<4>,
    mask: &Tensor<4, Bool>,
    scale: f64,
) -> Option<Tensor<4>> {
    attention_in_blocks(query, key, value, mask, scale, BLOCK_ELEMENTS)
}

/// Elements of one block of scores `[batch, key/value heads, query rows, keys]` (32 MiB in f32):
/// the most of them the attention's backward pass holds at a time.
const BLOCK_ELEMENTS: usize = 1 << 23;

/// [`attention`], computing at most `block_elements` scores at a time.
fn attention_in_blocks(
    query: &Tensor<4>,
    key: &Tensor<4>,
    value: &Tensor<4>,
    mask: &Tensor<4, Bool>,
    scale: f64,
    block_elements: usize,
) -> Option<Tensor<4>> {
    if !query.device().is_autodiff() {
        return None;
    }
    let [b, h, s, d] = query.dims();
    let [_, g, t, _] = key.dims();
    let group = h / g;
    let stacked_query = query.clone().reshape([b, g, group * s, d]);
    let stacked_mask = if group == 1 {
        mask.clone()
    } else {
        mask.clone()
            .reshape([b, 1, 1, s, t])
            .expand([b, 1, group, s, t])
            .reshape([b, 1, group * s, t])
    };
    BACKENDS
        .iter()
        .find_map(|on| {
            on((
                &stacked_query,
                key,
                value,
                &stacked_mask,
                scale,
                block_elements,
            ))
        })
        .map(|output| output.reshape([b, h, s, d]))
}

/// One backend's attempt at [`attention`] on stacked queries: `None` when the tensors live elsewhere.
type Attempt = fn(AttemptArgs) -> Option<Tensor<4>>;

/// The backends this crate was built for.
const BACKENDS: &[Attempt] = &[
    #[cfg(feature = "flex")]
    on::<burn::backend::Flex>,
    // Deprecated by Burn in favour of flex, and still one of `peft-cli`'s backends.
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    on::<burn::backend::NdArray>,
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    on::<burn::backend::Cube>,
];

/// [`attention`] on backend `B`, under either of autodiff's checkpointing strategies.
fn on<B: Backend>(args: AttemptArgs) -> Option<Tensor<4>>
where
    DispatchTensor: DispatchKindConversion<B>
        + DispatchKindConversion<Autodiff<B, NoCheckpointing>>
        + DispatchKindConversion<Autodiff<B, BalancedCheckpointing>>,
{
    with_strategy::<B, NoCheckpointing>(args)
        .or_else(|| with_strategy::<B, BalancedCheckpointing>(args))
}

/// [`Attempt`]'s arguments: stacked queries, keys, values, the stacked mask, the scale and the
/// block size.
type AttemptArgs<'a> = (
    &'a Tensor<4>,
    &'a Tensor<4>,
    &'a Tensor<4>,
    &'a Tensor<4, Bool>,
    f64,
    usize,
);

/// [`attention`] on `Autodiff<B, C>`; `None` when the tensors are not that backend's.
fn with_strategy<B: Backend, C: CheckpointStrategy>(
    (query, key, value, mask, scale, block_elements): AttemptArgs,
) -> Option<Tensor<4>>
where
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B, C>>,
{
    let query = query.clone().try_into_primitive::<Autodiff<B, C>>().ok()?;
    let key = key.clone().try_into_primitive::<Autodiff<B, C>>().ok()?;
    let value = value.clone().try_into_primitive::<Autodiff<B, C>>().ok()?;
    // A mask made on the autodiff device carries its context; one made without it does not.
    let mask = mask
        .clone()
        .try_into_primitive::<Autodiff<B, C>>()
        .ok()
        .or_else(|| mask.clone().try_into_primitive::<B>().ok())?;
    let output = autodiff::attention::<B, C>(query, key, value, mask, scale, block_elements);
    Some(Tensor::from_primitive::<Autodiff<B, C>>(output))
}

#[cfg(test)]
mod tests;
