//! Pieces shared by every attention layer: rotary position embedding (Hugging Face's
//! `rotate_half` convention), causal and padding masks, grouped-query head sharing, the fused
//! scaled-dot-product attention call, and the key/value cache.

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::llama::RopeKind;

/// Rotary position embedding with precomputed inverse frequencies (a constant, not a parameter).
#[derive(Module, Debug)]
pub struct RotaryEmbedding {
    inv_freq: Tensor<1>,
}

impl RotaryEmbedding {
    /// RoPE for heads of width `head_dim` with base `theta`, adjusted as `kind` says.
    pub fn new(head_dim: usize, theta: f64, kind: &RopeKind, device: &Device) -> Self {
        let inv_freq = inverse_frequencies(head_dim, theta, kind);
        let len = inv_freq.len();
        Self {
            inv_freq: Tensor::from_data(TensorData::new(inv_freq, [len]), device),
        }
    }

    /// `cos` and `sin` tables `[1, 1, len, head_dim]` for positions `start..start + len`.
    pub fn cos_sin(&self, start: usize, len: usize) -> (Tensor<4>, Tensor<4>) {
        let device = self.inv_freq.device();
        let half = self.inv_freq.dims()[0];
        let positions = Tensor::<1, Int>::arange(start as i64..(start + len) as i64, &device)
            .float()
            .reshape([len, 1]);
        let freqs = positions * self.inv_freq.clone().reshape([1, half]);
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 1).reshape([1, 1, len, 2 * half]);
        (emb.clone().cos(), emb.sin())
    }
}

/// Applies RoPE to `x` `[batch, heads, seq, head_dim]`: `x * cos + rotate_half(x) * sin`.
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Inverse frequencies `1 / theta^(2i / d)`, computed in f32 as transformers computes them,
/// then adjusted for linear or Llama-3 scaling (transformers' `_compute_llama3_parameters`).
fn inverse_frequencies(head_dim: usize, theta: f64, kind: &RopeKind) -> Vec<f32> {
    let base = theta as f32;
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
        .collect();
    match *kind {
        RopeKind::Default => inv,
        RopeKind::Linear { factor } => inv.into_iter().map(|f| f / factor as f32).collect(),
        RopeKind::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, low, high) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
            );
            let old_len = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_len / low;
            let high_freq_wavelen = old_len / high;
            inv.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen > low_freq_wavelen {
                        f / factor
                    } else if wavelen < high_freq_wavelen {
                        f
                    } else {
                        let smooth = (old_len / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// The mask `[batch, 1, q_len, past_len + q_len]` (`true` = may not attend): causal, plus
/// padded keys where `padding_mask` (`[batch, past_len + q_len]`, 1 = real token) is 0.
pub fn attention_mask(
    batch: usize,
    q_len: usize,
    past_len: usize,
    padding_mask: Option<&Tensor<2, Int>>,
    device: &Device,
) -> Tensor<4, Bool> {
    let total = past_len + q_len;
    let rows = Tensor::<1, Int>::arange(past_len as i64..total as i64, device)
        .reshape([q_len, 1])
        .expand([q_len, total]);
    let cols = Tensor::<1, Int>::arange(0..total as i64, device)
        .reshape([1, total])
        .expand([q_len, total]);
    let causal = cols
        .greater(rows)
        .reshape([1, 1, q_len, total])
        .expand([batch, 1, q_len, total]);
    match padding_mask {
        Some(mask) => {
            let padded = mask
                .clone()
                .equal_elem(0)
                .reshape([batch, 1, 1, total])
                .expand([batch, 1, q_len, total]);
            causal.bool_or(padded)
        }
        None => causal,
    }
}

/// Repeats each key/value head `n_rep` times so that `[b, kv_heads, t, d]` serves
/// `kv_heads * n_rep` query heads (head `i` uses key/value head `i / n_rep`, as transformers does).
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kv_heads, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv_heads, n_rep, t, d])
        .reshape([b, kv_heads * n_rep, t, d])
}

/// Softmax attention of `q` `[b, h, s, d]` over `k`, `v` `[b, h, t, d]` with `mask`
/// `[b, 1, s, t]`, scaling scores by `scale`. Burn's fused kernel on GPU backends.
pub fn scaled_dot_product(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &Tensor<4, Bool>,
    scale: f64,
) -> Tensor<4> {
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

    fn bools(t: Tensor<4, Bool>) -> Vec<bool> {
        t.into_data().iter::<bool>().collect()
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        // Llama 3.1's published values: factor 8, low 1, high 4, original context 8192.
        let kind = RopeKind::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = inverse_frequencies(128, 500_000.0, &RopeKind::Default);
        let scaled = inverse_frequencies(128, 500_000.0, &kind);
        // Wavelength 2π/f below 8192/4 = 2048: untouched; above 8192: divided by the factor.
        assert_eq!(scaled[0], plain[0]);
        assert_eq!(scaled[63], plain[63] / 8.0);
        let medium = plain
            .iter()
            .position(|f| (2048.0..=8192.0).contains(&(2.0 * std::f32::consts::PI / f)))
            .expect("some frequency lies between the two wavelengths");
        assert!(scaled[medium] < plain[medium] && scaled[medium] > plain[medium] / 8.0);
    }

    #[test]
    fn mask_is_causal_with_past_and_masks_padding() {
        let device = Device::flex();
        // One query after two cached positions sees all three keys.
        assert_eq!(
            bools(attention_mask(1, 1, 2, None, &device)),
            vec![false, false, false]
        );
        // Two queries, no past: the first may not see the second.
        assert_eq!(
            bools(attention_mask(1, 2, 0, None, &device)),
            vec![false, true, false, false]
        );
        // A padded last key is hidden from every query.
        let padding = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 0], [1, 2]), &device);
        assert_eq!(
            bools(attention_mask(1, 2, 0, Some(&padding), &device)),
            vec![false, true, false, true]
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
