//! Prompt tuning's virtual token embeddings, initialised as PEFT initialises them.

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Gradients, Tensor};

use super::config::{PromptInit, PromptTuningConfig};
use crate::error::{PeftError, Result};
use crate::ids::replace_value;
use crate::method::api::{ModelContext, ModelLayer};
use crate::tensors::{value_or_grad, HostTensor, TensorReader};

/// Learned embeddings `[virtual, hidden]` put before the input's embeddings.
#[derive(Module, Debug)]
pub struct PromptEmbedding {
    /// The embeddings.
    pub embedding: Param<Tensor<2>>,
}

impl PromptEmbedding {
    /// Embeddings starting at `init` `[virtual, hidden]`.
    pub fn from_tensor(init: Tensor<2>) -> Self {
        Self {
            embedding: Param::from_tensor(init),
        }
    }

    /// Number of virtual tokens.
    pub fn len(&self) -> usize {
        self.embedding.dims()[0]
    }

    /// Whether there are no virtual tokens (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ModelLayer for PromptEmbedding {
    type Config = PromptTuningConfig;

    /// Standard normal, the init text's token embeddings (repeated or cut to length), or the
    /// embeddings of tokens drawn uniformly from the vocabulary (Burn's seeded generator).
    fn new(
        config: &PromptTuningConfig,
        model: &ModelContext<'_>,
        placeholder: bool,
    ) -> Result<Self> {
        let (v, width) = config.shape();
        let device = &model.device;
        if placeholder {
            return Ok(Self::from_tensor(Tensor::zeros([v, width], device)));
        }
        let init = match config.prompt_tuning_init {
            PromptInit::Random => {
                Tensor::random([v, width], Distribution::Normal(0.0, 1.0), device)
            }
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
                (model.embed_ids)(&ids)
            }
            PromptInit::SampleVocab => {
                let vocab = model.geometry.vocab_size;
                let draws =
                    Tensor::<1>::random([v], Distribution::Uniform(0.0, vocab as f64), device);
                let draws = HostTensor::read(draws)?.data;
                let ids: Vec<u32> = draws
                    .iter()
                    .map(|&d| (d as u32).min(vocab as u32 - 1))
                    .collect();
                (model.embed_ids)(&ids)
            }
        };
        Ok(Self::from_tensor(init))
    }

    fn method_name(&self) -> &'static str {
        "prompt tuning"
    }

    fn id_scope(&self) -> &'static str {
        "prompt_encoder"
    }

    fn virtual_tokens(&self) -> usize {
        self.len()
    }

    /// `[batch, virtual, hidden]`.
    fn prompt(&self, batch: usize) -> Option<Tensor<3>> {
        let [v, d] = self.embedding.dims();
        Some(self.embedding.val().unsqueeze::<3>().expand([batch, v, d]))
    }

    /// `prompt_embeddings` (or its gradient).
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(String, HostTensor)>> {
        Ok(value_or_grad(&self.embedding, grads)
            .map(|e| HostTensor::read(e).map(|t| ("prompt_embeddings".to_string(), t)))
            .transpose()?
            .into_iter()
            .collect())
    }

    /// Replaces the embeddings with `prompt_embeddings` from a file.
    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        let shape = self.embedding.dims();
        let device = self.embedding.device();
        let e = read("prompt_embeddings", &shape)?.upload::<2>(&device);
        self.embedding = replace_value(&self.embedding, e);
        Ok(())
    }
}
