//! Fields several PEFT configs share, each group in one struct flattened into the configs
//! (serde keeps their keys at the top level of `adapter_config.json`, as PEFT writes them).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::json::is_default;
use crate::target::{
    default_targets, DefaultTargets, LayerIndices, LayersPattern, TargetMatcher, TargetModules,
};

/// The fields of every PEFT config (PEFT's `PeftConfig`), informational here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeftFields {
    /// Base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT task type (e.g. `CAUSAL_LM`).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Whether the adapter was saved for inference.
    #[serde(default)]
    pub inference_mode: bool,
}

impl PeftFields {
    /// A causal-LM adapter (what this project trains).
    pub fn causal_lm() -> Self {
        Self {
            task_type: Some("CAUSAL_LM".into()),
            ..Self::default()
        }
    }
}

/// Which projections a method adapts, and which it trains in full beside the adapter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetFields {
    /// Modules to adapt; `None` picks the method's default for the architecture.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// Modules trained in full next to the adapter (e.g. `lm_head`).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

impl TargetFields {
    /// Fills `target_modules`, when unset, from a method's per-architecture `defaults`.
    pub fn fill_default(&mut self, defaults: &DefaultTargets, model: &ModelGeometry) -> Result<()> {
        if self.target_modules.is_none() {
            self.target_modules = Some(default_targets(defaults, &model.model_type)?);
        }
        Ok(())
    }

    /// The rule picking the targets, with LoRA's layer filter when given.
    pub fn matcher(
        &self,
        layers: Option<&LayerIndices>,
        layers_pattern: Option<&LayersPattern>,
    ) -> Result<TargetMatcher> {
        let targets = self
            .target_modules
            .as_ref()
            .ok_or_else(|| PeftError::Config {
                field: "target_modules".into(),
                message: "is required: a list of module names, a regex, or \"all-linear\"".into(),
            })?;
        TargetMatcher::new(
            targets,
            self.exclude_modules.as_ref(),
            layers,
            layers_pattern,
        )
    }

    /// The modules trained in full beside the adapter.
    pub fn modules_to_save(&self) -> &[String] {
        self.modules_to_save.as_deref().unwrap_or_default()
    }
}

/// The fields every prompt-learning config shares (PEFT's `PromptLearningConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VirtualTokenDims {
    /// Number of virtual tokens.
    pub num_virtual_tokens: usize,
    /// Width of one virtual token: the hidden size (prompt tuning), or for prefix tuning the
    /// key/value width (`kv_heads · head_dim`).
    #[serde(default)]
    pub token_dim: Option<usize>,
    /// 1 for decoder-only models.
    #[serde(default)]
    pub num_transformer_submodules: Option<usize>,
    /// Attention heads of the prefix (the key/value heads under grouped-query attention).
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    /// Decoder layers.
    #[serde(default)]
    pub num_layers: Option<usize>,
}

impl VirtualTokenDims {
    /// `num_virtual_tokens` virtual tokens; the rest is filled from the model.
    pub fn new(num_virtual_tokens: usize) -> Self {
        Self {
            num_virtual_tokens,
            ..Self::default()
        }
    }

    /// Fills what is missing from `model` (for prefix tuning, heads and width are those of the
    /// keys and values) and checks what was given against it, naming the field at fault.
    pub(crate) fn resolve(&mut self, model: &ModelGeometry, prefix: bool) -> Result<()> {
        // Virtual tokens take positions of the context, before the input's first token.
        if self.num_virtual_tokens >= model.context_length {
            return Err(PeftError::Config {
                field: "num_virtual_tokens".into(),
                message: format!(
                    "{} leaves no room for input in the model's context of {} positions; at \
                     most {}",
                    self.num_virtual_tokens,
                    model.context_length,
                    model.context_length.saturating_sub(1)
                ),
            });
        }
        let (heads, width) = if prefix {
            (model.num_kv_heads, model.num_kv_heads * model.head_dim)
        } else {
            (model.num_heads, model.hidden_size)
        };
        let fields = [
            ("num_layers", &mut self.num_layers, model.num_layers),
            ("token_dim", &mut self.token_dim, width),
            ("num_attention_heads", &mut self.num_attention_heads, heads),
            (
                "num_transformer_submodules",
                &mut self.num_transformer_submodules,
                1,
            ),
        ];
        for (field, slot, wanted) in fields {
            match *slot {
                None => *slot = Some(wanted),
                Some(given) if given == wanted => {}
                Some(given) => {
                    return Err(PeftError::Config {
                        field: field.into(),
                        message: format!(
                            "is {given}, but the model needs {wanted} ({} model with {} layers, \
                             hidden size {}, {} key/value heads of width {})",
                            model.model_type,
                            model.num_layers,
                            model.hidden_size,
                            model.num_kv_heads,
                            model.head_dim
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.num_virtual_tokens == 0 {
            return Err(PeftError::Config {
                field: "num_virtual_tokens".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The filled-in value of a dimension.
    pub(crate) fn get(slot: Option<usize>) -> usize {
        slot.expect("dimensions are filled by resolve before use")
    }
}

/// Parses one flattened group of fields (`T`) of a config on its own, so that a value of the
/// wrong type names its key: serde reports the fields of a flattened struct without their
/// names. Each config's `check_json` runs it for its groups before the config is parsed.
pub(crate) fn check_group<T: DeserializeOwned>(value: &Value) -> Result<()> {
    crate::json::parse::<T>(value.clone())
        .map(drop)
        .map_err(|(field, message)| PeftError::Config { field, message })
}

/// Checks what every adapter with a rank, scales and a dropout has: a rank of at least 1,
/// finite scales, a dropout in [0, 1); each pair is (field, value) and errors name the field.
pub(crate) fn check_rank_scales_dropout(
    rank: (&str, usize),
    scales: &[(&str, f64)],
    dropout: (&str, f64),
) -> Result<()> {
    let fail = |field: &str, message: String| {
        Err(PeftError::Config {
            field: field.to_string(),
            message,
        })
    };
    if rank.1 == 0 {
        return fail(rank.0, "must be at least 1".into());
    }
    if let Some((field, value)) = scales.iter().find(|(_, v)| !v.is_finite()) {
        return fail(field, format!("{value} is not a finite number"));
    }
    if !(0.0..1.0).contains(&dropout.1) {
        return fail(dropout.0, format!("{} is not in [0, 1)", dropout.1));
    }
    Ok(())
}

/// Refuses `modules_to_save` for prompt learning (PEFT's prompt-learning models have no
/// projections to copy).
pub(crate) fn refuse_modules_to_save(value: &Value, peft_type: &str) -> Result<()> {
    match value.get("modules_to_save").filter(|v| !is_default(v)) {
        Some(v) => Err(PeftError::Config {
            field: "modules_to_save".into(),
            message: format!("{v} is not supported with {peft_type}"),
        }),
        None => Ok(()),
    }
}
