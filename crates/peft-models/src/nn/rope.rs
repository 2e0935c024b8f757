//! Rotary position embedding in Hugging Face's `rotate_half` convention, with the scaling
//! variants LLaMA-family configs ask for (`rope_scaling` / `rope_parameters`).

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use peft_core::precision::to_dtype;
use serde::{Deserialize, Serialize};

/// RoPE parameters: `rope_scaling` (4.x) or `rope_parameters` (5.x).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct RopeScaling {
    /// `default`, `linear` or `llama3`.
    #[serde(default)]
    pub rope_type: Option<String>,
    /// The type under its older key, read when `rope_type` is absent (checkpoints saved by
    /// transformers 4.x may carry both).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<String>,
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
    /// Whether the section sets nothing (`{}`), which transformers treats as absent.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The RoPE variant these parameters ask for; an error names `key` (the section's key in
    /// config.json) when it is one this crate does not implement. Llama 3's pre-training
    /// context is, as transformers resolves it, the config's top-level
    /// `original_max_position_embeddings` (`top_level_context`), else this section's, else the
    /// model's `max_position_embeddings`.
    pub fn kind(
        &self,
        key: &'static str,
        top_level_context: Option<usize>,
        max_position_embeddings: usize,
    ) -> Result<RopeKind, (&'static str, String)> {
        // A factor of 0, a negative one or NaN would give NaN or infinite frequencies.
        let need = |value: Option<f64>, field: &str| match value {
            Some(v) if v > 0.0 && v.is_finite() => Ok(v),
            Some(v) => Err((key, format!("`{field}` {v} is not a positive number"))),
            None => Err((key, format!("rope type needs `{field}`"))),
        };
        let rope_type = self.rope_type.as_ref().or(self.legacy_type.as_ref());
        match rope_type.map_or("default", String::as_str) {
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
                    original_max_position_embeddings: top_level_context
                        .or(self.original_max_position_embeddings)
                        .unwrap_or(max_position_embeddings),
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
    // On flex in f32, one node whose passes run on every thread.
    #[cfg(feature = "flex")]
    if let Some(rotated) = super::flex::rotary(&x, cos, sin) {
        return rotated;
    }
    // Tables computed in f32, applied in the activations' type (transformers' `.to(x.dtype)`).
    let (cos, sin) = (
        &to_dtype(cos.clone(), x.dtype()),
        &to_dtype(sin.clone(), x.dtype()),
    );
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

/// How closely a RoPE variant must reproduce stored per-frequency factors (relative).
const FACTOR_TOLERANCE: f32 = 1e-5;

/// Whether a stored factor `f` is `to`, within [`FACTOR_TOLERANCE`].
fn near(f: f32, to: f64) -> bool {
    (f as f64 - to).abs() <= FACTOR_TOLERANCE as f64 * to
}

impl RopeKind {
    /// The `rope_scaling` section of a config.json that asks for this variant (`None`: plain).
    pub fn to_json(&self) -> Option<serde_json::Value> {
        match *self {
            RopeKind::Default => None,
            RopeKind::Linear { factor } => {
                Some(serde_json::json!({"rope_type": "linear", "factor": factor}))
            }
            RopeKind::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => Some(serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            })),
        }
    }

    /// The scaling whose per-frequency divisors of the inverse frequencies are `factors`, as
    /// llama.cpp's converter stores Llama 3.1 scaling (the `rope_freqs` tensor: 1 for
    /// frequencies kept, `factor` for those divided, a smooth blend between); `None` when no
    /// default, linear or Llama-3 scaling reproduces them to a relative 1e-5.
    ///
    /// Llama 3's parameters are found up to a common scale of `original_max_position_embeddings`
    /// and both frequency factors, which leaves the frequencies unchanged; the scale is chosen
    /// so that the context length is a whole number.
    pub fn from_frequency_factors(factors: &[f32], head_dim: usize, theta: f64) -> Option<Self> {
        let plain = inverse_frequencies(head_dim, theta, &RopeKind::Default);
        if factors.len() != plain.len() || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return None;
        }
        let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
        let candidate = if factors.iter().all(|&f| near(f, 1.0)) {
            RopeKind::Default
        } else if factors.iter().all(|&f| near(f, factor)) {
            RopeKind::Linear { factor }
        } else {
            llama3_candidate(factors, &plain, factor)?
        };
        let rebuilt = inverse_frequencies(head_dim, theta, &candidate);
        let reproduces = plain.iter().zip(&rebuilt).zip(factors).all(|((p, r), f)| {
            let stored = p / f;
            (r - stored).abs() <= FACTOR_TOLERANCE * stored
        });
        reproduces.then_some(candidate)
    }
}

/// Llama-3 parameters for `factors` (`factor` the largest), with the low-frequency factor taken
/// as 1 and then rescaled to a whole context length. Between the two wavelength thresholds the
/// smoothing `s = (C/λ − l) / (h − l)` is linear in 1/λ: two blended frequencies give C and h;
/// with fewer, the thresholds go into the gaps between the wavelengths present.
fn llama3_candidate(factors: &[f32], plain: &[f32], factor: f64) -> Option<RopeKind> {
    let wavelength = |i: usize| 2.0 * std::f64::consts::PI / plain[i] as f64;
    // The smoothing each blended frequency implies: 1/f = (1 − s)/factor + s.
    let blended: Vec<(f64, f64)> = (0..factors.len())
        .filter(|&i| !near(factors[i], 1.0) && !near(factors[i], factor))
        .map(|i| {
            let smooth = (1.0 / factors[i] as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (wavelength(i), smooth)
        })
        .collect();
    // The longest wavelength kept and the shortest divided by the whole factor.
    let kept = (0..factors.len())
        .filter(|&i| near(factors[i], 1.0))
        .map(wavelength)
        .fold(0.0, f64::max);
    let divided = (0..factors.len())
        .filter(|&i| near(factors[i], factor))
        .map(wavelength)
        .fold(f64::INFINITY, f64::min);
    // (C, h) with l = 1: C/h is the high-frequency threshold, C the low-frequency one.
    let (context, high) = match blended.as_slice() {
        [] => {
            // Both bands are present here (else the factors were all 1 or all `factor`).
            let span = divided - kept;
            let (low_threshold, high_threshold) = (kept + span * 2.0 / 3.0, kept + span / 3.0);
            (low_threshold, low_threshold / high_threshold)
        }
        [(lambda, smooth)] => {
            // C = xλ with x > 1 below the next wavelength; h = 1 + (x − 1)/s puts C/h
            // between λs and λ, closer to λ as x nears 1.
            let mut x = if divided.is_finite() {
                (divided / lambda).sqrt()
            } else {
                2.0
            };
            while lambda * x * smooth / (smooth + x - 1.0) <= kept && x > 1.0 + 1e-9 {
                x = 1.0 + (x - 1.0) / 2.0;
            }
            (lambda * x, 1.0 + (x - 1.0) / smooth)
        }
        [(l1, s1), .., (l2, s2)] => {
            let (u1, u2) = (1.0 / l1, 1.0 / l2);
            let a = (s2 - s1) / (u2 - u1);
            let b = s1 - a * u1;
            // s = a/λ + b with a = C/(h − 1) and b = −1/(h − 1).
            let high = 1.0 - 1.0 / b;
            (a * (high - 1.0), high)
        }
    };
    if !(context.is_finite() && high.is_finite() && context >= 0.5 && high > 1.0) {
        return None;
    }
    let scale = context.round() / context;
    Some(RopeKind::Llama3 {
        factor,
        low_freq_factor: scale,
        high_freq_factor: high * scale,
        original_max_position_embeddings: context.round() as usize,
    })
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

    /// The divisors llama.cpp's converter stores for `kind` (computed in f64, stored as f32).
    fn converter_factors(head_dim: usize, theta: f64, kind: &RopeKind) -> Vec<f32> {
        let plain = inverse_frequencies(head_dim, theta, &RopeKind::Default);
        let scaled = inverse_frequencies(head_dim, theta, kind);
        plain.iter().zip(&scaled).map(|(p, s)| p / s).collect()
    }

    #[test]
    fn llama3_parameters_are_recovered_from_per_frequency_factors() {
        let llama31 = RopeKind::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        // Real Llama 3.1 (head 128: many blended frequencies), a tiny model with one blended
        // frequency, one with none, plain linear scaling and no scaling at all.
        let small = |context| RopeKind::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: context,
        };
        let cases = [
            (128, 500_000.0, llama31.clone()),
            (16, 500_000.0, small(8)),
            (16, 10_000.0, small(40)),
            (64, 10_000.0, RopeKind::Linear { factor: 4.0 }),
            (64, 10_000.0, RopeKind::Default),
        ];
        for (head_dim, theta, kind) in cases {
            let factors = converter_factors(head_dim, theta, &kind);
            let found = RopeKind::from_frequency_factors(&factors, head_dim, theta)
                .unwrap_or_else(|| panic!("{kind:?} is not recovered"));
            let want = inverse_frequencies(head_dim, theta, &kind);
            let got = inverse_frequencies(head_dim, theta, &found);
            for (w, g) in want.iter().zip(&got) {
                assert!((w - g).abs() <= 1e-5 * w, "{kind:?}: {found:?}");
            }
        }
        // The full-size case comes back with its own parameters.
        let factors = converter_factors(128, 500_000.0, &llama31);
        let found = RopeKind::from_frequency_factors(&factors, 128, 500_000.0).unwrap();
        let RopeKind::Llama3 {
            original_max_position_embeddings,
            high_freq_factor,
            ..
        } = found
        else {
            panic!("{found:?}")
        };
        assert_eq!(original_max_position_embeddings, 8192);
        assert!((high_freq_factor - 4.0).abs() < 1e-3, "{high_freq_factor}");
    }

    #[test]
    fn factors_no_scaling_reproduces_are_refused() {
        let mut factors = converter_factors(128, 500_000.0, &RopeKind::Default);
        // Divisors that rise and fall again are no Llama-3 shape.
        factors[10] = 3.0;
        factors[40] = 1.5;
        assert_eq!(
            RopeKind::from_frequency_factors(&factors, 128, 500_000.0),
            None
        );
        assert_eq!(
            RopeKind::from_frequency_factors(&[1.0; 3], 128, 500_000.0),
            None
        );
        assert_eq!(
            RopeKind::from_frequency_factors(&[f32::NAN; 64], 128, 500_000.0),
            None
        );
    }
}
