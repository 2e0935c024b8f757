//! LLaMA-family configuration, as `config.json` spells it (transformers 4.x and 5.x layouts).

use serde::{Deserialize, Serialize};

use crate::hf_json::{TokenIds, MAX_WIDTH};
use crate::nn::rope::{RopeKind, RopeScaling};

/// Hyper-parameters of a LLaMA-family model.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LlamaConfig {
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
    /// Width of one head; defaults to `hidden_size / num_attention_heads`.
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
    /// Longest sequence the model was trained for.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the input embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections have a bias.
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether the MLP projections have a bias.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The MLP activation; only `silu` is a LLaMA.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
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
fn default_hidden_act() -> String {
    "silu".into()
}

/// transformers' default RoPE base.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl LlamaConfig {
    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn rope_section(&self) -> Option<&RopeScaling> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }

    /// The RoPE base, from `rope_parameters.rope_theta` or `rope_theta`.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// The RoPE variant; an error names the key when it is one this crate does not implement.
    pub fn rope_kind(&self) -> std::result::Result<RopeKind, (&'static str, String)> {
        let Some(section) = self.rope_section() else {
            return Ok(RopeKind::Default);
        };
        let key = if self.rope_parameters.is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        section.kind(key)
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
        if self.hidden_act != "silu" {
            return Err((
                "hidden_act",
                format!(
                    "{:?} is not supported; LLaMA uses \"silu\"",
                    self.hidden_act
                ),
            ));
        }
        self.rope_kind().map(|_| ())
    }
}
