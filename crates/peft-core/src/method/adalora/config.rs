//! `AdaLoraConfig` with Hugging Face PEFT's field names and defaults
//! (`peft.tuners.adalora.config`).

use std::collections::BTreeMap;

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
const MUST_BE_DEFAULT: [&str; 2] = ["lora_bias", "layer_replication"];

/// What `rank_pattern` keys end with after the module path (PEFT's parameter name, without
/// the adapter name once saved).
const PATTERN_SUFFIX: &str = ".lora_E";

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
    /// Which of the `init_r` singular values of each target the rank allocation kept, by
    /// PEFT's parameter name (`model.layers.0.self_attn.q_proj.lora_E`); a saved adapter holds
    /// only the kept rows.
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, Vec<bool>>>,
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

impl Default for AdaLoraConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl MethodConfig for AdaLoraConfig {
    const PEFT_TYPE: &'static str = "ADALORA";

    fn check_json(value: &Value) -> Result<()> {
        for field in MUST_BE_DEFAULT {
            if let Some(v) = value.get(field).filter(|v| !is_default(v)) {
                return Err(PeftError::Config {
                    field: field.into(),
                    message: format!(
                        "{v}: only the default (null/false) is supported with AdaLoRA"
                    ),
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
        for (key, kept) in self.rank_pattern.iter().flatten() {
            if kept.len() != self.init_r {
                return Err(PeftError::Config {
                    field: format!("rank_pattern.{key}"),
                    message: format!(
                        "{} entries, but a pattern has one per initial rank (init_r = {})",
                        kept.len(),
                        self.init_r
                    ),
                });
            }
        }
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

    fn prepare_training(&mut self, steps: usize, resumed: bool) -> Result<()> {
        let refuse = |field: &str, message: String| {
            Err(PeftError::Config {
                field: field.into(),
                message,
            })
        };
        if resumed {
            return refuse(
                "peft_type",
                "an AdaLoRA run cannot be resumed: checkpoints keep neither the rank \
                 allocator's sensitivity estimates nor the pruned ranks' tensors; start the run \
                 again (each checkpoint's adapter is usable as it is)"
                    .into(),
            );
        }
        if self.rank_pattern.is_some() {
            return refuse(
                "rank_pattern",
                "this adapter's ranks were already allocated by an AdaLoRA run; continuing it \
                 is not supported (train a new AdaLoRA adapter)"
                    .into(),
            );
        }
        if self.target_r > self.init_r {
            return refuse(
                "target_r",
                format!(
                    "{} is above init_r = {}: the budget can only fall",
                    self.target_r, self.init_r
                ),
            );
        }
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(beta > 0.0 && beta < 1.0) {
                return refuse(field, format!("{beta} is not in (0, 1)"));
            }
        }
        if self.delta_t == 0 {
            return refuse("deltaT", "must be at least 1".into());
        }
        let total = *self.total_step.get_or_insert(steps);
        if total == 0 || self.tinit + self.tfinal >= total {
            return refuse(
                "total_step",
                format!(
                    "{total} steps leave no budget-reduction phase after tinit = {} and before \
                     the last tfinal = {} steps (tinit + tfinal must be below total_step)",
                    self.tinit, self.tfinal
                ),
            );
        }
        Ok(())
    }

    fn acts_after_optimizer_step(&self) -> bool {
        true
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

impl AdaLoraConfig {
    /// The rank the target at `key` (its module path) has: the kept count of its
    /// `rank_pattern` entry (saved by PEFT with or without the adapter's name after `lora_E`),
    /// else `init_r`.
    pub fn rank_of(&self, key: &str) -> usize {
        let wanted = Self::pattern_key(key);
        self.rank_pattern
            .iter()
            .flatten()
            .find(|(name, _)| {
                name.strip_prefix(&wanted)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
            .map_or(self.init_r, |(_, kept)| kept.iter().filter(|k| **k).count())
    }

    /// The `rank_pattern` key of the target at `key`.
    pub(super) fn pattern_key(key: &str) -> String {
        format!("{key}{PATTERN_SUFFIX}")
    }
}
