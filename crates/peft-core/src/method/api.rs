//! The contract between a method and the rest of the crate: the config side
//! ([`MethodConfig`]) and the layer side, either a layer on each targeted projection
//! ([`ProjectionLayer`]) or one adapter for the model as a whole ([`ModelLayer`]).
//! `crate::registry` turns the implementations into the enums Burn's `Module` derive needs.

use burn::module::Module;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Gradients, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::common::TargetFields;
use crate::error::Result;
use crate::geometry::ModelGeometry;
use crate::target::TargetMatcher;
use crate::tensors::{HostTensor, TensorReader};

/// A method's configuration, as `adapter_config.json` holds it.
pub trait MethodConfig: Clone + std::fmt::Debug + Serialize + DeserializeOwned {
    /// `peft_type` in `adapter_config.json`.
    const PEFT_TYPE: &'static str;

    /// Refuses, naming the field, what PEFT may write but this implementation cannot honour;
    /// sees the raw JSON before it is parsed.
    fn check_json(_value: &Value) -> Result<()> {
        Ok(())
    }

    /// Checks values, naming the field at fault.
    fn validate(&self) -> Result<()>;

    /// Completes the config for `model` as PEFT does: default targets for the architecture,
    /// dimensions taken from the model.
    fn resolve(&mut self, model: &ModelGeometry) -> Result<()>;

    /// The projections it adapts; `None` for a method that attaches to the model as a whole.
    fn targets(&self) -> Option<&TargetFields>;

    /// The rule that picks the adapted projections (after [`Self::resolve`]).
    fn matcher(&self) -> Result<Option<TargetMatcher>> {
        self.targets().map(|t| t.matcher(None, None)).transpose()
    }

    /// Readies the config for a training run of `steps` optimizer steps (`resumed`: continued
    /// from a checkpoint), or refuses, naming the field, what cannot be trained. AdaLoRA fills
    /// in `total_step` and checks its budget schedule. Nothing by default.
    fn prepare_training(&mut self, _steps: usize, _resumed: bool) -> Result<()> {
        Ok(())
    }

    /// Whether the method acts after each optimizer step (see
    /// [`ProjectionLayer::after_optimizer_step`]), so that the trainer keeps the step's
    /// gradients for it. Not by default.
    fn acts_after_optimizer_step(&self) -> bool {
        false
    }

    /// Learns the weight shapes `[in, out]` of the projections it is about to adapt, before
    /// their layers are made (VeRA sizes its shared projections by the widest). Nothing by
    /// default.
    fn fit_to_targets(&mut self, _shapes: &[[usize; 2]]) {}
}

/// A projection's weight `[in, out]` and bias with an adapter merged in, and what unmerging
/// needs to undo it exactly (DoRA's column norms).
#[derive(Debug, Clone)]
pub struct Merged {
    /// The merged weight.
    pub weight: Tensor<2>,
    /// The merged bias.
    pub bias: Option<Tensor<1>>,
    /// What unmerging needs besides the layer.
    pub memo: Option<Tensor<1>>,
}

/// A method's layer on one projection `y = x W + b` (`W` stored `[in, out]`, frozen).
pub trait ProjectionLayer: Module + Sized {
    /// The configuration it is built from.
    type Config: MethodConfig;

    /// A new layer, initialised as PEFT initialises it, for the projection at `key` (its
    /// Hugging Face module path) whose frozen layer is `base`.
    fn new(config: &Self::Config, key: &str, base: &Linear) -> Result<Self>;

    /// The method's name, for messages.
    fn method_name(&self) -> &'static str;

    /// The layer in a few words (`lora r=8 scale=2`), for `inspect`.
    fn describe(&self) -> String;

    /// The projection's output on `x` with this adapter.
    fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D>;

    /// Parameters of the layer that never train (AdaLoRA's `ranknum`): PEFT counts them among
    /// all parameters, not the trainable ones. None by default.
    fn frozen_parameters(&self) -> usize {
        0
    }

    /// Whether rows of one batch may run this layer beside other adapters' (PEFT's mixed
    /// batches: LoRA, DoRA, IA3, VeRA). Not by default.
    fn mixes_in_batches(&self) -> bool {
        false
    }

    /// Whether the layer can be folded into the base weights.
    fn can_merge(&self) -> bool {
        true
    }

    /// The base weight and bias with this layer folded in; `None` when it cannot be.
    fn merge(&self, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Option<Merged>;

    /// The base weight and bias recovered from merged ones and their memo.
    fn unmerge(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        memo: Option<Tensor<1>>,
    ) -> (Tensor<2>, Option<Tensor<1>>);

    /// The layer's tensors (or, with `grads`, their gradients) in PEFT's layout, by the name
    /// PEFT gives them after the module path; tensors without a gradient are left out.
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(&'static str, HostTensor)>>;

    /// Replaces the layer's tensors with those `read` returns for PEFT's names and shapes.
    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()>;

    /// Tensors the method keeps once for all layers of one adapter (VeRA's shared
    /// projections), by full key (`base_model.vera_A`); with `grads`, their gradients. None by
    /// default.
    fn shared_file_tensors(
        _layers: &[&Self],
        _grads: Option<&Gradients>,
    ) -> Result<Vec<(String, HostTensor)>> {
        Ok(Vec::new())
    }

    /// Reads those tensors (by full key) into every layer of one adapter. Nothing by default.
    fn load_shared_file_tensors(
        _layers: &mut [&mut Self],
        _read: &mut TensorReader<'_>,
    ) -> Result<()> {
        Ok(())
    }

    /// A term the trainer adds to the loss, computed over every layer of one adapter (the slot
    /// for AdaLoRA's orthogonality regulariser). None by default.
    fn extra_loss(_config: &Self::Config, _layers: &[&Self]) -> Option<Tensor<1>> {
        None
    }

    /// Work on every layer of one adapter, with its module path, after each optimizer step
    /// (AdaLoRA's rank allocation, which may record its result in the config). Called only
    /// when [`MethodConfig::acts_after_optimizer_step`]. Nothing by default.
    fn after_optimizer_step(
        _config: &mut Self::Config,
        _layers: &mut [(&str, &mut Self)],
        _step: &OptimizerStep<'_>,
    ) -> Result<()> {
        Ok(())
    }
}

/// The optimizer step a method acts after.
pub struct OptimizerStep<'a> {
    /// Optimizer steps completed before this one (the `global_step` PEFT's training loops
    /// pass to `update_and_allocate`: 0 after the first step).
    pub before: usize,
    /// The gradients this step applied (accumulated and clipped), by parameter id.
    pub grads: &'a GradientsParams,
}

/// What a model-wide adapter may ask of the model it attaches to.
pub struct ModelContext<'a> {
    /// The model's shape.
    pub geometry: ModelGeometry,
    /// Where its parameters live.
    pub device: Device,
    /// Token embeddings `[ids.len(), hidden]` of `ids`, detached (prompt tuning's init).
    pub embed_ids: &'a dyn Fn(&[u32]) -> Tensor<2>,
}

/// A method's adapter on the model as a whole: prompt learning's virtual tokens. The model's forward pass
/// asks for its virtual tokens; it does not know the method.
pub trait ModelLayer: Module + Sized {
    /// The configuration it is built from.
    type Config: MethodConfig;

    /// A new adapter for a resolved `config`; with `placeholder`, tensors of the saved shape
    /// that a file is about to fill.
    fn new(config: &Self::Config, model: &ModelContext<'_>, placeholder: bool) -> Result<Self>;

    /// The method's name, for messages.
    fn method_name(&self) -> &'static str;

    /// What, after the adapter's name, makes its parameter ids (stable across runs, so that a
    /// checkpoint's optimizer state finds its tensors).
    fn id_scope(&self) -> &'static str;

    /// Virtual positions it puts before the input (0 for shared state).
    fn virtual_tokens(&self) -> usize;

    /// Whether it puts keys and values before every layer's (prefix tuning).
    fn has_prefix(&self) -> bool {
        false
    }

    /// Keys and values `[batch, kv_heads, virtual, head_dim]` per layer to put before the
    /// input's (prefix tuning).
    fn prefix(&self, _batch: usize) -> Option<Vec<(Tensor<4>, Tensor<4>)>> {
        None
    }

    /// Embeddings `[batch, virtual, hidden]` to put before the input's (prompt tuning).
    fn prompt(&self, _batch: usize) -> Option<Tensor<3>> {
        None
    }

    /// Its tensors as PEFT saves them (or, with `grads`, their gradients), by full key.
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(String, HostTensor)>>;

    /// Replaces its tensors with those `read` returns for the saved names and shapes.
    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()>;
}
