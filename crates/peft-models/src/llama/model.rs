//! The LLaMA forward pass, readable top to bottom, and its construction from a checkpoint. The
//! modules mirror transformers' `LlamaForCausalLM` (`model.layers.N.self_attn.q_proj`, ...):
//! each field is named as the Hugging Face module it holds, and built from the scope of that
//! name. The family's switches (Qwen2's biases, Qwen3's q/k norms, Mistral's window, Gemma's
//! norms, embedding scale and activation) come from the config.

use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor};
use peft_core::{ModelAdapters, ModelGeometry, Projection};

use super::config::LlamaConfig;
use crate::arch::{config_error, Architecture};
use crate::error::Result;
use crate::nn::activation::Activation;
use crate::nn::attention::{attention_mask, scaled_dot_product, KvCache};
use crate::nn::embedding::Embedding;
use crate::nn::norm::RmsNorm;
use crate::nn::projections::{has_projections, has_projections_enum};
use crate::nn::rope::{apply_rotary, RotaryEmbedding};
use crate::nn::virtual_input::{prepare, Prepared};
use crate::weights::Weights;

/// The query, key and value projections of an attention block.
#[derive(Module, Debug)]
// One per layer, never moved in a hot path: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum QkvProjections {
    /// `q_proj`, `k_proj`, `v_proj` (LLaMA and most of the family).
    Separate(SeparateQkv),
    /// One `qkv_proj` whose output is the queries, then the keys, then the values (Phi-3).
    Fused(Projection),
}

/// Three projections, one each for queries, keys and values.
#[derive(Module, Debug)]
pub struct SeparateQkv {
    /// Query projection.
    pub q_proj: Projection,
    /// Key projection.
    pub k_proj: Projection,
    /// Value projection.
    pub v_proj: Projection,
}

has_projections!(SeparateQkv: q_proj, k_proj, v_proj);

has_projections_enum!(QkvProjections: Separate, Fused);

impl QkvProjections {
    /// Queries, keys and values `[b, s, width]` of `x`, `q_width` and `kv_width` wide.
    fn forward(
        &self,
        x: Tensor<3>,
        q_width: usize,
        kv_width: usize,
    ) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        match self {
            Self::Separate(p) => (
                p.q_proj.forward(x.clone()),
                p.k_proj.forward(x.clone()),
                p.v_proj.forward(x),
            ),
            Self::Fused(qkv) => {
                let all = qkv.forward(x);
                (
                    all.clone().narrow(2, 0, q_width),
                    all.clone().narrow(2, q_width, kv_width),
                    all.narrow(2, q_width + kv_width, kv_width),
                )
            }
        }
    }
}

/// Self-attention with RoPE and grouped-query key/value heads.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// Query, key and value projections.
    pub qkv: QkvProjections,
    /// Output projection.
    pub o_proj: Projection,
    /// Per-head RMSNorm of the queries (Qwen3).
    pub q_norm: Option<RmsNorm>,
    /// Per-head RMSNorm of the keys (Qwen3).
    pub k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

has_projections!(LlamaAttention: qkv, o_proj);

impl LlamaAttention {
    fn load(vb: &Weights, c: &LlamaConfig) -> Result<Self> {
        let (hidden, heads, kv_heads, head_dim) = (
            c.hidden_size,
            c.num_attention_heads,
            c.kv_heads(),
            c.head_dim(),
        );
        let (bias, o_bias) = (c.qkv_bias(), c.o_bias());
        let head_norm = |name: &str| {
            c.qk_norm()
                .then(|| RmsNorm::load(&vb.pp(name), head_dim, c.rms_norm_eps, c.norm_offset()))
                .transpose()
        };
        let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
        let qkv = if c.fused_projections() {
            QkvProjections::Fused(
                vb.pp("qkv_proj")
                    .linear(hidden, q_width + 2 * kv_width, bias)?,
            )
        } else {
            QkvProjections::Separate(SeparateQkv {
                q_proj: vb.pp("q_proj").linear(hidden, q_width, bias)?,
                k_proj: vb.pp("k_proj").linear(hidden, kv_width, bias)?,
                v_proj: vb.pp("v_proj").linear(hidden, kv_width, bias)?,
            })
        };
        Ok(Self {
            qkv,
            o_proj: vb.pp("o_proj").linear(heads * head_dim, hidden, o_bias)?,
            q_norm: head_norm("q_norm")?,
            k_norm: head_norm("k_norm")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        rope: &(Tensor<4>, Tensor<4>),
        mask: &Tensor<4, Bool>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let heads = |t: Tensor<3>, n: usize, norm: Option<&RmsNorm>| {
            let t = t.reshape([b, s, n, self.head_dim]);
            match norm {
                Some(norm) => norm.forward(t),
                None => t,
            }
            .swap_dims(1, 2)
        };
        let (q_width, kv_width) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let (q, k, v) = self.qkv.forward(x, q_width, kv_width);
        let q = heads(q, self.num_heads, self.q_norm.as_ref());
        let k = heads(k, self.num_kv_heads, self.k_norm.as_ref());
        let v = heads(v, self.num_kv_heads, None);
        let (cos, sin) = rope;
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = scaled_dot_product(q, k, v, mask, scale);
        let out = out
            .swap_dims(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}

/// The gate and up projections of a gated feed-forward.
#[derive(Module, Debug)]
// One per layer, never moved in a hot path: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum GateUpProjections {
    /// `gate_proj` and `up_proj` (LLaMA and most of the family).
    Separate(SeparateGateUp),
    /// One `gate_up_proj` whose output is the gate, then the up half (Phi-3).
    Fused(Projection),
}

/// Two projections, the gate and the up one.
#[derive(Module, Debug)]
pub struct SeparateGateUp {
    /// Gate projection.
    pub gate_proj: Projection,
    /// Up projection.
    pub up_proj: Projection,
}

has_projections!(SeparateGateUp: gate_proj, up_proj);

has_projections_enum!(GateUpProjections: Separate, Fused);

impl GateUpProjections {
    /// The gate and up outputs `[b, s, ffn]` of `x`.
    fn forward(&self, x: Tensor<3>, ffn: usize) -> (Tensor<3>, Tensor<3>) {
        match self {
            Self::Separate(p) => (p.gate_proj.forward(x.clone()), p.up_proj.forward(x)),
            Self::Fused(gate_up) => {
                let both = gate_up.forward(x);
                (both.clone().narrow(2, 0, ffn), both.narrow(2, ffn, ffn))
            }
        }
    }
}

/// Gated feed-forward: `down(act(gate(x)) * up(x))` (SwiGLU with silu; Gemma's GeGLU).
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// Gate and up projections.
    pub gate_up: GateUpProjections,
    /// Down projection.
    pub down_proj: Projection,
    #[module(skip)]
    activation: Activation,
    ffn: usize,
}

has_projections!(LlamaMlp: gate_up, down_proj);

impl LlamaMlp {
    fn load(vb: &Weights, c: &LlamaConfig) -> Result<Self> {
        let (hidden, ffn, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        let activation = c
            .activation()
            .map_err(|(key, message)| config_error("config.json", key, message))?;
        let gate_up = if c.fused_projections() {
            GateUpProjections::Fused(vb.pp("gate_up_proj").linear(hidden, 2 * ffn, bias)?)
        } else {
            GateUpProjections::Separate(SeparateGateUp {
                gate_proj: vb.pp("gate_proj").linear(hidden, ffn, bias)?,
                up_proj: vb.pp("up_proj").linear(hidden, ffn, bias)?,
            })
        };
        Ok(Self {
            gate_up,
            down_proj: vb.pp("down_proj").linear(ffn, hidden, bias)?,
            activation,
            ffn,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = self.gate_up.forward(x, self.ffn);
        self.down_proj.forward(self.activation.gated(gate, up))
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

has_projections!(LlamaLayer: self_attn, mlp);

impl LlamaLayer {
    fn load(vb: &Weights, c: &LlamaConfig) -> Result<Self> {
        let norm = |name: &str| {
            RmsNorm::load(&vb.pp(name), c.hidden_size, c.rms_norm_eps, c.norm_offset())
        };
        Ok(Self {
            self_attn: LlamaAttention::load(&vb.pp("self_attn"), c)?,
            mlp: LlamaMlp::load(&vb.pp("mlp"), c)?,
            input_layernorm: norm("input_layernorm")?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
        })
    }
}

/// The decoder (transformers' `LlamaModel`).
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<LlamaLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Rotary position embedding (a constant, not a parameter).
    pub rotary_emb: RotaryEmbedding,
    /// `max_position_embeddings`: RoPE sets no hard limit, but generation stops here.
    pub context_length: usize,
    /// What the input embeddings are multiplied by (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f64>,
    /// The sliding attention window (Mistral, Phi-3).
    pub window: Option<usize>,
}

has_projections!(LlamaModel: layers);

/// A LLaMA-family causal language model (transformers' `LlamaForCausalLM`).
#[derive(Module, Debug)]
pub struct Llama {
    /// The decoder.
    pub model: LlamaModel,
    /// Output projection to the vocabulary (a copy of the embedding, same id, when tied).
    pub lm_head: Projection,
    /// Model-wide adapters (prefix and prompt tuning).
    pub adapters: ModelAdapters,
    /// transformers' `model_type` of its family (which picks adapters' default targets).
    #[module(skip)]
    model_type: &'static str,
}

has_projections!(Llama: model, lm_head);

impl Llama {
    /// Builds the model from the checkpoint's top scope `root`.
    pub fn load(c: &LlamaConfig, root: &Weights) -> Result<Self> {
        let vb = root.pp("model");
        let embed = vb.pp("embed_tokens");
        let (embed_tokens, tied_head) = match c.tied() {
            true => {
                let head = root.pp("lm_head");
                let (embedding, head) =
                    Embedding::load_tied(&embed, head.path(), c.vocab_size, c.hidden_size)?;
                (embedding, Some(head))
            }
            false => (Embedding::load(&embed, c.vocab_size, c.hidden_size)?, None),
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| LlamaLayer::load(&vb.pp("layers").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(
            &vb.pp("norm"),
            c.hidden_size,
            c.rms_norm_eps,
            c.norm_offset(),
        )?;
        let lm_head = match tied_head {
            Some(head) => head,
            None => root
                .pp("lm_head")
                .linear(c.hidden_size, c.vocab_size, false)?,
        };
        let rope_kind = c
            .rope_kind()
            .map_err(|(key, message)| config_error("config.json", key, message))?;
        let rotary_emb = RotaryEmbedding::new(
            c.head_dim(),
            c.rope_theta(),
            &rope_kind,
            &embed_tokens.device(),
        );
        Ok(Self {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm,
                rotary_emb,
                context_length: c.max_position_embeddings,
                embed_scale: c.embed_scale(),
                window: c.window(),
            },
            lm_head,
            adapters: ModelAdapters::default(),
            model_type: c.family.model_type(),
        })
    }
}

/// What every LLaMA layer reads beside its input.
pub struct LlamaLayerInputs {
    /// RoPE's cosines and sines at the inputs' positions.
    rope: (Tensor<4>, Tensor<4>),
    /// Which keys each query may see.
    mask: Tensor<4, Bool>,
}

impl Architecture for Llama {
    type LayerInputs = LlamaLayerInputs;

    fn decoder_input(
        &self,
        x: Tensor<3>,
        padding_mask: Option<&Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
    ) -> (Tensor<3>, LlamaLayerInputs) {
        let m = &self.model;
        let Prepared {
            mut x,
            padding_mask,
            past,
            positions,
        } = prepare(&self.adapters, x, padding_mask, cache);
        // Gemma scales whatever embeddings reach the model, prompt tuning's virtual ones too.
        if let Some(scale) = m.embed_scale {
            x = x.mul_scalar(scale);
        }
        let [batch, seq, _] = x.dims();
        let device = x.device();
        let rope = m.rotary_emb.cos_sin(positions);
        let mask = attention_mask(batch, seq, past, padding_mask.as_ref(), m.window, &device);
        (x, LlamaLayerInputs { rope, mask })
    }

    fn decoder_layer(
        &self,
        index: usize,
        x: Tensor<3>,
        inputs: &LlamaLayerInputs,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let layer = &self.model.layers[index];
        let attn_in = layer.input_layernorm.forward(x.clone());
        let cache = cache.map(|c| (c, index));
        let x = x + layer
            .self_attn
            .forward(attn_in, &inputs.rope, &inputs.mask, cache);
        let mlp_in = layer.post_attention_layernorm.forward(x.clone());
        x + layer.mlp.forward(mlp_in)
    }

    fn final_norm(&self, x: Tensor<3>) -> Tensor<3> {
        self.model.norm.forward(x)
    }

    fn lm_head(&self) -> &Projection {
        &self.lm_head
    }

    fn token_embedding(&self) -> &Embedding {
        &self.model.embed_tokens
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn max_positions(&self) -> Option<usize> {
        None
    }

    fn geometry(&self) -> ModelGeometry {
        let [vocab_size, hidden_size] = [
            self.model.embed_tokens.rows(),
            self.model.embed_tokens.width(),
        ];
        let attn = self.model.layers.first().map(|l| &l.self_attn);
        ModelGeometry {
            model_type: self.model_type.into(),
            num_layers: self.model.layers.len(),
            hidden_size,
            num_heads: attn.map_or(0, |a| a.num_heads),
            num_kv_heads: attn.map_or(0, |a| a.num_kv_heads),
            head_dim: attn.map_or(0, |a| a.head_dim),
            vocab_size,
            context_length: self.model.context_length,
        }
    }

    fn model_adapters(&self) -> &ModelAdapters {
        &self.adapters
    }

    fn model_adapters_mut(&mut self) -> &mut ModelAdapters {
        &mut self.adapters
    }
}
