//! Each method's options in `[method]`, with the defaults `train` uses.

use peft_core::method::bottleneck::NonLinearity;
use serde::{Deserialize, Serialize};

/// LoRA and DoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraOptions {
    /// Rank of the update.
    pub rank: usize,
    /// Scaling numerator (`alpha / rank`).
    pub alpha: f64,
    /// Dropout on the adapter branch's input.
    pub dropout: f64,
    /// Scale by `alpha / sqrt(rank)` (rsLoRA).
    pub rslora: bool,
    /// Module names to adapt (`["q_proj", "v_proj"]`), `["all-linear"]`, or one regex; empty
    /// means the architecture's default.
    pub target: Vec<String>,
    /// LoRA+: B matrices (and DoRA's magnitudes) learn at this multiple of the learning rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loraplus_lr_ratio: Option<f64>,
}

impl Default for LoraOptions {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            rslora: false,
            target: Vec::new(),
            loraplus_lr_ratio: None,
        }
    }
}

/// Prefix tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixOptions {
    /// Number of virtual tokens.
    pub virtual_tokens: usize,
    /// Train the prefix through an MLP (folded away when saved).
    pub prefix_projection: bool,
    /// Hidden width of that MLP (default: the prefix width).
    pub encoder_hidden_size: Option<usize>,
}

impl Default for PrefixOptions {
    fn default() -> Self {
        Self {
            virtual_tokens: 20,
            prefix_projection: false,
            encoder_hidden_size: None,
        }
    }
}

/// Prompt tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptOptions {
    /// Number of virtual tokens.
    pub virtual_tokens: usize,
    /// Start the virtual tokens from this text's token embeddings (else random).
    pub init_text: Option<String>,
}

impl Default for PromptOptions {
    fn default() -> Self {
        Self {
            virtual_tokens: 20,
            init_text: None,
        }
    }
}

/// IA3.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ia3Options {
    /// Module names to adapt; empty means the architecture's default.
    pub target: Vec<String>,
    /// Targets whose input is rescaled instead of their output; empty means the
    /// architecture's default (`down_proj`, GPT-2's `mlp.c_proj`).
    pub feedforward: Vec<String>,
}

/// Houlsby and Pfeiffer bottleneck adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BottleneckOptions {
    /// Module names to adapt; empty means the variant's default for the architecture.
    pub target: Vec<String>,
    /// The bottleneck is the projection width divided by this.
    pub reduction_factor: usize,
    /// Nonlinearity (`relu`, `gelu`, `silu`, `tanh`).
    pub non_linearity: NonLinearity,
    /// A layer norm on the adapter's input.
    pub layer_norm: bool,
}

impl Default for BottleneckOptions {
    fn default() -> Self {
        Self {
            target: Vec::new(),
            reduction_factor: 16,
            non_linearity: NonLinearity::Relu,
            layer_norm: false,
        }
    }
}

/// VeRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VeraOptions {
    /// Rank of the shared random projections.
    pub rank: usize,
    /// Initial value of every `λ_d` (`λ_b` starts at zero).
    pub d_initial: f64,
    /// Dropout on the branch's input.
    pub dropout: f64,
    /// Module names to adapt; empty means the architecture's default (LoRA's).
    pub target: Vec<String>,
}

impl Default for VeraOptions {
    fn default() -> Self {
        // PEFT's VeraConfig defaults.
        Self {
            rank: 256,
            d_initial: 0.1,
            dropout: 0.0,
            target: Vec::new(),
        }
    }
}

/// AdaLoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaLoraOptions {
    /// The rank every target starts at.
    pub init_r: usize,
    /// The average rank per target the budget falls to.
    pub target_r: usize,
    /// The update is scaled by alpha / init_r.
    pub alpha: f64,
    /// Dropout on the branch's input.
    pub dropout: f64,
    /// Weight of the orthogonality regulariser on A and B.
    pub orth_reg_weight: f64,
    /// Steps before the budget starts falling.
    pub tinit: usize,
    /// Steps at the final budget at the end of the run.
    pub tfinal: usize,
    /// Steps between two rank allocations (PEFT's `deltaT`).
    pub delta_t: usize,
    /// Smoothing of the sensitivity.
    pub beta1: f64,
    /// Smoothing of its uncertainty.
    pub beta2: f64,
    /// The budget schedule's length in steps; unset: the run's step count.
    pub total_step: Option<usize>,
    /// Module names to adapt; empty means the architecture's default (LoRA's).
    pub target: Vec<String>,
}

impl Default for AdaLoraOptions {
    fn default() -> Self {
        // PEFT's AdaLoraConfig defaults.
        Self {
            init_r: 12,
            target_r: 8,
            alpha: 8.0,
            dropout: 0.0,
            orth_reg_weight: 0.5,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            total_step: None,
            target: Vec::new(),
        }
    }
}

/// Full fine-tuning, which has no options of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullOptions {}
