//! What the active model-wide adapter adds before a model's input: prompt tuning's
//! embeddings in front of the token embeddings, prefix tuning's keys and values in front of
//! every layer's (put into the key/value cache, so that generation keeps them), and the
//! padding mask widened over those virtual positions, which every token may see.

use burn::tensor::{Int, Tensor};
use peft_core::ModelAdapters;

use super::attention::KvCache;

/// The input after the virtual tokens were added.
pub struct Prepared {
    /// Embeddings `[batch, seq, hidden]`, prompt-tuning tokens first.
    pub x: Tensor<3>,
    /// The padding mask `[batch, past + seq]` with the virtual positions marked as tokens.
    pub padding_mask: Option<Tensor<2, Int>>,
    /// Positions before `x` (prefix tokens and cached positions): where `x`'s positions start.
    pub past: usize,
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
            for (layer, (k, v)) in slot.prefix(batch).into_iter().flatten().enumerate() {
                cache.append(layer, k, v);
            }
        }
        past = cache.len();
    }
    if first_pass {
        if let Some(prompt) = slot.prompt(batch) {
            x = Tensor::cat(vec![prompt, x], 1);
        }
    }
    let total = past + x.dims()[1];
    Prepared {
        padding_mask: padding_mask.map(|m| widen(m, total)),
        x,
        past,
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
