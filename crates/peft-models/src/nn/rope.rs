//! Rotary position embedding in Hugging Face's `rotate_half` convention, with the scaling
//! variants LLaMA-family configs ask for (`rope_scaling` / `rope_parameters`).

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// RoPE parameters: `rope_scaling` (4.x) or `rope_parameters` (5.x).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RopeScaling {
    /// `default`, `linear` or `llama3` (`type` in older configs).
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// RoPE base, when given here (5.x).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Scaling factor (`linear`, `llama3`).
    #[serde(default)]
    pub factor: Option<f64>,
    /// The share of each head that is rotated (Phi-3, 5.x layout); only 1 is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Llama-3 low-frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama-3 high-frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// Llama-3 original context length.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// How RoPE frequencies are adjusted, resolved from the config.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeKind {
    /// Plain RoPE.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        /// Overall factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// The RoPE variant these parameters ask for; an error names `key` (the section's key in
    /// config.json) when it is one this crate does not implement.
    pub fn kind(&self, key: &'static str) -> Result<RopeKind, (&'static str, String)> {
        // A factor of 0, a negative one or NaN would give NaN or infinite frequencies.
        let need = |value: Option<f64>, field: &str| match value {
            Some(v) if v > 0.0 && v.is_finite() => Ok(v),
            Some(v) => Err((key, format!("`{field}` {v} is not a positive number"))),
            None => Err((key, format!("rope type needs `{field}`"))),
        };
        match self.rope_type.as_deref().unwrap_or("default") {
            "default" => Ok(RopeKind::Default),
            "linear" => Ok(RopeKind::Linear {
                factor: need(self.factor, "factor")?,
            }),
            "llama3" => {
                let low_freq_factor = need(self.low_freq_factor, "low_freq_factor")?;
                let high_freq_factor = need(self.high_freq_factor, "high_freq_factor")?;
                // The smoothing between the two bands divides by their difference.
                if high_freq_factor <= low_freq_factor {
                    return Err((
                        key,
                        format!(
                            "`high_freq_factor` {high_freq_factor} must be greater than \
                             `low_freq_factor` {low_freq_factor}"
                        ),
                    ));
                }
                Ok(RopeKind::Llama3 {
                    factor: need(self.factor, "factor")?,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings: self
                        .original_max_position_embeddings
                        .filter(|&n| n > 0)
                        .ok_or((
                            key,
                            "rope type needs `original_max_position_embeddings` (> 0)".into(),
                        ))?,
                })
            }
            other => Err((
                key,
                format!("rope_type {other:?} is not supported; expected default, linear or llama3"),
            )),
        }
    }
}

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

    /// `cos` and `sin` tables `[rows, 1, len, head_dim]` for `positions` `[rows, len]`.
    pub fn cos_sin(&self, positions: Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let [rows, len] = positions.dims();
        let half = self.inv_freq.dims()[0];
        let freqs =
            positions.float().reshape([rows, len, 1]) * self.inv_freq.clone().reshape([1, 1, half]);
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).reshape([rows, 1, len, 2 * half]);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
