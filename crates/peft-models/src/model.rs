//! One type for every supported architecture, so callers never match on the architecture.

use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Int, Tensor, TensorData};
use peft_core::{ModelGeometry, Projection, ProjectionHost, VirtualTokens};

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

    /// [`Self::forward`] from token embeddings `[batch, seq, hidden]` (what
    /// [`Self::embed`] gives), e.g. to run the base model on embeddings built elsewhere.
    pub fn forward_embeddings(
        &self,
        x: Tensor<3>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        match self {
            Self::Llama(m) => m.forward_embeddings(x, padding_mask, cache),
            Self::Gpt2(m) => m.forward_embeddings(x, padding_mask, cache),
        }
    }

    /// Token embeddings `[batch, seq, hidden]` of `input_ids`.
    pub fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Self::Llama(m) => embedding(m.embed_tokens.val(), input_ids),
            Self::Gpt2(m) => embedding(m.wte.val(), input_ids),
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
        let virtual_tokens = self.virtual_tokens().active_len();
        if let Some(max) = self
            .max_positions()
            .filter(|&max| total_len + virtual_tokens > max)
        {
            return Err(ModelError::InvalidInput(format!(
                "sequence of {total_len} tokens (and {virtual_tokens} virtual ones) exceeds \
                 the model's {max} positions"
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

    fn geometry(&self) -> ModelGeometry {
        match self {
            Self::Llama(m) => m.geometry(),
            Self::Gpt2(m) => m.geometry(),
        }
    }

    fn virtual_tokens(&self) -> &VirtualTokens {
        match self {
            Self::Llama(m) => m.virtual_tokens(),
            Self::Gpt2(m) => m.virtual_tokens(),
        }
    }

    fn virtual_tokens_mut(&mut self) -> &mut VirtualTokens {
        match self {
            Self::Llama(m) => m.virtual_tokens_mut(),
            Self::Gpt2(m) => m.virtual_tokens_mut(),
        }
    }

    fn embed_ids(&self, ids: &[u32]) -> Tensor<2> {
        match self {
            Self::Llama(m) => m.embed_ids(ids),
            Self::Gpt2(m) => m.embed_ids(ids),
        }
    }
}

/// Rows `ids` of an embedding table, `[ids.len(), hidden]`, detached.
pub(crate) fn embed_rows(table: &Param<Tensor<2>>, ids: &[u32]) -> Tensor<2> {
    let table = table.val();
    let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &table.device());
    let rows = embedding(table, ids);
    let [_, n, d] = rows.dims();
    rows.reshape([n, d]).detach()
}

/// Whether a checkpoint tensor may be left unused by `config`'s architecture.
pub(crate) fn is_ignorable_tensor(config: &ModelConfig, name: &str) -> bool {
    match config {
        ModelConfig::Llama(_) => Llama::is_ignorable_tensor(name),
        ModelConfig::Gpt2(_) => Gpt2::is_ignorable_tensor(name),
    }
}
