//! The GPT-2 forward pass, readable top to bottom, and its construction from a checkpoint.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, gelu_approximate, relu, silu};
use burn::tensor::module::embedding;
use burn::tensor::{Bool, Int, Tensor};
use peft_core::{ModelGeometry, Projection, ProjectionHost, VirtualTokens, WeightLayout};

use super::{Activation, Gpt2Config};
use crate::attention::{attention_mask, scaled_dot_product, KvCache};
use crate::error::{ModelError, Result};
use crate::load::WeightLoader;
use crate::norm::LayerNorm;
use crate::virtual_input::{cache_for_prefix, prepare, Prepared};

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

impl Gpt2Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.c_fc.forward(x);
        let h = match self.activation {
            Activation::GeluTanh => gelu_approximate(h),
            Activation::Gelu => gelu(h),
            Activation::Relu => relu(h),
            Activation::Silu => silu(h),
        };
        self.c_proj.forward(h)
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

/// A GPT-2 causal language model (tied head).
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Token embedding `[vocab, n_embd]`.
    pub wte: Param<Tensor<2>>,
    /// Position embedding `[n_positions, n_embd]`.
    pub wpe: Param<Tensor<2>>,
    /// Blocks.
    pub h: Vec<Gpt2Block>,
    /// Final norm.
    pub ln_f: LayerNorm,
    /// Output head, a view of `wte`.
    pub lm_head: Projection,
    /// Prompt-learning adapters (prefix and prompt tuning).
    pub virtual_tokens: VirtualTokens,
}

impl Gpt2 {
    /// Logits `[batch, seq, vocab]`; arguments as for [`crate::llama::Llama::forward`].
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let x = embedding(self.wte.val(), input_ids);
        self.forward_embeddings(x, padding_mask, cache)
    }

    /// [`Self::forward`] from token embeddings `[batch, seq, n_embd]` (position embeddings
    /// are added here).
    pub fn forward_embeddings(
        &self,
        x: Tensor<3>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let mut own_cache = None;
        let mut cache = cache_for_prefix(&self.virtual_tokens, cache, &mut own_cache, self.h.len());
        let Prepared {
            x,
            padding_mask,
            past,
        } = prepare(&self.virtual_tokens, x, padding_mask, cache.as_deref_mut());
        let [batch, seq, _] = x.dims();
        let device = x.device();
        let positions =
            Tensor::<1, Int>::arange(past as i64..(past + seq) as i64, &device).reshape([1, seq]);
        let mut x = x + embedding(self.wpe.val(), positions);
        let mask = attention_mask(batch, seq, past, padding_mask.as_ref(), &device);
        for (i, block) in self.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = x.clone()
                + block
                    .attn
                    .forward(block.ln_1.forward(x), &mask, layer_cache);
            x = x.clone() + block.mlp.forward(block.ln_2.forward(x));
        }
        self.lm_head.forward(self.ln_f.forward(x))
    }

    /// Builds the model from checkpoint tensors named as transformers names them, with or
    /// without the `transformer.` prefix of `GPT2LMHeadModel`.
    pub fn load(config: &Gpt2Config, w: &mut WeightLoader) -> Result<Self> {
        let prefix = if w.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let (d, inner) = (config.n_embd, config.inner_dim());
        let eps = config.layer_norm_epsilon;
        let activation = config
            .activation()
            .map_err(|(key, message)| ModelError::ConfigValue {
                path: "config.json".into(),
                key: key.to_string(),
                message,
            })?;
        let wte = w.matrix(&format!("{prefix}wte.weight"), config.vocab_size, d)?;
        let wpe = w.matrix(&format!("{prefix}wpe.weight"), config.n_positions, d)?;
        let mut h = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("{prefix}h.{i}");
            let mut scale = if config.scale_attn_weights {
                1.0 / ((d / config.n_head) as f64).sqrt()
            } else {
                1.0
            };
            if config.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            h.push(Gpt2Block {
                ln_1: layer_norm(w, &format!("{p}.ln_1"), d, eps)?,
                attn: Gpt2Attention {
                    c_attn: conv1d(w, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                    c_proj: conv1d(w, &format!("{p}.attn.c_proj"), d, d)?,
                    num_heads: config.n_head,
                    scale,
                },
                ln_2: layer_norm(w, &format!("{p}.ln_2"), d, eps)?,
                mlp: Gpt2Mlp {
                    c_fc: conv1d(w, &format!("{p}.mlp.c_fc"), d, inner)?,
                    c_proj: conv1d(w, &format!("{p}.mlp.c_proj"), inner, d)?,
                    activation,
                },
            });
        }
        let ln_f = layer_norm(w, &format!("{prefix}ln_f"), d, eps)?;
        let lm_head = Projection::tied_to(&wte);
        Ok(Self {
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
            virtual_tokens: VirtualTokens::default(),
        })
    }

    /// Tensors a checkpoint may hold that this model does not need.
    pub fn is_ignorable_tensor(name: &str) -> bool {
        // Older checkpoints store the causal mask as buffers; the head is tied to `wte`.
        name.ends_with(".attn.bias")
            || name.ends_with(".attn.masked_bias")
            || name == "lm_head.weight"
    }
}

/// Every projection of a GPT-2 with its Hugging Face path; `mut` as second argument lists
/// them mutably (one list for both, so they cannot drift apart).
macro_rules! gpt2_projections {
    ($model:expr $(, $m:tt)?) => {{
        let mut out = Vec::new();
        for (i, b) in (&$($m)? $model.h).into_iter().enumerate() {
            let p = format!("transformer.h.{i}");
            let (a, f) = (&$($m)? b.attn, &$($m)? b.mlp);
            out.push((format!("{p}.attn.c_attn"), &$($m)? a.c_attn));
            out.push((format!("{p}.attn.c_proj"), &$($m)? a.c_proj));
            out.push((format!("{p}.mlp.c_fc"), &$($m)? f.c_fc));
            out.push((format!("{p}.mlp.c_proj"), &$($m)? f.c_proj));
        }
        out.push(("lm_head".to_string(), &$($m)? $model.lm_head));
        out
    }};
}

impl ProjectionHost for Gpt2 {
    fn projections(&self) -> Vec<(String, &Projection)> {
        gpt2_projections!(self)
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        gpt2_projections!(self, mut)
    }

    fn geometry(&self) -> ModelGeometry {
        let [vocab_size, hidden_size] = self.wte.dims();
        let num_heads = self.h.first().map_or(1, |b| b.attn.num_heads);
        ModelGeometry {
            model_type: "gpt2".into(),
            num_layers: self.h.len(),
            hidden_size,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: hidden_size / num_heads,
            vocab_size,
        }
    }

    fn virtual_tokens(&self) -> &VirtualTokens {
        &self.virtual_tokens
    }

    fn virtual_tokens_mut(&mut self) -> &mut VirtualTokens {
        &mut self.virtual_tokens
    }

    fn embed_ids(&self, ids: &[u32]) -> Tensor<2> {
        crate::model::embed_rows(&self.wte, ids)
    }
}

/// A transformers `Conv1D` module: weight stored `[in, out]`, always with a bias.
fn conv1d(w: &mut WeightLoader, path: &str, d_in: usize, d_out: usize) -> Result<Projection> {
    Ok(Projection::new(
        w.matrix(&format!("{path}.weight"), d_in, d_out)?,
        Some(w.vector(&format!("{path}.bias"), d_out)?),
        WeightLayout::Conv1D,
    ))
}

fn layer_norm(w: &mut WeightLoader, path: &str, d: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: w.vector(&format!("{path}.weight"), d)?,
        bias: w.vector(&format!("{path}.bias"), d)?,
        eps,
    })
}
