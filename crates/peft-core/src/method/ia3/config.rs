//! `IA3Config` with Hugging Face PEFT's field names and defaults (`peft.tuners.ia3.config`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::method::api::MethodConfig;
use crate::method::common::{check_group, PeftFields, TargetFields};
use crate::target::{default_targets, DefaultTargets, TargetMatcher, TargetModules};

/// PEFT's `TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`.
pub const DEFAULT_TARGETS: &DefaultTargets = &[
    ("llama", &["k_proj", "v_proj", "down_proj"]),
    ("qwen2", &["q_proj", "v_proj", "down_proj"]),
    ("qwen3", &["q_proj", "v_proj", "down_proj"]),
    ("mistral", &["k_proj", "v_proj", "down_proj"]),
    ("gemma", &["q_proj", "v_proj", "down_proj"]),
    ("gpt2", &["c_attn", "mlp.c_proj"]),
];

/// PEFT's `TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING`.
pub const DEFAULT_FEEDFORWARD: &DefaultTargets = &[
    ("llama", &["down_proj"]),
    ("qwen2", &["down_proj"]),
    ("qwen3", &["down_proj"]),
    ("mistral", &["down_proj"]),
    ("gemma", &["down_proj"]),
    ("gpt2", &["mlp.c_proj"]),
];

/// An IA3 configuration, as `adapter_config.json` spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ia3Config {
    /// Modules whose outputs (or, for feed-forward ones, inputs) are rescaled.
    #[serde(flatten)]
    pub targets: TargetFields,
    /// Targets whose input is rescaled instead of their output; must be among the targets.
    #[serde(default)]
    pub feedforward_modules: Option<TargetModules>,
    /// Whether the targets store their weight `[in, out]` (GPT-2's Conv1D); set on save.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Start the vectors at one (the base model); `false` draws them at random (tests).
    #[serde(default = "yes")]
    pub init_ia3_weights: bool,
    /// The fields every PEFT config has.
    #[serde(flatten)]
    pub peft: PeftFields,
}

fn yes() -> bool {
    true
}

impl Default for Ia3Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl Ia3Config {
    /// Whether the target at `key` has its input rescaled (a feed-forward module).
    pub fn is_feedforward(&self, key: &str) -> Result<bool> {
        match &self.feedforward_modules {
            None => Ok(false),
            Some(ff) => Ok(TargetMatcher::new(ff, None, None, None)?.matches(key)),
        }
    }
}

impl MethodConfig for Ia3Config {
    const PEFT_TYPE: &'static str = "IA3";

    fn check_json(value: &Value) -> Result<()> {
        check_group::<TargetFields>(value)?;
        check_group::<PeftFields>(value)
    }

    fn validate(&self) -> Result<()> {
        let (Some(targets), Some(TargetModules::Names(ff))) =
            (&self.targets.target_modules, &self.feedforward_modules)
        else {
            return Ok(());
        };
        // PEFT: `feedforward_modules` must be a subset of `target_modules`.
        if let TargetModules::Names(names) = targets {
            if let Some(stray) = ff.iter().find(|f| !names.contains(f)) {
                return Err(PeftError::Config {
                    field: "feedforward_modules".into(),
                    message: format!(
                        "{stray:?} is not in target_modules {names:?}; feed-forward modules \
                         must be targets too"
                    ),
                });
            }
        }
        Ok(())
    }

    fn resolve(&mut self, model: &ModelGeometry) -> Result<()> {
        self.targets.fill_default(DEFAULT_TARGETS, model)?;
        // PEFT fills the feed-forward modules from the mapping whenever they are unset.
        if self.feedforward_modules.is_none() {
            self.feedforward_modules =
                Some(default_targets(DEFAULT_FEEDFORWARD, &model.model_type)?);
        }
        Ok(())
    }

    fn targets(&self) -> Option<&TargetFields> {
        Some(&self.targets)
    }
}
