//! GPT-2 configuration, as `config.json` spells it.

use serde::{Deserialize, Serialize};

use crate::hf_json::{TokenIds, MAX_WIDTH};
use crate::nn::activation::Activation;

/// Hyper-parameters of a GPT-2 model.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Number of attention heads.
    pub n_head: usize,
    /// Number of learned positions.
    #[serde(default = "default_positions")]
    pub n_positions: usize,
    /// Width of the MLP; defaults to `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// MLP activation name.
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Whether attention scores are divided by `sqrt(head_dim)`.
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Whether scores are further divided by `layer_index + 1`.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Whether the LM head shares the token embedding (GPT-2 always does).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: TokenIds,
}

fn default_positions() -> usize {
    1024
}
fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}

impl Gpt2Config {
    /// Width of the MLP.
    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(self.n_embd.saturating_mul(4))
    }

    /// The activation, or an error naming the unsupported value.
    pub fn activation(&self) -> Result<Activation, (&'static str, String)> {
        Activation::from_hf_name(&self.activation_function).ok_or_else(|| {
            (
                "activation_function",
                format!(
                    "{:?} is not supported; expected gelu_new, gelu_pytorch_tanh, gelu, relu or silu",
                    self.activation_function
                ),
            )
        })
    }

    /// Checks the values the model depends on; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        // The fused q/k/v projection is 3 × n_embd wide; a width that overflows is no model.
        if self.n_embd > MAX_WIDTH {
            return Err((
                "n_embd",
                format!("{} is larger than {MAX_WIDTH}", self.n_embd),
            ));
        }
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
            ("n_inner", self.inner_dim()),
        ] {
            if value == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return Err((
                "n_head",
                format!("{} does not divide n_embd {}", self.n_head, self.n_embd),
            ));
        }
        if !(self.layer_norm_epsilon >= 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err((
                "layer_norm_epsilon",
                format!("{} is not a non-negative number", self.layer_norm_epsilon),
            ));
        }
        if !self.tie_word_embeddings {
            return Err((
                "tie_word_embeddings",
                "GPT-2 checkpoints have no separate lm_head; expected true".into(),
            ));
        }
        self.activation().map(|_| ())
    }
}
