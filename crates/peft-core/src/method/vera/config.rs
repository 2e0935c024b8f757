//! `VeraConfig` with Hugging Face PEFT's field names and defaults (`peft.tuners.vera.config`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::method::api::MethodConfig;
use crate::method::common::{check_group, check_rank_scales_dropout, PeftFields, TargetFields};
use crate::method::lora::DEFAULT_TARGETS;
use crate::target::{LayerIndices, LayersPattern, TargetMatcher};

/// A VeRA configuration, as `adapter_config.json` spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VeraConfig {
    /// Modules to adapt (PEFT's VeRA defaults are LoRA's).
    #[serde(flatten)]
    pub targets: TargetFields,
    /// Rank of the shared projections.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Dropout on the branch's input.
    #[serde(default)]
    pub vera_dropout: f64,
    /// The initial value of every `λ_d`.
    #[serde(default = "default_d_initial")]
    pub d_initial: f64,
    /// Seed of the shared projections (here this crate's own generator, not PyTorch's).
    #[serde(default)]
    pub projection_prng_key: u64,
    /// Whether the file holds the projections; this crate always saves them and cannot
    /// rebuild PyTorch's draws when a file does not.
    #[serde(default = "yes")]
    pub save_projection: bool,
    /// Whether the targets store their weight `[in, out]` (GPT-2's Conv1D); set on save.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Start at PEFT's values (`λ_b` zero, `λ_d` `d_initial`); `false` makes `λ_b` one
    /// (tests: a branch that changes the output from the start).
    #[serde(default = "yes")]
    pub init_weights: bool,
    /// Only adapt these layer indices.
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndices>,
    /// Name(s) of the module list that `layers_to_transform` indexes.
    #[serde(default)]
    pub layers_pattern: Option<LayersPattern>,
    /// The fields every PEFT config has.
    #[serde(flatten)]
    pub peft: PeftFields,
    /// The widest input and output of the targets, which size the shared projections (set
    /// when the adapter is attached).
    #[serde(skip)]
    pub widest: Option<[usize; 2]>,
}

fn default_r() -> usize {
    256
}

fn default_d_initial() -> f64 {
    0.1
}

fn yes() -> bool {
    true
}

impl Default for VeraConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl MethodConfig for VeraConfig {
    const PEFT_TYPE: &'static str = "VERA";

    fn check_json(value: &Value) -> Result<()> {
        if let Some(bias) = value.get("bias").filter(|b| !b.is_null() && *b != "none") {
            return Err(PeftError::Config {
                field: "bias".into(),
                message: format!("{bias} is not supported; only \"none\" is"),
            });
        }
        check_group::<TargetFields>(value)?;
        check_group::<PeftFields>(value)
    }

    fn validate(&self) -> Result<()> {
        check_rank_scales_dropout(
            ("r", self.r),
            &[("d_initial", self.d_initial)],
            ("vera_dropout", self.vera_dropout),
        )?;
        if !self.save_projection {
            return Err(PeftError::Config {
                field: "save_projection".into(),
                message: "false: the file leaves out vera_A and vera_B, which PEFT redraws from \
                 PyTorch's generator seeded with projection_prng_key; that generator is not \
                 reproduced here, so save the adapter with save_projection=True"
                    .into(),
            });
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

    fn fit_to_targets(&mut self, shapes: &[[usize; 2]]) {
        let widest = |side: usize| shapes.iter().map(|s| s[side]).max().unwrap_or(0);
        self.widest = Some([widest(0), widest(1)]);
    }
}
