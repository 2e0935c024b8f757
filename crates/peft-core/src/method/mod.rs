//! The PEFT methods, each in its own folder, and the two enums that register them: the
//! configuration as `adapter_config.json` holds it, and the layer attached to a projection.
//!
//! Adding a method: a folder with its config and layer, one variant in each enum below, and its
//! arms in the `match`es of this file. Models are not touched.

pub mod bottleneck;
pub mod ia3;
pub mod lora;
pub mod prompt;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Gradients, Tensor};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::format::{FileTensor, TensorReader};
use crate::projection::ModelGeometry;
use crate::target::{default_targets, TargetMatcher, TargetModules};
use bottleneck::{BottleneckConfig, BottleneckLayer};
use ia3::{Ia3Config, Ia3Layer};
use lora::{LoraConfig, LoraLayer};
use prompt::{PrefixTuningConfig, PromptTuningConfig};

/// The `peft_type` values this crate implements.
pub const SUPPORTED_PEFT_TYPES: &str = "LORA, IA3, PREFIX_TUNING, PROMPT_TUNING, BOTTLENECK";

/// A method's configuration, as `adapter_config.json` holds it.
#[derive(Debug, Clone)]
pub enum AdapterConfig {
    /// LoRA, rsLoRA, DoRA.
    Lora(LoraConfig),
    /// IA3.
    Ia3(Ia3Config),
    /// Houlsby / Pfeiffer bottleneck adapters (this project's format).
    Bottleneck(BottleneckConfig),
    /// Prefix tuning.
    PrefixTuning(PrefixTuningConfig),
    /// Prompt tuning.
    PromptTuning(PromptTuningConfig),
}

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

/// Deserialises a config, naming the field at fault.
fn parse<T: DeserializeOwned>(value: &Value) -> Result<T> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| PeftError::Config {
        field: field_path(&e),
        message: e.into_inner().to_string(),
    })
}

impl AdapterConfig {
    /// Parses an `adapter_config.json` value, refusing with the field's name what cannot be honoured.
    pub fn from_json(value: &Value) -> Result<Self> {
        let peft_type = value
            .get("peft_type")
            .and_then(Value::as_str)
            .ok_or_else(|| PeftError::Config {
                field: "peft_type".into(),
                message: format!(
                    "missing or not a string; expected one of: {SUPPORTED_PEFT_TYPES}"
                ),
            })?;
        let config = match peft_type {
            "LORA" => {
                for field in MUST_BE_DEFAULT {
                    if let Some(v) = value.get(field).filter(|v| !is_default(v)) {
                        return Err(PeftError::Config {
                            field: field.into(),
                            message: format!(
                                "{v} is not supported; only the default (null/false) is"
                            ),
                        });
                    }
                }
                Self::Lora(parse(value)?)
            }
            "IA3" => Self::Ia3(parse(value)?),
            "BOTTLENECK" => Self::Bottleneck(parse(value)?),
            "PREFIX_TUNING" | "PROMPT_TUNING" => {
                if let Some(v) = value.get("modules_to_save").filter(|v| !is_default(v)) {
                    return Err(PeftError::Config {
                        field: "modules_to_save".into(),
                        message: format!("{v} is not supported with {peft_type}"),
                    });
                }
                if peft_type == "PREFIX_TUNING" {
                    Self::PrefixTuning(parse(value)?)
                } else {
                    Self::PromptTuning(parse(value)?)
                }
            }
            other => {
                return Err(PeftError::Config {
                    field: "peft_type".into(),
                    message: format!(
                        "{other:?} is not supported; expected one of: {SUPPORTED_PEFT_TYPES}"
                    ),
                })
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// The `peft_type` string.
    pub fn peft_type(&self) -> &'static str {
        match self {
            Self::Lora(_) => "LORA",
            Self::Ia3(_) => "IA3",
            Self::Bottleneck(_) => "BOTTLENECK",
            Self::PrefixTuning(_) => "PREFIX_TUNING",
            Self::PromptTuning(_) => "PROMPT_TUNING",
        }
    }

    /// The `adapter_config.json` value, with `peft_type` set.
    pub fn to_json(&self) -> Value {
        let value = match self {
            Self::Lora(c) => serde_json::to_value(c),
            Self::Ia3(c) => serde_json::to_value(c),
            Self::Bottleneck(c) => serde_json::to_value(c),
            Self::PrefixTuning(c) => serde_json::to_value(c),
            Self::PromptTuning(c) => serde_json::to_value(c),
        };
        let mut value = value.expect("config serialises");
        value["peft_type"] = Value::String(self.peft_type().into());
        value
    }

    /// Checks values, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Lora(c) => c.validate(),
            Self::Ia3(c) => c.validate(),
            Self::Bottleneck(c) => c.validate(),
            Self::PrefixTuning(c) => c.validate(),
            Self::PromptTuning(c) => c.validate(),
        }
    }

    /// This config completed for `model` as PEFT completes it: the architecture's default
    /// targets where none are given, prompt-learning dimensions from the model's shape.
    pub fn resolve(&self, model: &ModelGeometry) -> Result<Self> {
        let mut config = self.clone();
        let defaults = |kind: &str| -> Result<TargetModules> {
            default_targets(kind, &model.model_type)
                .map(|names| TargetModules::Names(names.iter().map(|s| s.to_string()).collect()))
                .ok_or_else(|| PeftError::Config {
                    field: "target_modules".into(),
                    message: format!(
                        "no default for {} models; name the modules to adapt",
                        model.model_type
                    ),
                })
        };
        match &mut config {
            Self::Lora(c) if c.target_modules.is_none() => {
                c.target_modules = Some(defaults("LORA")?)
            }
            Self::Ia3(c) => {
                if c.target_modules.is_none() {
                    c.target_modules = Some(defaults("IA3")?);
                }
                // PEFT fills the feed-forward modules from the mapping whenever they are unset.
                if c.feedforward_modules.is_none() {
                    c.feedforward_modules = Some(defaults("IA3_FEEDFORWARD")?);
                }
            }
            Self::Bottleneck(c) if c.target_modules.is_none() => {
                let kind = match c.variant {
                    bottleneck::BottleneckVariant::Houlsby => "BOTTLENECK_HOULSBY",
                    bottleneck::BottleneckVariant::Pfeiffer => "BOTTLENECK_PFEIFFER",
                };
                c.target_modules = Some(defaults(kind)?)
            }
            Self::PrefixTuning(c) => c.resolve(model)?,
            Self::PromptTuning(c) => c.resolve(model)?,
            _ => {}
        }
        config.validate()?;
        Ok(config)
    }

    /// Whether the method lives in the model's virtual-token slot rather than on projections.
    pub fn is_prompt_learning(&self) -> bool {
        matches!(self, Self::PrefixTuning(_) | Self::PromptTuning(_))
    }

    /// The targeting rule (`None` for prompt learning, which targets no projection).
    pub fn matcher(&self) -> Result<Option<TargetMatcher>> {
        let Some(targets) = self.targets() else {
            return match self.is_prompt_learning() {
                true => Ok(None),
                false => Err(PeftError::Config {
                    field: "target_modules".into(),
                    message: "is required: a list of module names, a regex, or \"all-linear\""
                        .into(),
                }),
            };
        };
        let matcher = match self {
            Self::Lora(c) => TargetMatcher::new(
                targets,
                c.exclude_modules.as_ref(),
                c.layers_to_transform.as_ref(),
                c.layers_pattern.as_ref(),
            ),
            Self::Ia3(c) => TargetMatcher::new(targets, c.exclude_modules.as_ref(), None, None),
            Self::Bottleneck(c) => {
                TargetMatcher::new(targets, c.exclude_modules.as_ref(), None, None)
            }
            Self::PrefixTuning(_) | Self::PromptTuning(_) => return Ok(None),
        };
        matcher.map(Some)
    }

    /// The targets as configured, for messages.
    pub fn targets(&self) -> Option<&TargetModules> {
        match self {
            Self::Lora(c) => c.target_modules.as_ref(),
            Self::Ia3(c) => c.target_modules.as_ref(),
            Self::Bottleneck(c) => c.target_modules.as_ref(),
            Self::PrefixTuning(_) | Self::PromptTuning(_) => None,
        }
    }

    /// Modules trained in full beside the adapter.
    pub fn modules_to_save(&self) -> &[String] {
        let list = match self {
            Self::Lora(c) => &c.modules_to_save,
            Self::Ia3(c) => &c.modules_to_save,
            Self::Bottleneck(c) => &c.modules_to_save,
            Self::PrefixTuning(_) | Self::PromptTuning(_) => return &[],
        };
        list.as_deref().unwrap_or_default()
    }

    /// The layer for the projection at `key` with base `base`.
    pub fn new_layer(&self, key: &str, base: &Linear) -> Result<Adapter> {
        match self {
            Self::Lora(c) => Ok(Adapter::Lora(LoraLayer::new(
                base,
                c.shape_for(key)?,
                c.lora_dropout,
                &c.init_lora_weights,
                c.use_dora,
            ))),
            Self::Ia3(c) => Ok(Adapter::Ia3(Ia3Layer::new(
                base,
                c.is_feedforward(key)?,
                c.init_ia3_weights,
            ))),
            Self::Bottleneck(c) => {
                let width = base.weight.dims()[1];
                Ok(Adapter::Bottleneck(BottleneckLayer::new(
                    width,
                    c.bottleneck_width(width),
                    c.non_linearity,
                    c.ln_before,
                    c.init_weights,
                    &base.weight.device(),
                )))
            }
            Self::PrefixTuning(_) | Self::PromptTuning(_) => Err(PeftError::State(format!(
                "{} attaches no layer to projections",
                self.peft_type()
            ))),
        }
    }
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A method's layer on one projection.
#[derive(Module, Debug)]
pub enum Adapter {
    /// LoRA / DoRA.
    Lora(LoraLayer),
    /// IA3.
    Ia3(Ia3Layer),
    /// A bottleneck adapter on the projection's output.
    Bottleneck(BottleneckLayer),
}

impl Adapter {
    /// The projection's output with this adapter, `base` being the frozen layer.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D> {
        match self {
            Self::Lora(l) => l.forward(x.clone(), base.forward(x), base),
            Self::Ia3(l) => l.forward(x, base),
            Self::Bottleneck(l) => l.forward(base.forward(x)),
        }
    }

    /// The method's name, for messages.
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::Lora(l) if l.magnitude.is_some() => "DoRA",
            Self::Lora(_) => "LoRA",
            Self::Ia3(_) => "IA3",
            Self::Bottleneck(_) => "bottleneck adapter",
        }
    }

    /// Whether the adapter can be folded into the base weights.
    pub fn can_merge(&self) -> bool {
        !matches!(self, Self::Bottleneck(_))
    }

    /// The base weight `[in, out]` and bias with this adapter merged in.
    pub fn merged(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        match self {
            Self::Lora(l) => {
                let merged = weight.clone() + l.delta_weight();
                let merged = match &l.magnitude {
                    None => merged,
                    Some(m) => {
                        let norm = l.weight_norm(weight);
                        merged * (m.val() / norm).unsqueeze::<2>()
                    }
                };
                (merged, bias)
            }
            Self::Ia3(l) => l.merged(weight, bias),
            Self::Bottleneck(_) => unreachable!("refused by can_merge before merging"),
        }
    }

    /// The base weight `[in, out]` and bias recovered from merged ones, given what merging
    /// remembered (`memo`: DoRA's column norms of the original adapted weight).
    pub fn unmerged(
        &self,
        merged: Tensor<2>,
        bias: Option<Tensor<1>>,
        memo: Option<Tensor<1>>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        match self {
            Self::Lora(l) => {
                let unscaled = match (&l.magnitude, memo) {
                    (Some(m), Some(norm)) => merged / (m.val() / norm).unsqueeze::<2>(),
                    _ => merged,
                };
                (unscaled - l.delta_weight(), bias)
            }
            Self::Ia3(l) => l.unmerged(merged, bias),
            Self::Bottleneck(_) => unreachable!("a bottleneck adapter is never merged"),
        }
    }

    /// The adapter's tensors (or, with `grads`, their gradients) in PEFT's layout, by the name
    /// PEFT gives them after the module path.
    pub fn file_tensors(
        &self,
        grads: Option<&Gradients>,
    ) -> Result<Vec<(&'static str, FileTensor)>> {
        match self {
            Self::Lora(l) => l.file_tensors(grads),
            Self::Ia3(l) => l.file_tensors(grads),
            Self::Bottleneck(l) => l.file_tensors(grads),
        }
    }

    /// Replaces the adapter's tensors with those read from a file.
    pub fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        match self {
            Self::Lora(l) => l.load_file_tensors(read),
            Self::Ia3(l) => l.load_file_tensors(read),
            Self::Bottleneck(l) => l.load_file_tensors(read),
        }
    }

    /// What merging must remember to undo itself exactly (DoRA's column norms).
    pub fn merge_memo(&self, weight: Tensor<2>) -> Option<Tensor<1>> {
        match self {
            Self::Lora(l) => l.magnitude.as_ref().map(|_| l.weight_norm(weight)),
            Self::Ia3(_) | Self::Bottleneck(_) => None,
        }
    }
}

/// The key a deserialisation error is about (`rope_scaling.factor`), or `(top level)` for an
/// error about the object itself (e.g. a missing field, which the message names).
fn field_path<E>(e: &serde_path_to_error::Error<E>) -> String {
    match e.path().to_string() {
        p if p == "." => "(top level)".to_string(),
        p => p,
    }
}
