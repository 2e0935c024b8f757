//! The contract between an architecture (one folder each) and the rest of the crate: its
//! configuration ([`ArchConfig`]) and its model ([`Architecture`]). `crate::registry` turns the
//! implementations into [`crate::ModelConfig`] and [`crate::CausalLm`].

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use peft_core::{ModelAdapters, ModelGeometry, Projection};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::nn::attention::KvCache;
use crate::nn::embedding::Embedding;
use crate::nn::projections::HasProjections;
use crate::nn::virtual_input::cache_for_prefix;
use crate::weights::gguf::{GgufFile, HfName};
use crate::weights::Weights;

/// An architecture's configuration, as `config.json` spells it.
pub trait ArchConfig: Clone + std::fmt::Debug + Serialize + DeserializeOwned {
    /// transformers' `model_type`.
    const MODEL_TYPE: &'static str;
    /// transformers' model class (`architectures` in a written `config.json`).
    const HF_CLASS: &'static str;
    /// llama.cpp's `general.architecture`, for an architecture read from GGUF files.
    const GGUF_ARCHITECTURE: Option<&'static str> = None;

    /// The model it builds.
    type Model: Architecture;

    /// Checks the values the model depends on; the error names the key.
    fn validate(&self) -> std::result::Result<(), (&'static str, String)>;

    /// Rows of the embedding, columns of the logits.
    fn vocab_size(&self) -> usize;

    /// End-of-sequence ids named in the config.
    fn eos_token_ids(&self) -> Vec<u32>;

    /// The values a user wants to see (`inspect`), in order.
    fn describe(&self) -> Vec<(&'static str, String)>;

    /// Whether a checkpoint tensor may be left unused (e.g. cached masks).
    fn is_ignorable_tensor(name: &str) -> bool;

    /// Refuses, saying why, to write an output head that no longer equals the embedding
    /// (`tie_word_embeddings: false`) where the architecture cannot load one.
    fn check_untied_head(&self) -> std::result::Result<(), String>;

    /// Builds the model from the checkpoint's top scope.
    fn build(&self, root: &Weights) -> Result<Self::Model>;

    /// The configuration of a GGUF file of [`Self::GGUF_ARCHITECTURE`].
    fn from_gguf(file: &GgufFile) -> Result<Self> {
        Err(file.config_error(
            "general.architecture",
            format!("{} models are not read from GGUF", Self::MODEL_TYPE),
        ))
    }

    /// The transformers name of llama.cpp's tensor `gguf` (`None`: not one of the model's).
    fn gguf_name(&self, _gguf: &str) -> Option<HfName> {
        None
    }
}

/// A causal language model of one architecture; it holds the model-wide adapters' slot.
pub trait Architecture: Module + HasProjections {
    /// What every decoder layer reads beside its input (positions, the attention mask).
    type LayerInputs;

    /// The first decoder layer's input `[batch, seq, hidden]` from input embeddings, and what
    /// every layer reads beside it: the active adapter's virtual tokens added (with `cache`, a
    /// prefix put into it on a first pass), position embeddings where the architecture adds
    /// them, and the mask. Arguments as for [`Architecture::hidden_states`].
    fn decoder_input(
        &self,
        x: Tensor<3>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> (Tensor<3>, Self::LayerInputs);

    /// Decoder layer `index` applied to its input `x`; with `cache`, the new positions'
    /// keys/values appended to the layer's.
    fn decoder_layer(
        &self,
        index: usize,
        x: Tensor<3>,
        inputs: &Self::LayerInputs,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3>;

    /// The norm after the last layer: its output is what the output head reads.
    fn final_norm(&self, x: Tensor<3>) -> Tensor<3>;

    /// The last hidden states `[batch, seq, hidden]` (after the final norm, what the output
    /// head reads) from input embeddings `[batch, seq, hidden]`. `padding_mask`
    /// (`[batch, past + seq]`, 1 = token) masks padded keys; with `cache`, only the new
    /// positions are given and their keys/values are appended to it. An active prompt-tuning
    /// adapter puts its virtual tokens first, and their states come first.
    fn hidden_states(
        &self,
        x: Tensor<3>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let mut own_cache = None;
        let layers = self.num_layers();
        let mut cache = cache_for_prefix(self.model_adapters(), cache, &mut own_cache, layers);
        let (mut x, inputs) = self.decoder_input(x, padding_mask, cache.as_deref_mut());
        for index in 0..layers {
            x = self.decoder_layer(index, x, &inputs, cache.as_deref_mut());
        }
        self.final_norm(x)
    }

    /// The output head: logits are `lm_head(hidden_states)`.
    fn lm_head(&self) -> &Projection;

    /// The token embedding.
    fn token_embedding(&self) -> &Embedding;

    /// Decoder layers.
    fn num_layers(&self) -> usize;

    /// The longest sequence it can encode, where positions are learned.
    fn max_positions(&self) -> Option<usize>;

    /// Its shape, as adapters need it.
    fn geometry(&self) -> ModelGeometry;

    /// The model-wide adapters its forward pass consults.
    fn model_adapters(&self) -> &ModelAdapters;

    /// The same, mutable.
    fn model_adapters_mut(&mut self) -> &mut ModelAdapters;
}

/// Work generic over the architecture, done on a [`crate::CausalLm`] by
/// [`crate::CausalLm::visit_architecture`] (the enum's variants hold different types).
pub trait ArchitectureVisitor {
    /// What it gives back.
    type Output;

    /// Does the work on `model`.
    fn visit<A: Architecture>(self, model: &A) -> Self::Output;
}

/// A config error naming `key` in the file at `path` (for the architectures' own checks).
pub(crate) fn config_error(path: &str, key: &str, message: String) -> ModelError {
    ModelError::ConfigValue {
        path: path.into(),
        key: key.to_string(),
        message,
    }
}
