//! What the active model-wide adapter adds before a model's input: prompt tuning's
//! embeddings in front of the token embeddings, prefix tuning's keys and values in front of
//! every layer's (put into the key/value cache, so that generation keeps them), the
//! padding mask widened over those virtual positions, which every token may see, and the
//! position of each input.

use burn::tensor::{Int, Tensor};
use peft_core::precision::to_dtype;
use peft_core::ModelAdapters;

use super::attention::KvCache;

/// The input after the virtual tokens were added.
pub struct Prepared {
    /// Embeddings `[batch, seq, hidden]`, prompt-tuning tokens first.
    pub x: Tensor<3>,
    /// The padding mask `[batch, past + seq]` with the virtual positions marked as tokens.
    pub padding_mask: Option<Tensor<2, Int>>,
    /// Positions before `x` (prefix tokens and cached positions).
    pub past: usize,
    /// The position of each of `x`'s inputs, `[batch, seq]` (`[1, seq]` without a padding
    /// mask): the number of real and virtual tokens before it, as transformers' `generate`
    /// numbers them, so that a left-padded row starts at 0 like an unpadded one. Without a
    /// padding mask, `past..past + seq`.
    pub positions: Tensor<2, Int>,
}

/// The cache to run with: the caller's, or a fresh one when a prefix must be held and the
/// caller gave none.
pub fn cache_for_prefix<'a>(
    slot: &ModelAdapters,
    cache: Option<&'a mut KvCache>,
    own: &'a mut Option<KvCache>,
    num_layers: usize,
) -> Option<&'a mut KvCache> {
    match cache {
        Some(cache) => Some(cache),
        None if slot.prefix_active() => Some(own.insert(KvCache::new(num_layers))),
        None => None,
    }
}

/// Adds the active adapter's virtual tokens on a first pass (empty or no cache); later
/// generation steps find the prefix in the cache and the prompt in the cached positions.
pub fn prepare(
    slot: &ModelAdapters,
    x: Tensor<3>,
    padding_mask: Option<&Tensor<2, Int>>,
    cache: Option<&mut KvCache>,
) -> Prepared {
    let [batch, _, _] = x.dims();
    let first_pass = cache.as_ref().is_none_or(|c| c.is_empty());
    let mut x = x;
    let mut past = 0;
    if let Some(cache) = cache {
        if first_pass {
            // The adapter's f32 keys and values in the base's type, as PEFT casts them.
            let dtype = x.dtype();
            for (layer, (k, v)) in slot.prefix(batch).into_iter().flatten().enumerate() {
                cache.append(layer, to_dtype(k, dtype), to_dtype(v, dtype));
            }
        }
        past = cache.len();
    }
    if first_pass {
        if let Some(prompt) = slot.prompt(batch) {
            let dtype = x.dtype();
            x = Tensor::cat(vec![to_dtype(prompt, dtype), x], 1);
        }
    }
    let seq = x.dims()[1];
    let padding_mask = padding_mask.map(|m| widen(m, past + seq));
    let positions = match &padding_mask {
        // Padding takes the position of the token before it (0 at the start); no real token
        // attends to it.
        Some(mask) => mask
            .clone()
            .cumsum(1)
            .sub_scalar(1)
            .clamp_min(0)
            .narrow(1, past, seq),
        None => Tensor::<1, Int>::arange(past as i64..(past + seq) as i64, &x.device())
            .reshape([1, seq]),
    };
    Prepared {
        padding_mask,
        x,
        past,
        positions,
    }
}

/// `mask` `[batch, w]` with `total - w` ones in front (the virtual positions).
fn widen(mask: &Tensor<2, Int>, total: usize) -> Tensor<2, Int> {
    let [batch, width] = mask.dims();
    if width >= total {
        return mask.clone();
    }
    let ones = Tensor::<2, Int>::ones([batch, total - width], &mask.device());
    Tensor::cat(vec![ones, mask.clone()], 1)
}
