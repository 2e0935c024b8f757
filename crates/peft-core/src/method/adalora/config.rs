//! `AdaLoraConfig` with Hugging Face PEFT's field names and defaults
//! (`peft.tuners.adalora.config`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::json::is_default;
use crate::method::api::MethodConfig;
use crate::method::common::{check_group, check_rank_scales_dropout, PeftFields, TargetFields};
use crate::method::lora::{whole_as_int, DEFAULT_TARGETS};
use crate::target::{LayerIndices, LayersPattern, TargetMatcher};

/// Fields PEFT may set that this implementation cannot honour unless they keep their default.
const MUST_BE_DEFAULT: [&str; 3] = ["lora_bias", "layer_replication", "rank_pattern"];

/// An AdaLoRA configuration, as `adapter_config.json` spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaLoraConfig {
    /// Modules to adapt (PEFT's AdaLoRA defaults are LoRA's).
    #[serde(flatten)]
    pub targets: TargetFields,
    /// LoRA's rank field, which PEFT writes and AdaLoRA does not use (`init_r` is the rank).
    #[serde(default = "default_r")]
    pub r: usize,
    /// The rank every target starts at (PEFT ignores `r` for AdaLoRA).
    #[serde(default = "default_init_r")]
    pub init_r: usize,
    /// The average rank the budget falls to.
    #[serde(default = "default_target_r")]
    pub target_r: usize,
    /// The numerator of the scale `lora_alpha / (ranknum + 1e-5)`.
    #[serde(default = "default_alpha", serialize_with = "whole_as_int")]
    pub lora_alpha: f64,
    /// DoRA, which PEFT refuses with AdaLoRA (and so does this crate).
    #[serde(default)]
    pub use_dora: bool,
    /// rsLoRA scaling, which AdaLoRA's scale does not use (refused when set).
    #[serde(default)]
    pub use_rslora: bool,
    /// Dropout on the branch's input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Weight of the orthogonality regulariser added to the training loss.
    #[serde(default = "default_orth_reg_weight")]
    pub orth_reg_weight: f64,
    /// Steps of warm-up before the budget starts falling.
    #[serde(default)]
    pub tinit: usize,
    /// Steps at the final budget at the end.
    #[serde(default)]
    pub tfinal: usize,
    /// Steps between two rank allocations.
    #[serde(default = "default_delta_t", rename = "deltaT")]
    pub delta_t: usize,
    /// Smoothing of the sensitivity.
    #[serde(default = "default_beta")]
    pub beta1: f64,
    /// Smoothing of its uncertainty.
    #[serde(default = "default_beta")]
    pub beta2: f64,
    /// The run's step count (the budget schedule's length).
    #[serde(default)]
    pub total_step: Option<usize>,
    /// Start `E` at zero and `A`, `B` at N(0, 0.02) as PEFT does; `false` draws `E` too.
    #[serde(default = "yes")]
    pub init_lora_weights: bool,
    /// Whether the targets store their weight `[in, out]` (GPT-2's Conv1D); set on save.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Only adapt these layer indices.
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndices>,
    /// Name(s) of the module list that `layers_to_transform` indexes.
    #[serde(default)]
    pub layers_pattern: Option<LayersPattern>,
    /// The fields every PEFT config has.
    #[serde(flatten)]
    pub peft: PeftFields,
}

fn default_r() -> usize {
    8
}

fn default_init_r() -> usize {
    12
}

fn default_target_r() -> usize {
    8
}

fn default_alpha() -> f64 {
    8.0
}

fn default_orth_reg_weight() -> f64 {
    0.5
}

fn default_delta_t() -> usize {
    1
}

fn default_beta() -> f64 {
    0.85
}

fn yes() -> bool {
    true
}

impl MethodConfig for AdaLoraConfig {
    const PEFT_TYPE: &'static str = "ADALORA";

    fn check_json(value: &Value) -> Result<()> {
        for field in MUST_BE_DEFAULT {
            if let Some(v) = value.get(field).filter(|v| !is_default(v)) {
                let why = if field == "rank_pattern" {
                    "pruned ranks of a trained AdaLoRA adapter are not read yet"
                } else {
                    "only the default (null/false) is supported with AdaLoRA"
                };
                return Err(PeftError::Config {
                    field: field.into(),
                    message: format!("{v}: {why}"),
                });
            }
        }
        check_group::<TargetFields>(value)?;
        check_group::<PeftFields>(value)
    }

    fn validate(&self) -> Result<()> {
        check_rank_scales_dropout(
            ("init_r", self.init_r),
            &[
                ("lora_alpha", self.lora_alpha),
                ("orth_reg_weight", self.orth_reg_weight),
            ],
            ("lora_dropout", self.lora_dropout),
        )?;
        for (field, set) in [("use_dora", self.use_dora), ("use_rslora", self.use_rslora)] {
            if set {
                return Err(PeftError::Config {
                    field: field.into(),
                    message: "true is not supported with AdaLoRA".into(),
                });
            }
        }
        Ok(())
    }

    fn training_refusal(&self) -> Option<&'static str> {
        Some(
            "AdaLoRA's rank allocation during training (PEFT's update_and_allocate) is not \
             implemented yet",
        )
    }

    fn resolve(&mut self, model: &ModelGeometry) -> Result<()> {
        self.targets.fill_default(DEFAULT_TARGETS, model)
    }

    fn targets(&self) -> Option<&TargetFields> {
        Some(&self.targets)
    }

    fn matcher(&self) -> Result<Option<TargetMatcher>> {
        self.targets
            .matcher(
                self.layers_to_transform.as_ref(),
                self.layers_pattern.as_ref(),
            )
            .map(Some)
    }
}
