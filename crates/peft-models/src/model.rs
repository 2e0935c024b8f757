//! One type for every supported architecture, so callers never match on the architecture.

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use peft_core::{Projection, ProjectionHost};

use crate::attention::KvCache;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gpt2::Gpt2;
use crate::llama::Llama;

/// A causal language model of any supported architecture.
#[derive(Module, Debug)]
pub enum CausalLm {
    /// LLaMA family.
    Llama(Llama),
    /// GPT-2.
    Gpt2(Gpt2),
}

impl CausalLm {
    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]`.
    ///
    /// `padding_mask` (`[batch, past + seq]`, 1 = token, 0 = padding) masks padded keys; batches
    /// are right-padded. With `cache`, `input_ids` holds only the new tokens.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        match self {
            Self::Llama(m) => m.forward(input_ids, padding_mask, cache),
            Self::Gpt2(m) => m.forward(input_ids, padding_mask, cache),
        }
    }

    /// Vocabulary size (columns of the logits).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(m) => m.embed_tokens.dims()[0],
            Self::Gpt2(m) => m.wte.dims()[0],
        }
    }

    /// The longest sequence the model can encode, where positions are learned (GPT-2).
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            Self::Llama(_) => None,
            Self::Gpt2(m) => Some(m.wpe.dims()[0]),
        }
    }

    /// Checks token ids and the sequence length before they reach the model, which would
    /// otherwise index out of bounds.
    pub fn check_input(&self, ids: impl IntoIterator<Item = i64>, total_len: usize) -> Result<()> {
        let vocab = self.vocab_size();
        if let Some(bad) = ids.into_iter().find(|&id| id < 0 || id as usize >= vocab) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (0..{vocab})"
            )));
        }
        if let Some(max) = self.max_positions().filter(|&max| total_len > max) {
            return Err(ModelError::InvalidInput(format!(
                "sequence of {total_len} tokens exceeds the model's {max} positions"
            )));
        }
        Ok(())
    }

    /// An empty key/value cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(match self {
            Self::Llama(m) => m.layers.len(),
            Self::Gpt2(m) => m.h.len(),
        })
    }
}

impl ProjectionHost for CausalLm {
    fn projections(&self) -> Vec<(String, &Projection)> {
        match self {
            Self::Llama(m) => m.projections(),
            Self::Gpt2(m) => m.projections(),
        }
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        match self {
            Self::Llama(m) => m.projections_mut(),
            Self::Gpt2(m) => m.projections_mut(),
        }
    }
}

/// Whether a checkpoint tensor may be left unused by `config`'s architecture.
pub(crate) fn is_ignorable_tensor(config: &ModelConfig, name: &str) -> bool {
    match config {
        ModelConfig::Llama(_) => Llama::is_ignorable_tensor(name),
        ModelConfig::Gpt2(_) => Gpt2::is_ignorable_tensor(name),
    }
}
