//! What every causal language model does, whatever its architecture: logits from token ids,
//! input checks, and a key/value cache of the right size.

use burn::tensor::{Int, Tensor};
use peft_core::precision::to_f32;
use peft_core::ProjectionHost;

use crate::error::{ModelError, Result};
use crate::nn::attention::KvCache;
pub use crate::registry::CausalLm;

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
        self.forward_embeddings(self.embed(input_ids), padding_mask, cache)
    }

    /// [`CausalLm::forward`] from token embeddings `[batch, seq, hidden]` (what
    /// [`CausalLm::embed`] gives), e.g. to run the base model on embeddings built elsewhere.
    pub fn forward_embeddings(
        &self,
        x: Tensor<3>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let hidden = self.hidden_states_of_embeddings(x, padding_mask, cache);
        // In f32 whatever the base's type, as transformers upcasts logits.
        to_f32(self.lm_head().forward(hidden))
    }

    /// The last hidden states `[batch, seq, hidden]` for `input_ids`, what the output head
    /// ([`CausalLm::lm_head`]) turns into logits; arguments as for [`CausalLm::forward`].
    pub fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.hidden_states_of_embeddings(self.embed(input_ids), padding_mask, cache)
    }

    /// Token embeddings `[batch, seq, hidden]` of `input_ids`.
    pub fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.token_embedding().forward(input_ids)
    }

    /// Vocabulary size (columns of the logits).
    pub fn vocab_size(&self) -> usize {
        self.token_embedding().rows()
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
        let virtual_tokens = self.model_adapters().active_len();
        if let Some(max) = self
            .max_positions()
            .filter(|&max| total_len.saturating_add(virtual_tokens) > max)
        {
            return Err(ModelError::InvalidInput(format!(
                "sequence of {total_len} tokens (and {virtual_tokens} virtual ones) exceeds \
                 the model's {max} positions"
            )));
        }
        Ok(())
    }

    /// Positions the model was trained for (`n_positions`, `max_position_embeddings`).
    pub fn context_length(&self) -> usize {
        self.geometry().context_length
    }

    /// How many new tokens fit in the model's context (`n_positions`,
    /// `max_position_embeddings`) after `prompt_len` tokens and the active virtual tokens:
    /// `wanted`, or fewer where the context ends first. An error when the prompt leaves no room.
    pub fn new_token_room(&self, prompt_len: usize, wanted: usize) -> Result<usize> {
        let context = self.context_length();
        let used = prompt_len.saturating_add(self.model_adapters().active_len());
        if used >= context {
            return Err(ModelError::InvalidInput(format!(
                "the prompt's {prompt_len} tokens (with the adapter's virtual ones: {used}) fill \
                 the model's context of {context} positions; nothing can be generated"
            )));
        }
        Ok(wanted.min(context - used))
    }

    /// An empty key/value cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers())
    }
}
