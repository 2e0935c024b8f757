//! The bottleneck adapter's configuration, in the style of PEFT's configs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::method::api::MethodConfig;
use crate::method::common::{check_group, PeftFields, TargetFields};
use crate::target::DefaultTargets;

/// The blocks' output projections, after attention and the MLP (Houlsby et al.).
pub const HOULSBY_TARGETS: &DefaultTargets = &[
    ("llama", &["o_proj", "down_proj"]),
    ("qwen2", &["o_proj", "down_proj"]),
    ("qwen3", &["o_proj", "down_proj"]),
    ("mistral", &["o_proj", "down_proj"]),
    ("gemma", &["o_proj", "down_proj"]),
    ("phi3", &["o_proj", "down_proj"]),
    ("gpt2", &["attn.c_proj", "mlp.c_proj"]),
];

/// The MLP's output projection only (Pfeiffer et al.).
pub const PFEIFFER_TARGETS: &DefaultTargets = &[
    ("llama", &["down_proj"]),
    ("qwen2", &["down_proj"]),
    ("qwen3", &["down_proj"]),
    ("mistral", &["down_proj"]),
    ("gemma", &["down_proj"]),
    ("phi3", &["down_proj"]),
    ("gpt2", &["mlp.c_proj"]),
];

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
    /// Projections whose output gets an adapter (`None` picks the variant's default for the
    /// architecture), exclusions and `modules_to_save`.
    #[serde(flatten)]
    pub targets: TargetFields,
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
    /// The fields every PEFT config has.
    #[serde(flatten)]
    pub peft: PeftFields,
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
    /// The bottleneck width for a projection with `width` outputs.
    pub fn bottleneck_width(&self, width: usize) -> usize {
        (width / self.reduction_factor).max(1)
    }
}

impl MethodConfig for BottleneckConfig {
    const PEFT_TYPE: &'static str = "BOTTLENECK";

    fn check_json(value: &Value) -> Result<()> {
        check_group::<TargetFields>(value)?;
        check_group::<PeftFields>(value)
    }

    fn validate(&self) -> Result<()> {
        if self.reduction_factor == 0 {
            return Err(PeftError::Config {
                field: "reduction_factor".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    fn resolve(&mut self, model: &ModelGeometry) -> Result<()> {
        let defaults = match self.variant {
            BottleneckVariant::Houlsby => HOULSBY_TARGETS,
            BottleneckVariant::Pfeiffer => PFEIFFER_TARGETS,
        };
        self.targets.fill_default(defaults, model)
    }

    fn targets(&self) -> Option<&TargetFields> {
        Some(&self.targets)
    }
}
