//! The LLaMA forward pass, readable top to bottom, and its construction from a checkpoint.

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::module::embedding;
use burn::tensor::{Bool, Int, Tensor};
use peft_core::{ModelGeometry, Projection, ProjectionHost, VirtualTokens, WeightLayout};

use super::LlamaConfig;
use crate::attention::{
    apply_rotary, attention_mask, repeat_kv, scaled_dot_product, KvCache, RotaryEmbedding,
};
use crate::error::{ModelError, Result};
use crate::load::WeightLoader;
use crate::norm::RmsNorm;
use crate::virtual_input::{cache_for_prefix, prepare, Prepared};

/// Self-attention with RoPE and grouped-query key/value heads.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// Query projection.
    pub q_proj: Projection,
    /// Key projection.
    pub k_proj: Projection,
    /// Value projection.
    pub v_proj: Projection,
    /// Output projection.
    pub o_proj: Projection,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl LlamaAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &(Tensor<4>, Tensor<4>),
        mask: &Tensor<4, Bool>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, self.head_dim]).swap_dims(1, 2);
        let q = heads(self.q_proj.forward(x.clone()), self.num_heads);
        let k = heads(self.k_proj.forward(x.clone()), self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let (cos, sin) = rope;
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let n_rep = self.num_heads / self.num_kv_heads;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = scaled_dot_product(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask, scale);
        let out = out
            .swap_dims(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// Gate projection.
    pub gate_proj: Projection,
    /// Up projection.
    pub up_proj: Projection,
    /// Down projection.
    pub down_proj: Projection,
}

impl LlamaMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gated = silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x);
        self.down_proj.forward(gated)
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct LlamaLayer {
    /// Attention block.
    pub self_attn: LlamaAttention,
    /// Feed-forward block.
    pub mlp: LlamaMlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the feed-forward.
    pub post_attention_layernorm: RmsNorm,
}

/// A LLaMA-family causal language model.
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<2>>,
    /// Decoder layers.
    pub layers: Vec<LlamaLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output projection to the vocabulary (shares `embed_tokens` when tied).
    pub lm_head: Projection,
    /// Rotary position embedding.
    pub rope: RotaryEmbedding,
    /// Prompt-learning adapters (prefix and prompt tuning).
    pub virtual_tokens: VirtualTokens,
}

impl Llama {
    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]`. `padding_mask`
    /// (`[batch, past + seq]`, 1 = token) masks padded keys; with `cache`, only the new tokens
    /// are given and their keys/values are appended to it. An active prompt-tuning adapter
    /// puts its virtual tokens first, and their logits come first.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let x = embedding(self.embed_tokens.val(), input_ids);
        self.forward_embeddings(x, padding_mask, cache)
    }

    /// [`Self::forward`] from input embeddings `[batch, seq, hidden]`.
    pub fn forward_embeddings(
        &self,
        x: Tensor<3>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let mut own_cache = None;
        let mut cache = cache_for_prefix(
            &self.virtual_tokens,
            cache,
            &mut own_cache,
            self.layers.len(),
        );
        let Prepared {
            mut x,
            padding_mask,
            past,
        } = prepare(&self.virtual_tokens, x, padding_mask, cache.as_deref_mut());
        let [batch, seq, _] = x.dims();
        let device = x.device();
        let rope = self.rope.cos_sin(past, seq);
        let mask = attention_mask(batch, seq, past, padding_mask.as_ref(), &device);
        for (i, layer) in self.layers.iter().enumerate() {
            let attn_in = layer.input_layernorm.forward(x.clone());
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = x + layer.self_attn.forward(attn_in, &rope, &mask, layer_cache);
            let mlp_in = layer.post_attention_layernorm.forward(x.clone());
            x = x + layer.mlp.forward(mlp_in);
        }
        self.lm_head.forward(self.norm.forward(x))
    }

    /// Builds the model from checkpoint tensors named as transformers' `LlamaForCausalLM` names them.
    pub fn load(config: &LlamaConfig, w: &mut WeightLoader) -> Result<Self> {
        let hidden = config.hidden_size;
        let (heads, kv_heads, head_dim) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.head_dim(),
        );
        let eps = config.rms_norm_eps;
        let embed_tokens = w.matrix("model.embed_tokens.weight", config.vocab_size, hidden)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attn_bias = config.attention_bias;
            let mlp_bias = config.mlp_bias;
            let ffn = config.intermediate_size;
            layers.push(LlamaLayer {
                self_attn: LlamaAttention {
                    q_proj: linear(
                        w,
                        &format!("{p}.self_attn.q_proj"),
                        hidden,
                        heads * head_dim,
                        attn_bias,
                    )?,
                    k_proj: linear(
                        w,
                        &format!("{p}.self_attn.k_proj"),
                        hidden,
                        kv_heads * head_dim,
                        attn_bias,
                    )?,
                    v_proj: linear(
                        w,
                        &format!("{p}.self_attn.v_proj"),
                        hidden,
                        kv_heads * head_dim,
                        attn_bias,
                    )?,
                    o_proj: linear(
                        w,
                        &format!("{p}.self_attn.o_proj"),
                        heads * head_dim,
                        hidden,
                        attn_bias,
                    )?,
                    num_heads: heads,
                    num_kv_heads: kv_heads,
                    head_dim,
                },
                mlp: LlamaMlp {
                    gate_proj: linear(w, &format!("{p}.mlp.gate_proj"), hidden, ffn, mlp_bias)?,
                    up_proj: linear(w, &format!("{p}.mlp.up_proj"), hidden, ffn, mlp_bias)?,
                    down_proj: linear(w, &format!("{p}.mlp.down_proj"), ffn, hidden, mlp_bias)?,
                },
                input_layernorm: rms_norm(w, &format!("{p}.input_layernorm"), hidden, eps)?,
                post_attention_layernorm: rms_norm(
                    w,
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                    eps,
                )?,
            });
        }
        let norm = rms_norm(w, "model.norm", hidden, eps)?;
        let lm_head = if config.tie_word_embeddings {
            Projection::tied_to(&embed_tokens)
        } else {
            linear(w, "lm_head", hidden, config.vocab_size, false)?
        };
        let rope_kind = config
            .rope_kind()
            .map_err(|(key, message)| ModelError::ConfigValue {
                path: "config.json".into(),
                key: key.to_string(),
                message,
            })?;
        let rope = RotaryEmbedding::new(
            head_dim,
            config.rope_theta(),
            &rope_kind,
            &embed_tokens.device(),
        );
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            virtual_tokens: VirtualTokens::default(),
        })
    }

    /// Tensors a checkpoint may hold that this model does not need.
    pub fn is_ignorable_tensor(name: &str) -> bool {
        // Old checkpoints saved RoPE's inverse frequencies; tied checkpoints may repeat the head.
        name.ends_with(".rotary_emb.inv_freq") || name == "lm_head.weight"
    }
}

/// Every projection of a LLaMA with its Hugging Face path; `mut` as second argument lists
/// them mutably (one list for both, so they cannot drift apart).
macro_rules! llama_projections {
    ($model:expr $(, $m:tt)?) => {{
        let mut out = Vec::new();
        for (i, l) in (&$($m)? $model.layers).into_iter().enumerate() {
            let p = format!("model.layers.{i}");
            let (a, f) = (&$($m)? l.self_attn, &$($m)? l.mlp);
            out.push((format!("{p}.self_attn.q_proj"), &$($m)? a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &$($m)? a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &$($m)? a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &$($m)? a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &$($m)? f.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &$($m)? f.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &$($m)? f.down_proj));
        }
        out.push(("lm_head".to_string(), &$($m)? $model.lm_head));
        out
    }};
}

impl ProjectionHost for Llama {
    fn projections(&self) -> Vec<(String, &Projection)> {
        llama_projections!(self)
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        llama_projections!(self, mut)
    }

    fn geometry(&self) -> ModelGeometry {
        let [vocab_size, hidden_size] = self.embed_tokens.dims();
        let attn = self.layers.first().map(|l| &l.self_attn);
        ModelGeometry {
            model_type: "llama".into(),
            num_layers: self.layers.len(),
            hidden_size,
            num_heads: attn.map_or(0, |a| a.num_heads),
            num_kv_heads: attn.map_or(0, |a| a.num_kv_heads),
            head_dim: attn.map_or(0, |a| a.head_dim),
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
        crate::model::embed_rows(&self.embed_tokens, ids)
    }
}

/// An `nn.Linear` module at HF path `path`.
fn linear(
    w: &mut WeightLoader,
    path: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
) -> Result<Projection> {
    let weight = w.linear_weight(&format!("{path}.weight"), d_in, d_out)?;
    let bias = if bias {
        Some(w.vector(&format!("{path}.bias"), d_out)?)
    } else {
        None
    };
    Ok(Projection::new(weight, bias, WeightLayout::Linear))
}

fn rms_norm(w: &mut WeightLoader, path: &str, hidden: usize, eps: f64) -> Result<RmsNorm> {
    Ok(RmsNorm {
        weight: w.vector(&format!("{path}.weight"), hidden)?,
        eps,
    })
}
