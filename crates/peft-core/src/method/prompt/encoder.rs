//! The trainable tensors of prompt learning and what the model gets from them.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Gradients, Tensor};

use super::config::PrefixTuningConfig;
use crate::error::Result;
use crate::format::{value_or_grad, FileTensor, TensorReader};
use crate::ids::replace_value;

/// PEFT's reparameterisation: `Linear(token_dim, hidden) → tanh → Linear(hidden, out)`.
#[derive(Module, Debug)]
pub struct PrefixMlp {
    /// First layer, weight `[token_dim, hidden]`.
    pub hidden: Linear,
    /// Second layer, weight `[hidden, layers · 2 · token_dim]`.
    pub out: Linear,
}

/// Per-layer key/value prefixes: a `[virtual, layers · 2 · kv_heads · head_dim]` table
/// (PEFT's `prompt_embeddings`), or a `[virtual, token_dim]` embedding passed through
/// [`PrefixMlp`] when `prefix_projection` is on.
#[derive(Module, Debug)]
pub struct PrefixEncoder {
    /// The embedding.
    pub embedding: Param<Tensor<2>>,
    /// The reparameterisation, while training with `prefix_projection`.
    pub transform: Option<PrefixMlp>,
    /// Decoder layers.
    pub num_layers: usize,
    /// Key/value heads.
    pub num_heads: usize,
    /// Head width.
    pub head_dim: usize,
}

fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    // nn.Linear's default init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    let bound = 1.0 / (d_in as f64).sqrt();
    let dist = Distribution::Uniform(-bound, bound);
    Linear {
        weight: Param::from_tensor(Tensor::random([d_in, d_out], dist, device)),
        bias: Some(Param::from_tensor(Tensor::random([d_out], dist, device))),
    }
}

impl PrefixEncoder {
    /// A freshly initialised encoder for a resolved `config` (the embedding standard normal, as
    /// `nn.Embedding` starts); with `placeholder`, a zero table of the saved shape, to be
    /// filled from a file.
    pub fn new(config: &PrefixTuningConfig, placeholder: bool, device: &Device) -> Self {
        let (num_layers, num_heads, head_dim) = config.kv_layout();
        let (token_dim, hidden) = config.widths();
        let virtual_tokens = config.dims.num_virtual_tokens;
        let folded = num_layers * 2 * token_dim;
        let (embedding, transform) = if placeholder {
            (Tensor::zeros([virtual_tokens, folded], device), None)
        } else if config.prefix_projection {
            (
                Tensor::random(
                    [virtual_tokens, token_dim],
                    Distribution::Normal(0.0, 1.0),
                    device,
                ),
                Some(PrefixMlp {
                    hidden: linear(token_dim, hidden, device),
                    out: linear(hidden, folded, device),
                }),
            )
        } else {
            (
                Tensor::random(
                    [virtual_tokens, folded],
                    Distribution::Normal(0.0, 1.0),
                    device,
                ),
                None,
            )
        };
        Self {
            embedding: Param::from_tensor(embedding),
            transform,
            num_layers,
            num_heads,
            head_dim,
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

    /// The `[virtual, layers · 2 · kv_width]` table, through the MLP when there is one.
    pub fn table(&self) -> Tensor<2> {
        let e = self.embedding.val();
        match &self.transform {
            Some(mlp) => mlp.out.forward(mlp.hidden.forward(e).tanh()),
            None => e,
        }
    }

    /// Keys and values per layer, `[batch, kv_heads, virtual, head_dim]` each, laid out as
    /// PEFT's `get_prompt` lays them out (`view(v, 2L, heads, hd).permute(2, 0, 3, 1, 4)`:
    /// row `2l` keys of layer `l`, row `2l + 1` its values). Not rotated by RoPE.
    pub fn key_values(&self, batch: usize) -> Vec<(Tensor<4>, Tensor<4>)> {
        let v = self.len();
        let (heads, hd) = (self.num_heads, self.head_dim);
        let per_row = self
            .table()
            .reshape([v, 2 * self.num_layers, heads, hd])
            .permute([1, 2, 0, 3]);
        let row = |i: usize| {
            per_row
                .clone()
                .narrow(0, i, 1)
                .expand([batch, heads, v, hd])
        };
        (0..self.num_layers)
            .map(|l| (row(2 * l), row(2 * l + 1)))
            .collect()
    }

    /// `prompt_embeddings` as PEFT saves it (the MLP folded in); with `grads`, the gradients
    /// of the trained tensors instead, named after PEFT's modules when there is an MLP.
    pub fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(String, FileTensor)>> {
        let Some(grads) = grads else {
            return Ok(vec![(
                "prompt_embeddings".into(),
                FileTensor::read(self.table().detach())?,
            )]);
        };
        let mut out = Vec::new();
        let embedding_name = match self.transform {
            None => "prompt_embeddings",
            Some(_) => "prompt_encoder.embedding.weight",
        };
        if let Some(g) = value_or_grad(&self.embedding, Some(grads)) {
            out.push((embedding_name.to_string(), FileTensor::read(g)?));
        }
        if let Some(mlp) = &self.transform {
            for (index, layer) in [(0, &mlp.hidden), (2, &mlp.out)] {
                let prefix = format!("prompt_encoder.transform.{index}");
                if let Some(g) = value_or_grad(&layer.weight, Some(grads)) {
                    out.push((format!("{prefix}.weight"), FileTensor::read(g.transpose())?));
                }
                if let Some(g) = layer
                    .bias
                    .as_ref()
                    .and_then(|b| value_or_grad(b, Some(grads)))
                {
                    out.push((format!("{prefix}.bias"), FileTensor::read(g)?));
                }
            }
        }
        Ok(out)
    }

    /// Replaces the table with `prompt_embeddings` from a file (the encoder then has no MLP,
    /// as PEFT's inference-mode encoder has none).
    pub fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        let shape = [
            self.len(),
            self.num_layers * 2 * self.num_heads * self.head_dim,
        ];
        let device = self.embedding.device();
        let table = read("prompt_embeddings", &shape)?.upload::<2>(&device);
        self.embedding = replace_value(&self.embedding, table);
        self.transform = None;
        Ok(())
    }
}

/// Learned embeddings `[virtual, hidden]` put before the input's embeddings.
#[derive(Module, Debug)]
pub struct PromptEmbedding {
    /// The embeddings.
    pub embedding: Param<Tensor<2>>,
}

impl PromptEmbedding {
    /// Embeddings starting at `init` `[virtual, hidden]`.
    pub fn new(init: Tensor<2>) -> Self {
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

    /// `[batch, virtual, hidden]`.
    pub fn embeddings(&self, batch: usize) -> Tensor<3> {
        let [v, d] = self.embedding.dims();
        self.embedding.val().unsqueeze::<3>().expand([batch, v, d])
    }

    /// `prompt_embeddings` (or its gradient).
    pub fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(String, FileTensor)>> {
        Ok(value_or_grad(&self.embedding, grads)
            .map(|e| FileTensor::read(e).map(|t| ("prompt_embeddings".to_string(), t)))
            .transpose()?
            .into_iter()
            .collect())
    }

    /// Replaces the embeddings with `prompt_embeddings` from a file.
    pub fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        let shape = self.embedding.dims();
        let device = self.embedding.device();
        let e = read("prompt_embeddings", &shape)?.upload::<2>(&device);
        self.embedding = replace_value(&self.embedding, e);
        Ok(())
    }
}
