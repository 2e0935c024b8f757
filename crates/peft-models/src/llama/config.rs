//! LLaMA-family configuration, as `config.json` spells it (transformers 4.x and 5.x layouts),
//! for LLaMA and the families that differ from it in a few switches (Qwen2, Qwen3, Mistral,
//! Gemma, Phi-3): [`Family`] says which, and the getters give each family's defaults.

use serde::{Deserialize, Deserializer, Serialize};

use crate::hf_json::{TokenIds, MAX_WIDTH};
use crate::nn::activation::Activation;
use crate::nn::rope::{RopeKind, RopeScaling};

/// The member of the LLaMA family a config describes: what its transformers class does
/// differently from `LlamaForCausalLM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// `llama`.
    #[default]
    Llama,
    /// `qwen2` (Qwen2, Qwen2.5): biases on q/k/v, none on o.
    Qwen2,
    /// `qwen3`: RMSNorm over each head's queries and keys before RoPE; `head_dim` of its own.
    Qwen3,
    /// `mistral`: a sliding attention window.
    Mistral,
    /// `gemma`: RMSNorm gains stored minus one, embeddings times sqrt(hidden), GeGLU, tied head.
    Gemma,
    /// `phi3`: fused `qkv_proj` and `gate_up_proj`.
    Phi3,
}

impl Family {
    /// transformers' `model_type`.
    pub const fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Mistral => "mistral",
            Self::Gemma => "gemma",
            Self::Phi3 => "phi3",
        }
    }
}

/// Hyper-parameters of a LLaMA-family model.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LlamaConfig {
    /// Which family member (set by the `model_type` the config was read as).
    #[serde(skip)]
    pub family: Family,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of one head; defaults to `hidden_size / num_attention_heads` (Gemma: 256, Qwen3:
    /// 128, as their transformers configs do).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (transformers 4.x layout).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (transformers 4.x layout).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// RoPE base and scaling together (transformers 5.x layout).
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    /// Llama 3's pre-training context outside the RoPE section (Phi-3 keeps it here); it takes
    /// precedence over the section's, as in transformers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// Longest sequence the model was trained for.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the input embedding (default: false; Gemma: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Whether q/k/v/o projections have a bias (Qwen2: q/k/v always, o never).
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether the MLP projections have a bias.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The MLP activation (default `silu`; Gemma: `gelu_pytorch_tanh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Gemma's activation in transformers 4.x configs; kept so that a saved config still has
    /// it, not read (transformers 5 reads `hidden_act`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Mistral's and Phi-3's attention window: null means none, absent 4096 for Mistral
    /// (transformers' default) and none for Phi-3.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub sliding_window: Option<Option<usize>>,
    /// The share of each head that is rotated (Phi-3, 4.x layout); only 1 is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Qwen's per-layer sliding windows, which this crate does not implement.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: TokenIds,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    2048
}

/// A key that is present deserialises to `Some` (holding `None` for null), so that absent
/// and null can differ.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<usize>>, D::Error> {
    Option::deserialize(d).map(Some)
}

/// MistralConfig's default `sliding_window`.
const MISTRAL_WINDOW: usize = 4096;

/// transformers' default RoPE base.
pub(super) const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl LlamaConfig {
    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(match self.family {
            Family::Gemma => 256,
            Family::Qwen3 => 128,
            _ => self.hidden_size / self.num_attention_heads.max(1),
        })
    }

    /// Whether the output head is the token embedding.
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings
            .unwrap_or(self.family == Family::Gemma)
    }

    /// Whether q, k and v have biases.
    pub fn qkv_bias(&self) -> bool {
        self.family == Family::Qwen2 || self.attention_bias
    }

    /// Whether o has a bias.
    pub fn o_bias(&self) -> bool {
        self.family != Family::Qwen2 && self.attention_bias
    }

    /// Whether q/k/v and gate/up are each one fused projection (Phi-3).
    pub fn fused_projections(&self) -> bool {
        self.family == Family::Phi3
    }

    /// Whether queries and keys are RMS-normalised per head before RoPE (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.family == Family::Qwen3
    }

    /// What RMSNorm adds to its stored weights (Gemma stores the gain minus one).
    pub fn norm_offset(&self) -> f64 {
        if self.family == Family::Gemma {
            1.0
        } else {
            0.0
        }
    }

    /// What the input embeddings are multiplied by (Gemma: sqrt(hidden), rounded to f32).
    pub fn embed_scale(&self) -> Option<f64> {
        (self.family == Family::Gemma).then(|| f64::from((self.hidden_size as f32).sqrt()))
    }

    /// The attention window, if any: Mistral's (4096 when absent) and Phi-3's (none when
    /// absent; Phi-3-mini's configs say 2047), as their transformers classes apply them.
    pub fn window(&self) -> Option<usize> {
        match self.family {
            Family::Mistral => self.sliding_window.unwrap_or(Some(MISTRAL_WINDOW)),
            Family::Phi3 => self.sliding_window.flatten(),
            _ => None,
        }
    }

    /// The activation's name and the key it came from. Gemma reads `hidden_act` as transformers
    /// 5 does: absent or the legacy `"gelu"` of the official releases means the tanh
    /// approximation, and `hidden_activation` (transformers 4.x) is not read.
    fn activation_name(&self) -> (&'static str, &str) {
        match self.hidden_act.as_deref() {
            None | Some("gelu") if self.family == Family::Gemma => {
                ("hidden_act", "gelu_pytorch_tanh")
            }
            Some(name) => ("hidden_act", name),
            None => ("hidden_act", "silu"),
        }
    }

    /// The MLP activation, or an error naming the key and the value.
    pub fn activation(&self) -> std::result::Result<Activation, (&'static str, String)> {
        let (key, name) = self.activation_name();
        Activation::from_hf_name(name).ok_or_else(|| {
            (
                key,
                format!(
                    "{name:?} is not supported; expected silu, gelu_pytorch_tanh, gelu_new, gelu \
                     or relu"
                ),
            )
        })
    }

    /// The RoPE section and its key: `rope_scaling` when it says anything (transformers lets it
    /// override `rope_parameters`, as older checkpoints carry it), else `rope_parameters`.
    fn rope_section(&self) -> Option<(&'static str, &RopeScaling)> {
        match (&self.rope_scaling, &self.rope_parameters) {
            (Some(section), _) if !section.is_empty() => Some(("rope_scaling", section)),
            (_, Some(section)) => Some(("rope_parameters", section)),
            _ => None,
        }
    }

    /// The RoPE base: the RoPE section's `rope_theta`, else the top-level one.
    pub fn rope_theta(&self) -> f64 {
        self.rope_section()
            .and_then(|(_, r)| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// The RoPE variant; an error names the key when it is one this crate does not implement.
    pub fn rope_kind(&self) -> std::result::Result<RopeKind, (&'static str, String)> {
        let Some((key, section)) = self.rope_section() else {
            return Ok(RopeKind::Default);
        };
        section.kind(
            key,
            self.original_max_position_embeddings,
            self.max_position_embeddings,
        )
    }

    /// The values a user wants to see (`inspect`), in order.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("layers", self.num_hidden_layers.to_string()),
            ("hidden size", self.hidden_size.to_string()),
            ("intermediate size", self.intermediate_size.to_string()),
            ("attention heads", self.num_attention_heads.to_string()),
            ("key/value heads", self.kv_heads().to_string()),
            ("head dim", self.head_dim().to_string()),
            ("vocabulary", self.vocab_size.to_string()),
            ("max positions", self.max_position_embeddings.to_string()),
            ("rope theta", self.rope_theta().to_string()),
            ("tied embeddings", self.tied().to_string()),
        ];
        if let Some(window) = self.window() {
            rows.push(("sliding window", window.to_string()));
        }
        if self.qkv_bias() {
            rows.push(("q/k/v bias", "yes".into()));
        }
        if self.qk_norm() {
            rows.push(("q/k norm", "per head".into()));
        }
        if self.fused_projections() {
            rows.push(("fused projections", "qkv_proj, gate_up_proj".into()));
        }
        if self.family == Family::Gemma {
            rows.push(("norms", "1 + weight".into()));
            rows.push(("embedding scale", "sqrt(hidden)".into()));
        }
        rows
    }

    /// Checks the values the model depends on; the error names the key.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        // q/k/v widths are heads × head_dim; a width that overflows is no model.
        for (key, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("head_dim", self.head_dim()),
        ] {
            if value > MAX_WIDTH {
                return Err((key, format!("{value} is larger than {MAX_WIDTH}")));
            }
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err((
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.kv_heads(),
                    self.num_attention_heads
                ),
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err((
                "head_dim",
                format!("{} must be even for RoPE", self.head_dim()),
            ));
        }
        if !(self.rms_norm_eps >= 0.0 && self.rms_norm_eps.is_finite()) {
            return Err((
                "rms_norm_eps",
                format!("{} is not a non-negative number", self.rms_norm_eps),
            ));
        }
        let theta = self.rope_theta();
        if !(theta > 0.0 && theta.is_finite()) {
            return Err(("rope_theta", format!("{theta} is not a positive number")));
        }
        if self.use_sliding_window && matches!(self.family, Family::Qwen2 | Family::Qwen3) {
            return Err((
                "use_sliding_window",
                "true is not supported (Qwen's sliding-window layers); only full attention is"
                    .into(),
            ));
        }
        let partial = self
            .rope_section()
            .and_then(|(_, r)| r.partial_rotary_factor)
            .or(self.partial_rotary_factor);
        if let Some(factor) = partial.filter(|&f| f != 1.0) {
            return Err((
                "partial_rotary_factor",
                format!("{factor} is not supported; only 1 (every dimension rotated) is"),
            ));
        }
        if self.window() == Some(0) {
            return Err(("sliding_window", "must be at least 1".into()));
        }
        self.activation()?;
        self.rope_kind().map(|_| ())
    }
}
