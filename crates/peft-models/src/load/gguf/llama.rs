//! A LLaMA-architecture GGUF seen as a Hugging Face checkpoint: metadata → `LlamaConfig`,
//! llama.cpp tensor names → transformers names, and llama.cpp's q/k row permutation undone.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::file::GgufFile;
use crate::error::{ModelError, Result};
use crate::llama::LlamaConfig;
use crate::load::weights::{HostTensor, WeightSource};

/// GGUF architectures this crate loads.
const SUPPORTED_ARCHITECTURES: &str = "llama";

/// Reads the model configuration from `general.architecture` and `llama.*` metadata.
pub fn config(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = meta_str(file, "general.architecture")?;
    if arch != "llama" {
        return Err(ModelError::UnknownModelType {
            path: file.path().to_path_buf(),
            model_type: arch.to_string(),
            supported: SUPPORTED_ARCHITECTURES,
        });
    }
    let int = |key: &str| meta_u64(file, &format!("llama.{key}"));
    let hidden = int("embedding_length")?;
    let heads = int("attention.head_count")?;
    let mut c = Map::new();
    c.insert("model_type".into(), json!("llama"));
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
    let optional = |key: &str| file.metadata.get(&format!("llama.{key}"));
    if let Some(kv) = optional("attention.head_count_kv").and_then(|v| v.as_u64()) {
        c.insert("num_key_value_heads".into(), json!(kv));
    }
    // `attention.key_length` is the head width when it is not hidden / heads.
    if let Some(head_dim) = optional("attention.key_length").and_then(|v| v.as_u64()) {
        c.insert("head_dim".into(), json!(head_dim));
    }
    if let Some(eps) = optional("attention.layer_norm_rms_epsilon").and_then(|v| v.as_f64()) {
        c.insert("rms_norm_eps".into(), json!(eps));
    }
    if let Some(theta) = optional("rope.freq_base").and_then(|v| v.as_f64()) {
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
                return Err(config_error(
                    file,
                    "llama.rope.scaling.type",
                    format!("{other:?} is not supported; expected none or linear"),
                ))
            }
        }
    }
    if file.tensors.contains_key("rope_freqs.weight") {
        return Err(config_error(
            file,
            "rope_freqs.weight",
            "per-frequency RoPE factors (Llama 3.1 scaling) are not supported from GGUF; load the Hugging Face folder instead".into(),
        ));
    }
    let vocab = match optional("vocab_size").and_then(|v| v.as_u64()) {
        Some(v) => v,
        None => file
            .tensors
            .get("token_embd.weight")
            .map(|t| t.shape[0] as u64)
            .ok_or_else(|| missing_tensor(file, "token_embd.weight"))?,
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
    let config: LlamaConfig = serde_json::from_value(Value::Object(c))
        .map_err(|e| config_error(file, "llama.*", format!("unusable model metadata: {e}")))?;
    config
        .validate()
        .map_err(|(key, message)| config_error(file, key, message))?;
    Ok(config)
}

/// Which GGUF tensor holds a transformers tensor, and whether its rows are permuted.
#[derive(Debug, Clone)]
struct Mapped {
    gguf_name: String,
    /// Heads whose rows llama.cpp's converter interleaved for its RoPE kernel.
    permuted_heads: Option<usize>,
}

/// The tensors of a LLaMA GGUF under their transformers names.
pub struct GgufWeights {
    file: GgufFile,
    by_hf_name: BTreeMap<String, Mapped>,
}

impl GgufWeights {
    /// Maps every tensor of `file`; a tensor with no transformers counterpart keeps its GGUF
    /// name, so the loader reports it as unexpected.
    pub fn new(file: GgufFile, config: &LlamaConfig) -> Self {
        let (heads, kv_heads) = (config.num_attention_heads, config.kv_heads());
        let by_hf_name = file
            .tensors
            .keys()
            .map(|name| {
                let (hf, permuted_heads) = match hf_name(name) {
                    Some((hf, Permutation::Heads)) => (hf, Some(heads)),
                    Some((hf, Permutation::KvHeads)) => (hf, Some(kv_heads)),
                    Some((hf, Permutation::None)) => (hf, None),
                    None => (name.clone(), None),
                };
                let mapped = Mapped {
                    gguf_name: name.clone(),
                    permuted_heads,
                };
                (hf, mapped)
            })
            .collect();
        Self { file, by_hf_name }
    }

    /// The underlying file (for its tokenizer metadata).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

enum Permutation {
    None,
    Heads,
    KvHeads,
}

/// llama.cpp's name for each transformers LLaMA tensor (`convert_hf_to_gguf.py`'s table).
fn hf_name(gguf: &str) -> Option<(String, Permutation)> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.to_string(), Permutation::None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tensor) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = tensor.rsplit_once('.')?;
    let (hf_module, permutation) = match module {
        "attn_norm" => ("input_layernorm", Permutation::None),
        "ffn_norm" => ("post_attention_layernorm", Permutation::None),
        "attn_q" => ("self_attn.q_proj", Permutation::Heads),
        "attn_k" => ("self_attn.k_proj", Permutation::KvHeads),
        "attn_v" => ("self_attn.v_proj", Permutation::None),
        "attn_output" => ("self_attn.o_proj", Permutation::None),
        "ffn_gate" => ("mlp.gate_proj", Permutation::None),
        "ffn_up" => ("mlp.up_proj", Permutation::None),
        "ffn_down" => ("mlp.down_proj", Permutation::None),
        _ => return None,
    };
    Some((
        format!("model.layers.{layer}.{hf_module}.{suffix}"),
        permutation,
    ))
}

/// Undoes `convert_hf_to_gguf.py`'s `permute`: within each head, llama.cpp stores row
/// `2j + i` what transformers stores at row `i * head_dim/2 + j` (i in {0, 1}).
fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf_row = h * head_dim + i * half + j;
                let gguf_row = h * head_dim + 2 * j + i;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    out
}

impl WeightSource for GgufWeights {
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    fn names(&self) -> Vec<String> {
        self.by_hf_name.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let mapped = self.by_hf_name.get(name)?;
        Some(self.file.tensors[&mapped.gguf_name].shape.clone())
    }

    fn stored_bytes(&self, name: &str) -> u64 {
        self.by_hf_name
            .get(name)
            .map_or(0, |m| self.file.tensors[&m.gguf_name].len as u64)
    }

    fn read_f32(&self, name: &str) -> Result<HostTensor> {
        let mapped = self
            .by_hf_name
            .get(name)
            .ok_or_else(|| missing_tensor(&self.file, name))?;
        let entry = &self.file.tensors[&mapped.gguf_name];
        let mut data = self.file.read_f32(&mapped.gguf_name)?;
        if let Some(heads) = mapped.permuted_heads {
            let rows = entry.shape[0];
            let cols = entry.numel() / rows.max(1);
            if heads == 0 || rows % (2 * heads) != 0 {
                return Err(ModelError::BadWeightsFile {
                    path: self.file.path().to_path_buf(),
                    message: format!(
                        "tensor {:?} has {rows} rows, not a whole number of {heads} heads with an even width",
                        mapped.gguf_name
                    ),
                });
            }
            data = unpermute_rows(&data, rows, cols, heads);
        }
        Ok(HostTensor {
            shape: entry.shape.clone(),
            data,
        })
    }
}

fn missing_tensor(file: &GgufFile, name: &str) -> ModelError {
    ModelError::MissingTensor {
        name: name.to_string(),
        source_desc: file.path().display().to_string(),
    }
}

pub(super) fn config_error(file: &GgufFile, key: &str, message: String) -> ModelError {
    ModelError::ConfigValue {
        path: file.path().to_path_buf(),
        key: key.to_string(),
        message,
    }
}

fn meta_str<'a>(file: &'a GgufFile, key: &str) -> Result<&'a str> {
    file.metadata
        .get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| config_error(file, key, "missing or not a string".into()))
}

fn meta_u64(file: &GgufFile, key: &str) -> Result<u64> {
    file.metadata
        .get(key)
        .and_then(|v| v.as_u64())
        .ok_or_else(|| config_error(file, key, "missing or not a non-negative integer".into()))
}

#[cfg(test)]
mod tests {
    use super::unpermute_rows;

    /// `convert_hf_to_gguf.py`'s `permute`, written with its reshapes spelled out:
    /// `w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = Vec::with_capacity(w.len());
        for h in 0..heads {
            for j in 0..half {
                for i in 0..2 {
                    let src = (h * 2 + i) * half + j;
                    out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (rows, cols, heads) = (12, 3, 3);
        let w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let permuted = permute(&w, rows, cols, heads);
        assert_ne!(permuted, w);
        assert_eq!(unpermute_rows(&permuted, rows, cols, heads), w);
    }
}
