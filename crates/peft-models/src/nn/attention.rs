//! Pieces shared by every attention layer: causal and padding masks, grouped-query head
//! sharing, the fused scaled-dot-product attention call, and the key/value cache.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor};

use super::efficient_attention;

/// The mask `[batch, 1, q_len, past_len + q_len]` (`true` = may not attend): causal, plus
/// padded keys where `padding_mask` (`[batch, past_len + q_len]`, 1 = real token) is 0, plus,
/// with a sliding `window` (Mistral), keys `window` or more columns before the query (a query
/// sees itself and the `window - 1` keys before it, as transformers' `sliding_window_overlay`).
/// A query always sees its own key, so that a padding query at the start of a left-padded row
/// has something to attend to (a row of nothing but masked scores would be NaN, and its NaN
/// values would reach real tokens through their zero attention weights).
pub fn attention_mask(
    batch: usize,
    q_len: usize,
    past_len: usize,
    padding_mask: Option<&Tensor<2, Int>>,
    window: Option<usize>,
    device: &Device,
) -> Tensor<4, Bool> {
    let total = past_len + q_len;
    let rows = Tensor::<1, Int>::arange(past_len as i64..total as i64, device)
        .reshape([q_len, 1])
        .expand([q_len, total]);
    let cols = Tensor::<1, Int>::arange(0..total as i64, device)
        .reshape([1, total])
        .expand([q_len, total]);
    let own = cols
        .clone()
        .equal(rows.clone())
        .reshape([1, 1, q_len, total]);
    let mut causal = cols.clone().greater(rows.clone());
    if let Some(window) = window {
        causal = causal.bool_or(cols.add_scalar(window as i64).lower_equal(rows));
    }
    let causal = causal
        .reshape([1, 1, q_len, total])
        .expand([batch, 1, q_len, total]);
    match padding_mask {
        Some(mask) => {
            let padded = mask
                .clone()
                .equal_elem(0)
                .reshape([batch, 1, 1, total])
                .expand([batch, 1, q_len, total]);
            causal
                .bool_or(padded)
                .bool_and(own.bool_not().expand([batch, 1, q_len, total]))
        }
        None => causal,
    }
}

/// Repeats each key/value head `n_rep` times so that `[b, kv_heads, t, d]` serves
/// `kv_heads * n_rep` query heads (head `i` uses key/value head `i / n_rep`, as transformers does).
fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kv_heads, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv_heads, n_rep, t, d])
        .reshape([b, kv_heads * n_rep, t, d])
}

/// Softmax attention of `q` `[b, h, s, d]` over `k`, `v` `[b, g, t, d]` (`g` key/value heads,
/// each serving `h / g` consecutive query heads) with `mask` `[b, 1, s, t]`, scaling scores by
/// `scale`: [`efficient_attention`] (under autodiff it keeps no attention weights for backward)
/// where it was built for the backend; otherwise Burn's attention (a fused kernel on GPU
/// backends) on keys and values repeated per query head.
pub fn scaled_dot_product(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &Tensor<4, Bool>,
    scale: f64,
) -> Tensor<4> {
    if let Some(output) = efficient_attention::attention(&q, &k, &v, mask, scale) {
        return output;
    }
    let n_rep = q.dims()[1] / k.dims()[1];
    let (k, v) = (repeat_kv(k, n_rep), repeat_kv(v, n_rep));
    let [b, h, s, _] = q.dims();
    let t = k.dims()[2];
    let mask = mask.clone().expand([b, h, s, t]);
    attention(
        q,
        k,
        v,
        Some(mask),
        None,
        AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        },
    )
}

/// Keys and values of past positions, per layer, so that generation feeds only new tokens.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's keys and values `[b, kv_heads, s, d]` to layer `layer` and returns
    /// the keys and values of every position so far.
    pub fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((past_k, past_v)) => (
                Tensor::cat(vec![past_k, k], 2),
                Tensor::cat(vec![past_v, v], 2),
            ),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn bools(t: Tensor<4, Bool>) -> Vec<bool> {
        t.into_data().iter::<bool>().collect()
    }

    #[test]
    fn mask_is_causal_with_past_and_masks_padding() {
        let device = Device::flex();
        // One query after two cached positions sees all three keys.
        assert_eq!(
            bools(attention_mask(1, 1, 2, None, None, &device)),
            vec![false, false, false]
        );
        // Two queries, no past: the first may not see the second.
        assert_eq!(
            bools(attention_mask(1, 2, 0, None, None, &device)),
            vec![false, true, false, false]
        );
        // A padded last key is hidden from every other query.
        let padding = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 0], [1, 2]), &device);
        assert_eq!(
            bools(attention_mask(1, 2, 0, Some(&padding), None, &device)),
            vec![false, true, false, false]
        );
        // Left padding: the padded first query sees only itself; the real one skips the pad.
        let padding = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 2]), &device);
        assert_eq!(
            bools(attention_mask(1, 2, 0, Some(&padding), None, &device)),
            vec![false, true, true, false]
        );
    }

    #[test]
    fn a_sliding_window_hides_keys_window_or_more_columns_back() {
        let device = Device::flex();
        // Four queries, window 2: each sees itself and the one key before it.
        let expected = [
            [false, true, true, true],
            [false, false, true, true],
            [true, false, false, true],
            [true, true, false, false],
        ];
        assert_eq!(
            bools(attention_mask(1, 4, 0, None, Some(2), &device)),
            expected.concat()
        );
        // One new query after three cached positions, window 2: only the last cached key.
        assert_eq!(
            bools(attention_mask(1, 1, 3, None, Some(2), &device)),
            vec![true, true, false, false]
        );
    }

    #[test]
    fn repeat_kv_gives_consecutive_query_heads_the_same_kv_head() {
        let device = Device::flex();
        let kv = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2, 1, 1]), &device);
        let values: Vec<f32> = repeat_kv(kv, 2).into_data().iter::<f32>().collect();
        assert_eq!(values, vec![1.0, 1.0, 2.0, 2.0]);
    }
}
