//! The PEFT methods, each in its own folder, and the two enums that register them: the
//! configuration as `adapter_config.json` holds it, and the layer attached to a projection.
//!
//! Adding a method: a folder with its config and layer, one variant in each enum below, and its
//! arms in the `match`es of this file. Models are not touched.

pub mod lora;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Gradients, Tensor};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::format::{FileTensor, TensorReader};
use crate::target::{TargetMatcher, TargetModules};
use lora::{LoraConfig, LoraLayer};

/// The `peft_type` values this crate implements.
pub const SUPPORTED_PEFT_TYPES: &str = "LORA";

/// A method's configuration, as `adapter_config.json` holds it.
#[derive(Debug, Clone)]
pub enum AdapterConfig {
    /// LoRA, rsLoRA, DoRA.
    Lora(LoraConfig),
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
        let config =
            match peft_type {
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
                    let config: LoraConfig = serde_path_to_error::deserialize(value.clone())
                        .map_err(|e| PeftError::Config {
                            field: field_path(&e),
                            message: e.into_inner().to_string(),
                        })?;
                    Self::Lora(config)
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

    /// The `adapter_config.json` value, with `peft_type` set.
    pub fn to_json(&self) -> Value {
        let (mut value, peft_type) = match self {
            Self::Lora(c) => (serde_json::to_value(c).expect("config serialises"), "LORA"),
        };
        value["peft_type"] = Value::String(peft_type.into());
        value
    }

    /// Checks values, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Lora(c) => c.validate(),
        }
    }

    /// The targeting rule.
    pub fn matcher(&self) -> Result<TargetMatcher> {
        match self {
            Self::Lora(c) => TargetMatcher::new(
                c.target_modules.as_ref().expect("validated"),
                c.exclude_modules.as_ref(),
                c.layers_to_transform.as_ref(),
                c.layers_pattern.as_ref(),
            ),
        }
    }

    /// The targets as configured, for messages.
    pub fn targets(&self) -> Option<&TargetModules> {
        match self {
            Self::Lora(c) => c.target_modules.as_ref(),
        }
    }

    /// Modules trained in full beside the adapter.
    pub fn modules_to_save(&self) -> &[String] {
        match self {
            Self::Lora(c) => c.modules_to_save.as_deref().unwrap_or_default(),
        }
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
}

impl Adapter {
    /// Adds the adapter's contribution to `base_out = base(x)`.
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<D>,
        base_out: Tensor<D>,
        base: &Linear,
    ) -> Tensor<D> {
        match self {
            Self::Lora(l) => l.forward(x, base_out, base),
        }
    }

    /// The base weight `[in, out]` with this adapter merged in.
    pub fn merged_weight(&self, weight: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Lora(l) => {
                let merged = weight.clone() + l.delta_weight();
                match &l.magnitude {
                    None => merged,
                    Some(m) => {
                        let norm = l.weight_norm(weight);
                        merged * (m.val() / norm).unsqueeze::<2>()
                    }
                }
            }
        }
    }

    /// The base weight `[in, out]` recovered from `merged`, given the column norms of the
    /// original adapted weight (`dora_norm`, DoRA only) recorded at merge time.
    pub fn unmerged_weight(&self, merged: Tensor<2>, dora_norm: Option<Tensor<1>>) -> Tensor<2> {
        match self {
            Self::Lora(l) => {
                let unscaled = match (&l.magnitude, dora_norm) {
                    (Some(m), Some(norm)) => merged / (m.val() / norm).unsqueeze::<2>(),
                    _ => merged,
                };
                unscaled - l.delta_weight()
            }
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
        }
    }

    /// Replaces the adapter's tensors with those read from a file.
    pub fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        match self {
            Self::Lora(l) => l.load_file_tensors(read),
        }
    }

    /// What merging must remember to undo itself exactly (DoRA's column norms).
    pub fn merge_memo(&self, weight: Tensor<2>) -> Option<Tensor<1>> {
        match self {
            Self::Lora(l) => l.magnitude.as_ref().map(|_| l.weight_norm(weight)),
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
