//! The slot in a model where prompt-learning adapters live: prefix tuning's per-layer
//! key/value prefixes and prompt tuning's virtual token embeddings. The model's forward pass
//! asks the slot for the active adapter's contribution; it does not know the methods.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Gradients, Tensor};

use crate::error::{PeftError, Result};
use crate::format::{FileTensor, TensorReader};
use crate::method::prompt::{PrefixEncoder, PromptEmbedding, PromptInit, PromptTuningConfig};
use crate::projection::ProjectionHost;

/// A prompt-learning adapter.
// One per attached adapter, never in a hot collection: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum PromptEncoder {
    /// Prefix tuning.
    Prefix(PrefixEncoder),
    /// Prompt tuning.
    Prompt(PromptEmbedding),
}

impl PromptEncoder {
    /// Number of virtual tokens.
    pub fn len(&self) -> usize {
        match self {
            Self::Prefix(p) => p.len(),
            Self::Prompt(p) => p.len(),
        }
    }

    /// Whether there are no virtual tokens (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The method's name, for messages.
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::Prefix(_) => "prefix tuning",
            Self::Prompt(_) => "prompt tuning",
        }
    }

    /// The tensors as PEFT saves them (`prompt_embeddings`), or with `grads` their gradients.
    pub fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(String, FileTensor)>> {
        match self {
            Self::Prefix(p) => p.file_tensors(grads),
            Self::Prompt(p) => p.file_tensors(grads),
        }
    }

    /// Replaces the tensors with those read from a file.
    pub fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        match self {
            Self::Prefix(p) => p.load_file_tensors(read),
            Self::Prompt(p) => p.load_file_tensors(read),
        }
    }
}

/// A prompt-learning adapter under its name.
#[derive(Module, Debug)]
pub struct NamedPromptEncoder {
    /// The adapter's name.
    #[module(skip)]
    pub name: String,
    /// The adapter.
    pub encoder: PromptEncoder,
}

/// The prompt-learning adapters attached to a model, and which one runs.
#[derive(Module, Debug, Default)]
pub struct VirtualTokens {
    /// Attached adapters.
    pub encoders: Vec<NamedPromptEncoder>,
    /// The model's active adapter (which may be a projection method, then none runs here).
    #[module(skip)]
    pub active: Option<String>,
}

impl VirtualTokens {
    /// The adapter attached under `name`.
    pub fn get(&self, name: &str) -> Option<&PromptEncoder> {
        self.encoders
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.encoder)
    }

    /// The same, mutable.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut PromptEncoder> {
        self.encoders
            .iter_mut()
            .find(|e| e.name == name)
            .map(|e| &mut e.encoder)
    }

    /// The active prompt-learning adapter, if the active adapter is one.
    pub fn active(&self) -> Option<&PromptEncoder> {
        self.active.as_deref().and_then(|name| self.get(name))
    }

    /// Whether the active adapter is prefix tuning.
    pub fn prefix_active(&self) -> bool {
        matches!(self.active(), Some(PromptEncoder::Prefix(_)))
    }

    /// Keys and values `[batch, kv_heads, virtual, head_dim]` per layer to put before the
    /// input's, when a prefix-tuning adapter is active.
    pub fn prefix(&self, batch: usize) -> Option<Vec<(Tensor<4>, Tensor<4>)>> {
        match self.active() {
            Some(PromptEncoder::Prefix(p)) => Some(p.key_values(batch)),
            _ => None,
        }
    }

    /// Embeddings `[batch, virtual, hidden]` to put before the input's, when a prompt-tuning
    /// adapter is active.
    pub fn prompt(&self, batch: usize) -> Option<Tensor<3>> {
        match self.active() {
            Some(PromptEncoder::Prompt(p)) => Some(p.embeddings(batch)),
            _ => None,
        }
    }

    /// Virtual positions the active adapter puts before the input (prefix or prompt).
    pub fn active_len(&self) -> usize {
        self.active().map_or(0, PromptEncoder::len)
    }
}

/// Prompt-tuning embeddings for a resolved config, initialised as PEFT initialises them:
/// standard normal, the init text's token embeddings (repeated or cut to length), or the
/// embeddings of tokens drawn uniformly from the vocabulary (Burn's seeded generator).
pub fn new_prompt(
    config: &PromptTuningConfig,
    model: &impl ProjectionHost,
    placeholder: bool,
    device: &Device,
) -> Result<PromptEmbedding> {
    let (v, width) = config.shape();
    if placeholder {
        return Ok(PromptEmbedding::new(Tensor::zeros([v, width], device)));
    }
    let init = match config.prompt_tuning_init {
        PromptInit::Random => Tensor::random([v, width], Distribution::Normal(0.0, 1.0), device),
        PromptInit::Text => {
            let ids = config
                .init_token_ids
                .as_ref()
                .filter(|ids| !ids.is_empty())
                .ok_or_else(|| PeftError::Config {
                    field: "prompt_tuning_init_text".into(),
                    message: "was not tokenized (or gave no tokens); the caller must set \
                              init_token_ids from the model's tokenizer"
                        .into(),
                })?;
            // PEFT repeats the text's tokens until there are enough, then cuts to length.
            let ids: Vec<u32> = ids.iter().copied().cycle().take(v).collect();
            model.embed_ids(&ids)
        }
        PromptInit::SampleVocab => {
            let vocab = model.geometry().vocab_size;
            let draws = Tensor::<1>::random([v], Distribution::Uniform(0.0, vocab as f64), device);
            let draws = FileTensor::read(draws)?.data;
            let ids: Vec<u32> = draws
                .iter()
                .map(|&d| (d as u32).min(vocab as u32 - 1))
                .collect();
            model.embed_ids(&ids)
        }
    };
    Ok(PromptEmbedding::new(init))
}
