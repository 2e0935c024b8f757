//! `LoraConfig` with Hugging Face PEFT's field names and defaults (`peft.tuners.lora.config`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::json::is_default;
use crate::method::api::MethodConfig;
use crate::method::common::{check_group, check_rank_scales_dropout, PeftFields, TargetFields};
use crate::target::{pattern_for, DefaultTargets, LayerIndices, LayersPattern, TargetMatcher};

/// PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`.
pub const DEFAULT_TARGETS: &DefaultTargets = &[
    ("llama", &["q_proj", "v_proj"]),
    ("qwen2", &["q_proj", "v_proj"]),
    ("qwen3", &["q_proj", "v_proj"]),
    ("mistral", &["q_proj", "v_proj"]),
    ("gemma", &["q_proj", "v_proj"]),
    ("gpt2", &["c_attn"]),
];

/// Fields PEFT writes that this implementation cannot honour unless they hold their defaults
/// (null, false, empty). Any other unknown field is ignored, as PEFT ignores them.
const MUST_BE_DEFAULT: [&str; 11] = [
    "use_qalora",
    "lora_bias",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "alora_invocation_tokens",
    "megatron_config",
    "use_bdlora",
    "arrow_config",
    "corda_config",
    "eva_config",
];

/// How LoRA factors start (`init_lora_weights`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LoraInit {
    /// `true`: A Kaiming-uniform (a = √5), B zero, so training starts from the base model;
    /// `false`: both random (only for tests, as in PEFT).
    Default(bool),
    /// A named scheme; only `"gaussian"` (A ~ N(0, 1/r), B zero) is implemented.
    Named(String),
}

impl Default for LoraInit {
    fn default() -> Self {
        Self::Default(true)
    }
}

/// A LoRA / rsLoRA / DoRA configuration, as `adapter_config.json` spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank of the update.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r` (or `/ sqrt(r)`).
    #[serde(default = "default_alpha", serialize_with = "whole_as_int")]
    pub lora_alpha: f64,
    /// Dropout on the LoRA branch's input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Targets, exclusions and `modules_to_save`.
    #[serde(flatten)]
    pub targets: TargetFields,
    /// Whether the targets store their weight `[in, out]` (GPT-2's Conv1D); set on save.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Bias training; only `"none"` is supported.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Scale by `alpha / sqrt(r)` (rsLoRA) instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Weight-decomposed LoRA.
    #[serde(default)]
    pub use_dora: bool,
    /// Initialisation.
    #[serde(default)]
    pub init_lora_weights: LoraInit,
    /// Only adapt these layer indices.
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndices>,
    /// Name(s) of the module list that `layers_to_transform` indexes.
    #[serde(default)]
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module rank overrides (pattern -> rank).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides (pattern -> alpha).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// The fields every PEFT config has.
    #[serde(flatten)]
    pub peft: PeftFields,
}

/// Writes whole numbers as JSON integers, as PEFT writes `lora_alpha` (`16`, not `16.0`).
pub(crate) fn whole_as_int<S: serde::Serializer>(
    value: &f64,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}

impl Default for LoraConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

/// Rank and scale of one adapted module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraShape {
    /// Rank.
    pub rank: usize,
    /// Multiplier of the update.
    pub scale: f64,
}

impl LoraConfig {
    /// Rank and scale for the module at `key`, after `rank_pattern` and `alpha_pattern`.
    pub fn shape_for(&self, key: &str) -> Result<LoraShape> {
        let rank =
            pattern_for(self.rank_pattern.keys(), key)?.map_or(self.r, |p| self.rank_pattern[p]);
        let alpha = pattern_for(self.alpha_pattern.keys(), key)?
            .map_or(self.lora_alpha, |p| self.alpha_pattern[p]);
        let denominator = if self.use_rslora {
            (rank as f64).sqrt()
        } else {
            rank as f64
        };
        Ok(LoraShape {
            rank,
            scale: alpha / denominator,
        })
    }
}

impl MethodConfig for LoraConfig {
    const PEFT_TYPE: &'static str = "LORA";

    fn check_json(value: &Value) -> Result<()> {
        for field in MUST_BE_DEFAULT {
            if let Some(v) = value.get(field).filter(|v| !is_default(v)) {
                return Err(PeftError::Config {
                    field: field.into(),
                    message: format!("{v} is not supported; only the default (null/false) is"),
                });
            }
        }
        check_group::<TargetFields>(value)?;
        check_group::<PeftFields>(value)
    }

    fn validate(&self) -> Result<()> {
        let fail = |field: &str, message: String| {
            Err(PeftError::Config {
                field: field.to_string(),
                message,
            })
        };
        let alphas: Vec<(&str, f64)> = std::iter::once(("lora_alpha", self.lora_alpha))
            .chain(self.alpha_pattern.values().map(|&a| ("alpha_pattern", a)))
            .collect();
        check_rank_scales_dropout(("r", self.r), &alphas, ("lora_dropout", self.lora_dropout))?;
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, &r)| r == 0) {
            return fail("rank_pattern", format!("rank for {k:?} must be at least 1"));
        }
        if self.bias != "none" {
            return fail(
                "bias",
                format!("{:?} is not supported; expected \"none\"", self.bias),
            );
        }
        if let LoraInit::Named(name) = &self.init_lora_weights {
            if !name.eq_ignore_ascii_case("gaussian") {
                return fail(
                    "init_lora_weights",
                    format!("{name:?} is not supported; expected true, false or \"gaussian\""),
                );
            }
        }
        Ok(())
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
