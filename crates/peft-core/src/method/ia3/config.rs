//! `IA3Config` with Hugging Face PEFT's field names and defaults (`peft.tuners.ia3.config`).

use serde::{Deserialize, Serialize};

use crate::error::{PeftError, Result};
use crate::target::{TargetMatcher, TargetModules};

/// An IA3 configuration, as `adapter_config.json` spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ia3Config {
    /// Modules whose outputs (or, for feed-forward ones, inputs) are rescaled; `None` picks the
    /// architecture's default.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// Targets whose input is rescaled instead of their output; must be among the targets.
    #[serde(default)]
    pub feedforward_modules: Option<TargetModules>,
    /// Whether the targets store their weight `[in, out]` (GPT-2's Conv1D); set on save.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules trained in full next to the adapter.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Start the vectors at one (the base model); `false` draws them at random (tests).
    #[serde(default = "yes")]
    pub init_ia3_weights: bool,
    /// Base model this adapter was trained on (informational).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT task type (informational; e.g. `CAUSAL_LM`).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Whether the adapter was saved for inference (informational).
    #[serde(default)]
    pub inference_mode: bool,
}

fn yes() -> bool {
    true
}

impl Ia3Config {
    /// Refuses what cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let (Some(targets), Some(TargetModules::Names(ff))) =
            (&self.target_modules, &self.feedforward_modules)
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

    /// Whether the target at `key` has its input rescaled (a feed-forward module).
    pub fn is_feedforward(&self, key: &str) -> Result<bool> {
        match &self.feedforward_modules {
            None => Ok(false),
            Some(ff) => Ok(TargetMatcher::new(ff, None, None, None)?.matches(key)),
        }
    }
}
