//! The prefix's trainable tensors and the keys and values the model gets from them.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Gradients, Tensor};

use super::config::PrefixTuningConfig;
use crate::error::Result;
use crate::ids::replace_value;
use crate::method::api::{ModelContext, ModelLayer};
use crate::tensors::{value_or_grad, HostTensor, TensorReader};

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
    pub fn init(config: &PrefixTuningConfig, placeholder: bool, device: &Device) -> Self {
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
}

impl ModelLayer for PrefixEncoder {
    type Config = PrefixTuningConfig;

    fn new(
        config: &PrefixTuningConfig,
        model: &ModelContext<'_>,
        placeholder: bool,
    ) -> Result<Self> {
        Ok(Self::init(config, placeholder, &model.device))
    }

    fn method_name(&self) -> &'static str {
        "prefix tuning"
    }

    /// A prefix trained through the MLP is saved folded, so a run resumed from a checkpoint
    /// trains the folded table: its ids must differ from the MLP's embedding, whose optimizer
    /// state has another shape.
    fn id_scope(&self) -> &'static str {
        match self.transform {
            Some(_) => "prompt_encoder/mlp",
            None => "prompt_encoder",
        }
    }

    fn virtual_tokens(&self) -> usize {
        self.len()
    }

    fn has_prefix(&self) -> bool {
        true
    }

    /// Keys and values per layer, `[batch, kv_heads, virtual, head_dim]` each, laid out as
    /// PEFT's `get_prompt` lays them out (`view(v, 2L, heads, hd).permute(2, 0, 3, 1, 4)`:
    /// row `2l` keys of layer `l`, row `2l + 1` its values). Not rotated by RoPE.
    fn prefix(&self, batch: usize) -> Option<Vec<(Tensor<4>, Tensor<4>)>> {
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
        Some(
            (0..self.num_layers)
                .map(|l| (row(2 * l), row(2 * l + 1)))
                .collect(),
        )
    }

    /// `prompt_embeddings` as PEFT saves it (the MLP folded in); with `grads`, the gradients
    /// of the trained tensors instead, named after PEFT's modules when there is an MLP.
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(String, HostTensor)>> {
        let Some(grads) = grads else {
            return Ok(vec![(
                "prompt_embeddings".into(),
                HostTensor::read(self.table().detach())?,
            )]);
        };
        let mut out = Vec::new();
        let embedding_name = match self.transform {
            None => "prompt_embeddings",
            Some(_) => "prompt_encoder.embedding.weight",
        };
        if let Some(g) = value_or_grad(&self.embedding, Some(grads)) {
            out.push((embedding_name.to_string(), HostTensor::read(g)?));
        }
        if let Some(mlp) = &self.transform {
            for (index, layer) in [(0, &mlp.hidden), (2, &mlp.out)] {
                let prefix = format!("prompt_encoder.transform.{index}");
                if let Some(g) = value_or_grad(&layer.weight, Some(grads)) {
                    out.push((format!("{prefix}.weight"), HostTensor::read(g.transpose())?));
                }
                if let Some(g) = layer
                    .bias
                    .as_ref()
                    .and_then(|b| value_or_grad(b, Some(grads)))
                {
                    out.push((format!("{prefix}.bias"), HostTensor::read(g)?));
                }
            }
        }
        Ok(out)
    }

    /// Replaces the table with `prompt_embeddings` from a file (the encoder then has no MLP,
    /// as PEFT's inference-mode encoder has none).
    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
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
