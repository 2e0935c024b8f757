//! The bottleneck adapter's configuration, in the style of PEFT's configs.

use serde::{Deserialize, Serialize};

use crate::error::{PeftError, Result};
use crate::target::TargetModules;

/// Where the adapters go by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BottleneckVariant {
    /// After the attention block and after the feed-forward block of every layer.
    #[default]
    Houlsby,
    /// After the feed-forward block only.
    Pfeiffer,
}

/// The nonlinearity between the down- and up-projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonLinearity {
    /// `max(0, x)`.
    #[default]
    Relu,
    /// Exact (erf) GELU.
    Gelu,
    /// `x · sigmoid(x)` (also called swish).
    Silu,
    /// `tanh(x)`.
    Tanh,
}

/// A bottleneck adapter configuration, as `adapter_config.json` spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BottleneckConfig {
    /// The placement whose default targets apply when `target_modules` is not given.
    #[serde(default)]
    pub variant: BottleneckVariant,
    /// Projections whose output gets an adapter; `None` picks the variant's default for the
    /// architecture.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Projections never to adapt.
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// The bottleneck is the projection's output width divided by this (at least 1).
    #[serde(default = "default_reduction")]
    pub reduction_factor: usize,
    /// Nonlinearity between the two projections.
    #[serde(default)]
    pub non_linearity: NonLinearity,
    /// A trainable layer norm on the adapter's input, before the down-projection.
    #[serde(default)]
    pub ln_before: bool,
    /// Up-projection at zero, so the adapter starts as the identity; `false` draws it at
    /// random (tests).
    #[serde(default = "yes")]
    pub init_weights: bool,
    /// Modules trained in full next to the adapter.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Base model this adapter was trained on (informational).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Task type (informational; e.g. `CAUSAL_LM`).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Whether the adapter was saved for inference (informational).
    #[serde(default)]
    pub inference_mode: bool,
}

fn default_reduction() -> usize {
    16
}

fn yes() -> bool {
    true
}

impl Default for BottleneckConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl BottleneckConfig {
    /// Refuses what cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.reduction_factor == 0 {
            return Err(PeftError::Config {
                field: "reduction_factor".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The bottleneck width for a projection with `width` outputs.
    pub fn bottleneck_width(&self, width: usize) -> usize {
        (width / self.reduction_factor).max(1)
    }
}
