//! A LLaMA-family GGUF seen as a Hugging Face checkpoint: `<arch>.*` metadata (`llama`,
//! `qwen2`, `qwen3`, `gemma`, `phi3`) to [`LlamaConfig`], llama.cpp's tensor names to
//! transformers'.

use serde_json::{json, Map, Value};

use super::config::{Family, LlamaConfig, DEFAULT_ROPE_THETA};
use crate::error::{ModelError, Result};
use crate::nn::rope::RopeKind;
use crate::weights::gguf::{GgufFile, HfName};

/// llama.cpp's tensor of Llama 3.1 RoPE scaling: one divisor per inverse frequency.
pub(super) const ROPE_FREQS: &str = "rope_freqs.weight";

/// The model configuration of `family` from a GGUF's `<arch>.*` metadata, `<arch>` being the
/// family's `model_type` (llama.cpp's `general.architecture`).
pub(super) fn config(file: &GgufFile, family: Family) -> Result<LlamaConfig> {
    let arch = family.model_type();
    let int = |key: &str| file.meta_u64(&format!("{arch}.{key}"));
    let hidden = int("embedding_length")?;
    let heads = int("attention.head_count")?;
    let mut c = Map::new();
    c.insert("model_type".into(), json!(arch));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(int("feed_forward_length")?),
    );
    c.insert("num_hidden_layers".into(), json!(int("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "max_position_embeddings".into(),
        json!(int("context_length")?),
    );
    let optional = |key: &str| file.metadata.get(&format!("{arch}.{key}"));
    if let Some(kv) = optional("attention.head_count_kv").and_then(|v| v.as_u64()) {
        c.insert("num_key_value_heads".into(), json!(kv));
    }
    // `attention.key_length` is the head width when it is not hidden / heads.
    let key_length = optional("attention.key_length").and_then(|v| v.as_u64());
    if let Some(head_dim) = key_length {
        c.insert("head_dim".into(), json!(head_dim));
    }
    // `rope.dimension_count` below the head width is partial RoPE, which the config check
    // refuses by name rather than rotating every dimension.
    let head_dim = key_length.unwrap_or(hidden / heads.max(1));
    if let Some(rotated) = optional("rope.dimension_count").and_then(|v| v.as_u64()) {
        if rotated != head_dim && head_dim > 0 {
            c.insert(
                "partial_rotary_factor".into(),
                json!(rotated as f64 / head_dim as f64),
            );
        }
    }
    // Phi-3's window (the families without one ignore it).
    if let Some(window) = optional("attention.sliding_window").and_then(|v| v.as_u64()) {
        c.insert("sliding_window".into(), json!(window));
    }
    if let Some(eps) = optional("attention.layer_norm_rms_epsilon").and_then(|v| v.as_f64()) {
        c.insert("rms_norm_eps".into(), json!(eps));
    }
    let theta = optional("rope.freq_base").and_then(|v| v.as_f64());
    if let Some(theta) = theta {
        c.insert("rope_theta".into(), json!(theta));
    }
    if let Some(kind) = optional("rope.scaling.type").and_then(|v| v.as_str()) {
        let factor = optional("rope.scaling.factor").and_then(|v| v.as_f64());
        match kind {
            "none" => {}
            "linear" => {
                c.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": factor}),
                );
            }
            other => {
                return Err(file.config_error(
                    &format!("{arch}.rope.scaling.type"),
                    format!("{other:?} is not supported; expected none or linear"),
                ))
            }
        }
    }
    if file.tensors.contains_key(ROPE_FREQS) {
        if c.contains_key("rope_scaling") {
            return Err(file.config_error(
                ROPE_FREQS,
                format!("per-frequency factors next to {arch}.rope.scaling.type are not supported"),
            ));
        }
        let theta = theta.unwrap_or(DEFAULT_ROPE_THETA);
        let kind =
            RopeKind::from_frequency_factors(&file.read_f32(ROPE_FREQS)?, head_dim as usize, theta)
                .ok_or_else(|| {
                    file.config_error(
                        ROPE_FREQS,
                        format!(
                            "expected {} per-frequency divisors of Llama 3.1's shape (1, then a \
                         smooth rise to one factor), as llama.cpp's converter writes them",
                            head_dim / 2
                        ),
                    )
                })?;
        if let Some(section) = kind.to_json() {
            c.insert("rope_scaling".into(), section);
        }
    }
    let vocab = match optional("vocab_size").and_then(|v| v.as_u64()) {
        Some(v) => v,
        None => file
            .tensors
            .get("token_embd.weight")
            .map(|t| t.shape[0] as u64)
            .ok_or_else(|| ModelError::MissingTensor {
                name: "token_embd.weight".into(),
                source_desc: file.path().display().to_string(),
            })?,
    };
    c.insert("vocab_size".into(), json!(vocab));
    c.insert(
        "tie_word_embeddings".into(),
        json!(!file.tensors.contains_key("output.weight")),
    );
    if let Some(eos) = file
        .metadata
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.as_u64())
    {
        c.insert("eos_token_id".into(), json!(eos));
    }
    let mut config: LlamaConfig = serde_json::from_value(Value::Object(c)).map_err(|e| {
        file.config_error(
            &format!("{arch}.*"),
            format!("unusable model metadata: {e}"),
        )
    })?;
    config.family = family;
    config
        .check()
        .map_err(|(key, message)| file.config_error(key, message))?;
    Ok(config)
}

/// The transformers name of llama.cpp's LLaMA-family tensor `gguf` (`convert_hf_to_gguf.py`'s
/// table), with the heads of the q/k rows it permuted (LLaMA only: the Qwen converters keep
/// transformers' row order).
pub(super) fn hf_name(config: &LlamaConfig, gguf: &str) -> Option<HfName> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(HfName {
            name: name.to_string(),
            permuted_heads: None,
            plus_one: gguf == "output_norm.weight" && config.family == Family::Gemma,
        });
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tensor) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = tensor.rsplit_once('.')?;
    let permuted = |heads: usize| (config.family == Family::Llama).then_some(heads);
    let (hf_module, permuted_heads) = match module {
        "attn_norm" => ("input_layernorm", None),
        "ffn_norm" => ("post_attention_layernorm", None),
        "attn_q" => ("self_attn.q_proj", permuted(config.num_attention_heads)),
        "attn_k" => ("self_attn.k_proj", permuted(config.kv_heads())),
        "attn_q_norm" => ("self_attn.q_norm", None),
        "attn_k_norm" => ("self_attn.k_norm", None),
        "attn_v" => ("self_attn.v_proj", None),
        "attn_qkv" if config.fused_projections() => ("self_attn.qkv_proj", None),
        // Phi-3's fused gate and up halves are llama.cpp's `ffn_up`.
        "ffn_up" if config.fused_projections() => ("mlp.gate_up_proj", None),
        "attn_output" => ("self_attn.o_proj", None),
        "ffn_gate" => ("mlp.gate_proj", None),
        "ffn_up" => ("mlp.up_proj", None),
        "ffn_down" => ("mlp.down_proj", None),
        _ => return None,
    };
    // llama.cpp's Gemma converter adds one to every RMSNorm gain.
    let plus_one = config.family == Family::Gemma && module.ends_with("norm");
    Some(HfName {
        name: format!("model.layers.{layer}.{hf_module}.{suffix}"),
        permuted_heads,
        plus_one,
    })
}
