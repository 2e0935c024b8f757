//! The methods this crate implements, registered once: one line per method in
//! `register_methods!` fills the enums that Burn's `Module` derive needs (it cannot hold a
//! trait object) and their dispatch to the traits of [`crate::method::api`].

use burn::nn::Linear;
use burn::tensor::{Gradients, Tensor};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::method::adalora::{AdaLoraConfig, AdaLoraLayer};
use crate::method::api::{
    Merged, MethodConfig, ModelContext, ModelLayer, OptimizerStep, ProjectionLayer,
};
use crate::method::bottleneck::{BottleneckConfig, BottleneckLayer};
use crate::method::common::TargetFields;
use crate::method::ia3::{Ia3Config, Ia3Layer};
use crate::method::lora::{LoraConfig, LoraLayer};
use crate::method::prefix::{PrefixEncoder, PrefixTuningConfig};
use crate::method::prompt::{PromptEmbedding, PromptTuningConfig};
use crate::method::vera::{VeraConfig, VeraLayer};
use crate::target::TargetMatcher;
use crate::tensors::{HostTensor, TensorReader};

/// Generates [`AdapterConfig`] (every method), [`Adapter`] (methods with a layer on each
/// projection) and [`ModelAdapter`] (methods with one adapter for the whole model) from lines
/// `Variant: ConfigType => projection LayerType` or `=> model LayerType`, in the order given
/// (the order of `SUPPORTED_PEFT_TYPES` in messages).
macro_rules! register_methods {
    ($($variant:ident: $config:ty => $kind:ident $layer:ty,)*) => {
        /// A method's configuration, as `adapter_config.json` holds it.
        #[derive(Debug, Clone)]
        pub enum AdapterConfig {
            $(
                #[doc = concat!("`", stringify!($config), "`.")]
                $variant($config),
            )*
        }

        /// The `peft_type` values this crate implements.
        const PEFT_TYPES: &[&str] = &[$(<$config as MethodConfig>::PEFT_TYPE),*];

        impl AdapterConfig {
            /// Parses the method `peft_type` names, if one does.
            fn parse_method(peft_type: &str, value: &Value) -> Option<Result<Self>> {
                $(
                    if peft_type == <$config as MethodConfig>::PEFT_TYPE {
                        return Some(parse_config::<$config>(value).map(Self::$variant));
                    }
                )*
                None
            }

            /// The `peft_type` string.
            pub fn peft_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$config as MethodConfig>::PEFT_TYPE,)*
                }
            }

            fn serialize(&self) -> serde_json::Result<Value> {
                match self {
                    $(Self::$variant(c) => serde_json::to_value(c),)*
                }
            }

            /// Checks values, naming the field at fault.
            pub fn validate(&self) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.validate(),)*
                }
            }

            fn resolve_in_place(&mut self, model: &ModelGeometry) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.resolve(model),)*
                }
            }

            /// The projections it adapts; `None` for a method on the model as a whole.
            pub fn targets(&self) -> Option<&TargetFields> {
                match self {
                    $(Self::$variant(c) => c.targets(),)*
                }
            }

            /// The rule picking the adapted projections (`None` for a model-wide method).
            pub fn matcher(&self) -> Result<Option<TargetMatcher>> {
                match self {
                    $(Self::$variant(c) => c.matcher(),)*
                }
            }

            /// Readies the config for a run of `steps` optimizer steps, or refuses what
            /// cannot be trained, naming the field.
            pub fn prepare_training(&mut self, steps: usize, resumed: bool) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.prepare_training(steps, resumed),)*
                }
            }

            /// Whether the method acts after each optimizer step.
            pub fn acts_after_optimizer_step(&self) -> bool {
                match self {
                    $(Self::$variant(c) => c.acts_after_optimizer_step(),)*
                }
            }

            /// Learns the weight shapes `[in, out]` of the projections about to be adapted.
            pub fn fit_to_targets(&mut self, shapes: &[[usize; 2]]) {
                match self {
                    $(Self::$variant(c) => c.fit_to_targets(shapes),)*
                }
            }
        }

        register_methods!(@sort [] [] $($variant: $config => $kind $layer,)*);
    };

    (@sort [$($p:tt)*] [$($m:tt)*] $v:ident: $c:ty => projection $l:ty, $($rest:tt)*) => {
        register_methods!(@sort [$($p)* ($v, $c, $l)] [$($m)*] $($rest)*);
    };
    (@sort [$($p:tt)*] [$($m:tt)*] $v:ident: $c:ty => model $l:ty, $($rest:tt)*) => {
        register_methods!(@sort [$($p)*] [$($m)* ($v, $c, $l)] $($rest)*);
    };
    (@sort [$(($pv:ident, $pc:ty, $pl:ty))*] [$(($mv:ident, $mc:ty, $ml:ty))*]) => {
        /// A method's layer on one projection.
        // One per adapted projection, reached through its name, never in a hot collection: the
        // size difference between methods (VeRA's frozen slices) costs nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(burn::module::Module, Debug)]
        pub enum Adapter {
            $(
                #[doc = concat!("`", stringify!($pl), "`.")]
                $pv($pl),
            )*
        }

        impl Adapter {
            /// The projection's output on `x` with this adapter, `base` being the frozen layer.
            pub fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D> {
                match self {
                    $(Self::$pv(l) => l.forward(x, base),)*
                }
            }

            /// The method's name, for messages.
            pub fn method_name(&self) -> &'static str {
                match self {
                    $(Self::$pv(l) => l.method_name(),)*
                }
            }

            /// The layer in a few words, for `inspect`.
            pub fn describe(&self) -> String {
                match self {
                    $(Self::$pv(l) => l.describe(),)*
                }
            }

            /// Whether rows of one batch may run this adapter beside others.
            pub fn mixes_in_batches(&self) -> bool {
                match self {
                    $(Self::$pv(l) => l.mixes_in_batches(),)*
                }
            }

            /// Parameters of the layer that never train (counted among all, not trainable).
            pub fn frozen_parameters(&self) -> usize {
                match self {
                    $(Self::$pv(l) => l.frozen_parameters(),)*
                }
            }

            /// Whether the adapter can be folded into the base weights.
            pub fn can_merge(&self) -> bool {
                match self {
                    $(Self::$pv(l) => l.can_merge(),)*
                }
            }

            /// The base weight `[in, out]` and bias with this adapter folded in.
            pub fn merge(&self, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Option<Merged> {
                match self {
                    $(Self::$pv(l) => l.merge(weight, bias),)*
                }
            }

            /// The base weight and bias recovered from merged ones and their memo.
            pub fn unmerge(
                &self,
                weight: Tensor<2>,
                bias: Option<Tensor<1>>,
                memo: Option<Tensor<1>>,
            ) -> (Tensor<2>, Option<Tensor<1>>) {
                match self {
                    $(Self::$pv(l) => l.unmerge(weight, bias, memo),)*
                }
            }

            /// The adapter's tensors (or, with `grads`, their gradients) in PEFT's layout, by
            /// the name PEFT gives them after the module path.
            pub fn file_tensors(
                &self,
                grads: Option<&Gradients>,
            ) -> Result<Vec<(&'static str, HostTensor)>> {
                match self {
                    $(Self::$pv(l) => l.file_tensors(grads),)*
                }
            }

            /// Replaces the adapter's tensors with those read from a file.
            pub fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
                match self {
                    $(Self::$pv(l) => l.load_file_tensors(read),)*
                }
            }

            /// The tensors the method of `layers` (one adapter's) keeps once for all of them,
            /// by full key; with `grads`, their gradients.
            pub fn shared_file_tensors(
                layers: &[&Adapter],
                grads: Option<&Gradients>,
            ) -> Result<Vec<(String, HostTensor)>> {
                $(
                    #[allow(unreachable_patterns)]
                    let of: Vec<&$pl> = layers
                        .iter()
                        .filter_map(|a| match a {
                            Adapter::$pv(l) => Some(l),
                            _ => None,
                        })
                        .collect();
                    if !of.is_empty() {
                        return <$pl as ProjectionLayer>::shared_file_tensors(&of, grads);
                    }
                )*
                Ok(Vec::new())
            }

            /// Reads those tensors (by full key) into every layer of `layers`.
            pub fn load_shared_file_tensors(
                layers: Vec<&mut Adapter>,
                read: &mut TensorReader<'_>,
            ) -> Result<()> {
                let mut layers = layers;
                $(
                    #[allow(unreachable_patterns)]
                    let mut of: Vec<&mut $pl> = layers
                        .iter_mut()
                        .filter_map(|a| match &mut **a {
                            Adapter::$pv(l) => Some(l),
                            _ => None,
                        })
                        .collect();
                    if !of.is_empty() {
                        return <$pl as ProjectionLayer>::load_shared_file_tensors(&mut of, read);
                    }
                )*
                Ok(())
            }
        }

        /// A method's adapter on the model as a whole.
        // One per attached adapter, never in a hot collection: the size difference costs nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(burn::module::Module, Debug)]
        pub enum ModelAdapter {
            $(
                #[doc = concat!("`", stringify!($ml), "`.")]
                $mv($ml),
            )*
        }

        impl ModelAdapter {
            /// The method's name, for messages.
            pub fn method_name(&self) -> &'static str {
                match self {
                    $(Self::$mv(l) => l.method_name(),)*
                }
            }

            /// What makes its parameter ids after the adapter's name.
            pub fn id_scope(&self) -> &'static str {
                match self {
                    $(Self::$mv(l) => l.id_scope(),)*
                }
            }

            /// Virtual positions it puts before the input.
            pub fn virtual_tokens(&self) -> usize {
                match self {
                    $(Self::$mv(l) => l.virtual_tokens(),)*
                }
            }

            /// Whether it puts keys and values before every layer's (prefix tuning).
            pub fn has_prefix(&self) -> bool {
                match self {
                    $(Self::$mv(l) => l.has_prefix(),)*
                }
            }

            /// Keys and values per layer to put before the input's (prefix tuning).
            pub fn prefix(&self, batch: usize) -> Option<Vec<(Tensor<4>, Tensor<4>)>> {
                match self {
                    $(Self::$mv(l) => l.prefix(batch),)*
                }
            }

            /// Embeddings to put before the input's (prompt tuning).
            pub fn prompt(&self, batch: usize) -> Option<Tensor<3>> {
                match self {
                    $(Self::$mv(l) => l.prompt(batch),)*
                }
            }

            /// Its tensors as PEFT saves them (or their gradients), by full key.
            pub fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(String, HostTensor)>> {
                match self {
                    $(Self::$mv(l) => l.file_tensors(grads),)*
                }
            }

            /// Replaces its tensors with those read from a file.
            pub fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
                match self {
                    $(Self::$mv(l) => l.load_file_tensors(read),)*
                }
            }
        }

        impl AdapterConfig {
            /// The layer for the projection at `key` with frozen layer `base`.
            pub fn new_layer(&self, key: &str, base: &Linear) -> Result<Adapter> {
                match self {
                    $(Self::$pv(c) => <$pl as ProjectionLayer>::new(c, key, base).map(Adapter::$pv),)*
                    #[allow(unreachable_patterns)]
                    other => Err(PeftError::State(format!(
                        "{} attaches no layer to projections",
                        other.peft_type()
                    ))),
                }
            }

            /// The model-wide adapter of a method that has one (`None` for the others); with
            /// `placeholder`, tensors that a file is about to fill.
            pub fn new_model_adapter(
                &self,
                model: &ModelContext<'_>,
                placeholder: bool,
            ) -> Result<Option<ModelAdapter>> {
                match self {
                    $(Self::$mv(c) => <$ml as ModelLayer>::new(c, model, placeholder)
                        .map(|l| Some(ModelAdapter::$mv(l))),)*
                    #[allow(unreachable_patterns)]
                    _ => Ok(None),
                }
            }

            /// The method's extra loss term over the layers `adapters` of one adapter.
            pub fn extra_loss<'a>(
                &self,
                adapters: impl IntoIterator<Item = &'a Adapter>,
            ) -> Option<Tensor<1>> {
                match self {
                    $(Self::$pv(c) => {
                        #[allow(unreachable_patterns)]
                        let layers: Vec<&$pl> = adapters
                            .into_iter()
                            .filter_map(|a| match a {
                                Adapter::$pv(l) => Some(l),
                                _ => None,
                            })
                            .collect();
                        <$pl as ProjectionLayer>::extra_loss(c, &layers)
                    })*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }

            /// The method's work after an optimizer step, over the layers of one adapter
            /// (with their module paths).
            pub fn after_optimizer_step<'a>(
                &mut self,
                adapters: impl IntoIterator<Item = (&'a str, &'a mut Adapter)>,
                step: &OptimizerStep<'_>,
            ) -> Result<()> {
                match self {
                    $(Self::$pv(c) => {
                        #[allow(unreachable_patterns)]
                        let mut layers: Vec<(&str, &mut $pl)> = adapters
                            .into_iter()
                            .filter_map(|(key, a)| match a {
                                Adapter::$pv(l) => Some((key, l)),
                                _ => None,
                            })
                            .collect();
                        <$pl as ProjectionLayer>::after_optimizer_step(c, &mut layers, step)
                    })*
                    #[allow(unreachable_patterns)]
                    _ => Ok(()),
                }
            }
        }
    };
}

register_methods! {
    Lora: LoraConfig => projection LoraLayer,
    Ia3: Ia3Config => projection Ia3Layer,
    PrefixTuning: PrefixTuningConfig => model PrefixEncoder,
    PromptTuning: PromptTuningConfig => model PromptEmbedding,
    Bottleneck: BottleneckConfig => projection BottleneckLayer,
    Vera: VeraConfig => projection VeraLayer,
    AdaLora: AdaLoraConfig => projection AdaLoraLayer,
}

/// The `peft_type` values this crate implements, for messages.
pub fn supported_peft_types() -> String {
    PEFT_TYPES.join(", ")
}

/// Checks, then parses, one method's config, naming the field at fault.
fn parse_config<C: MethodConfig>(value: &Value) -> Result<C> {
    C::check_json(value)?;
    crate::json::parse(value.clone())
        .map_err(|(field, message)| PeftError::Config { field, message })
}

impl AdapterConfig {
    /// Parses an `adapter_config.json` value, refusing with the field's name what cannot be honoured.
    pub fn from_json(value: &Value) -> Result<Self> {
        let supported = supported_peft_types();
        let peft_type = value
            .get("peft_type")
            .and_then(Value::as_str)
            .ok_or_else(|| PeftError::Config {
                field: "peft_type".into(),
                message: format!("missing or not a string; expected one of: {supported}"),
            })?;
        let config = Self::parse_method(peft_type, value).ok_or_else(|| PeftError::Config {
            field: "peft_type".into(),
            message: format!("{peft_type:?} is not supported; expected one of: {supported}"),
        })??;
        config.validate()?;
        Ok(config)
    }

    /// The `adapter_config.json` value, with `peft_type` set.
    pub fn to_json(&self) -> Value {
        let mut value = self.serialize().expect("config serialises");
        value["peft_type"] = Value::String(self.peft_type().into());
        value
    }

    /// This config completed for `model` as PEFT completes it: the architecture's default
    /// targets where none are given, prompt-learning dimensions from the model's shape.
    pub fn resolve(&self, model: &ModelGeometry) -> Result<Self> {
        let mut config = self.clone();
        config.resolve_in_place(model)?;
        config.validate()?;
        Ok(config)
    }

    /// Modules trained in full beside the adapter.
    pub fn modules_to_save(&self) -> &[String] {
        self.targets().map_or(&[], TargetFields::modules_to_save)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_also_in_a_shared_group() {
        let cases = [
            (
                serde_json::json!({"peft_type": "LORA", "r": "eight"}),
                "`r`",
            ),
            (
                serde_json::json!({"peft_type": "LORA", "target_modules": 5}),
                "`target_modules`",
            ),
            (
                serde_json::json!({"peft_type": "IA3", "task_type": 3}),
                "`task_type`",
            ),
            (
                serde_json::json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": "x"}),
                "`num_virtual_tokens`",
            ),
        ];
        for (json, key) in cases {
            let err = AdapterConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn every_method_round_trips_through_its_json() {
        for peft_type in PEFT_TYPES {
            let json = serde_json::json!({"peft_type": peft_type, "num_virtual_tokens": 4});
            let config = AdapterConfig::from_json(&json).unwrap();
            assert_eq!(config.peft_type(), *peft_type);
            let again = AdapterConfig::from_json(&config.to_json()).unwrap();
            assert_eq!(again.to_json(), config.to_json());
        }
    }
}
