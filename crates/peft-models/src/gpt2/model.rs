//! The GPT-2 forward pass, readable top to bottom, and its construction from a checkpoint. The
//! modules mirror transformers' `GPT2LMHeadModel` (`transformer.h.N.attn.c_attn`, ...): each
//! field is named as the Hugging Face module it holds, and built from the scope of that name.

use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor};
use peft_core::{ModelAdapters, ModelGeometry, Projection};

use super::config::Gpt2Config;
use crate::arch::{config_error, ArchConfig, Architecture};
use crate::error::Result;
use crate::nn::activation::Activation;
use crate::nn::attention::{attention_mask, scaled_dot_product, KvCache};
use crate::nn::embedding::Embedding;
use crate::nn::norm::LayerNorm;
use crate::nn::projections::has_projections;
use crate::nn::virtual_input::{prepare, Prepared};
use crate::weights::Weights;

/// Causal self-attention with a fused qkv projection.
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// Fused query/key/value projection (Conv1D `[n_embd, 3 * n_embd]`).
    pub c_attn: Projection,
    /// Output projection.
    pub c_proj: Projection,
    num_heads: usize,
    scale: f64,
}

has_projections!(Gpt2Attention: c_attn, c_proj);

impl Gpt2Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        mask: &Tensor<4, Bool>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let [b, s, width] = x.dims();
        let head_dim = width / self.num_heads;
        let qkv = self.c_attn.forward(x);
        let heads = |i: usize| {
            qkv.clone()
                .narrow(2, i * width, width)
                .reshape([b, s, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (heads(0), heads(1), heads(2));
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let out = scaled_dot_product(q, k, v, mask, self.scale);
        self.c_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, width]))
    }
}

/// The feed-forward block: `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// Up projection (Conv1D).
    pub c_fc: Projection,
    /// Down projection (Conv1D).
    pub c_proj: Projection,
    #[module(skip)]
    activation: Activation,
}

has_projections!(Gpt2Mlp: c_fc, c_proj);

impl Gpt2Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.c_fc.forward(x);
        self.c_proj.forward(self.activation.apply(h))
    }
}

/// One pre-norm block.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Attention.
    pub attn: Gpt2Attention,
    /// Norm before the MLP.
    pub ln_2: LayerNorm,
    /// Feed-forward.
    pub mlp: Gpt2Mlp,
}

has_projections!(Gpt2Block: attn, mlp);

impl Gpt2Block {
    fn load(vb: &Weights, c: &Gpt2Config, index: usize, activation: Activation) -> Result<Self> {
        let (d, inner, eps) = (c.n_embd, c.inner_dim(), c.layer_norm_epsilon);
        let mut scale = if c.scale_attn_weights {
            1.0 / ((d / c.n_head) as f64).sqrt()
        } else {
            1.0
        };
        if c.scale_attn_by_inverse_layer_idx {
            scale /= (index + 1) as f64;
        }
        let (attn, mlp) = (vb.pp("attn"), vb.pp("mlp"));
        Ok(Self {
            ln_1: LayerNorm::load(&vb.pp("ln_1"), d, eps)?,
            attn: Gpt2Attention {
                c_attn: attn.pp("c_attn").conv1d(d, 3 * d)?,
                c_proj: attn.pp("c_proj").conv1d(d, d)?,
                num_heads: c.n_head,
                scale,
            },
            ln_2: LayerNorm::load(&vb.pp("ln_2"), d, eps)?,
            mlp: Gpt2Mlp {
                c_fc: mlp.pp("c_fc").conv1d(d, inner)?,
                c_proj: mlp.pp("c_proj").conv1d(inner, d)?,
                activation,
            },
        })
    }
}

/// The decoder (transformers' `GPT2Model`).
#[derive(Module, Debug)]
pub struct Gpt2Model {
    /// Token embedding `[vocab, n_embd]`.
    pub wte: Embedding,
    /// Position embedding `[n_positions, n_embd]`.
    pub wpe: Embedding,
    /// Blocks.
    pub h: Vec<Gpt2Block>,
    /// Final norm.
    pub ln_f: LayerNorm,
}

has_projections!(Gpt2Model: h);

/// A GPT-2 causal language model (transformers' `GPT2LMHeadModel`, tied head).
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// The decoder.
    pub transformer: Gpt2Model,
    /// Output head: a contiguous copy of `wte`'s transpose under `wte`'s id.
    pub lm_head: Projection,
    /// Model-wide adapters (prefix and prompt tuning).
    pub adapters: ModelAdapters,
}

has_projections!(Gpt2: transformer, lm_head);

impl Gpt2 {
    /// Builds the model from the checkpoint's top scope `root`; the checkpoint may name its
    /// tensors with or without `GPT2LMHeadModel`'s `transformer.` prefix.
    pub fn load(c: &Gpt2Config, root: &Weights) -> Result<Self> {
        let vb = if root.contains("transformer.wte.weight") {
            root.pp("transformer")
        } else {
            root.pp_unstored("transformer")
        };
        let d = c.n_embd;
        let activation = c
            .activation()
            .map_err(|(key, message)| config_error("config.json", key, message))?;
        let head = root.pp("lm_head");
        let (wte, lm_head) = Embedding::load_tied(&vb.pp("wte"), head.path(), c.vocab_size, d)?;
        let wpe = Embedding::load(&vb.pp("wpe"), c.n_positions, d)?;
        let h = (0..c.n_layer)
            .map(|i| Gpt2Block::load(&vb.pp("h").pp(i), c, i, activation))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::load(&vb.pp("ln_f"), d, c.layer_norm_epsilon)?;
        Ok(Self {
            transformer: Gpt2Model { wte, wpe, h, ln_f },
            lm_head,
            adapters: ModelAdapters::default(),
        })
    }
}

impl Architecture for Gpt2 {
    /// The attention mask (position embeddings are added to the first layer's input).
    type LayerInputs = Tensor<4, Bool>;

    /// Position embeddings are added here.
    fn decoder_input(
        &self,
        x: Tensor<3>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> (Tensor<3>, Tensor<4, Bool>) {
        let Prepared {
            x,
            padding_mask,
            past,
            positions,
        } = prepare(&self.adapters, x, padding_mask, cache);
        let [batch, seq, _] = x.dims();
        let device = x.device();
        let x = x + self.transformer.wpe.forward(positions);
        let mask = attention_mask(batch, seq, past, padding_mask.as_ref(), None, &device);
        (x, mask)
    }

    fn decoder_layer(
        &self,
        index: usize,
        x: Tensor<3>,
        mask: &Tensor<4, Bool>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let block = &self.transformer.h[index];
        let cache = cache.map(|c| (c, index));
        let x = x.clone() + block.attn.forward(block.ln_1.forward(x), mask, cache);
        x.clone() + block.mlp.forward(block.ln_2.forward(x))
    }

    fn final_norm(&self, x: Tensor<3>) -> Tensor<3> {
        self.transformer.ln_f.forward(x)
    }

    fn lm_head(&self) -> &Projection {
        &self.lm_head
    }

    fn token_embedding(&self) -> &Embedding {
        &self.transformer.wte
    }

    fn num_layers(&self) -> usize {
        self.transformer.h.len()
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.transformer.wpe.rows())
    }

    fn geometry(&self) -> ModelGeometry {
        let [vocab_size, hidden_size] = [self.transformer.wte.rows(), self.transformer.wte.width()];
        let num_heads = self.transformer.h.first().map_or(1, |b| b.attn.num_heads);
        ModelGeometry {
            model_type: Gpt2Config::MODEL_TYPE.into(),
            num_layers: self.transformer.h.len(),
            hidden_size,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: hidden_size / num_heads,
            vocab_size,
            context_length: self.transformer.wpe.rows(),
        }
    }

    fn model_adapters(&self) -> &ModelAdapters {
        &self.adapters
    }

    fn model_adapters_mut(&mut self) -> &mut ModelAdapters {
        &mut self.adapters
    }
}
