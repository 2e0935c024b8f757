//! Writing a model back as a Hugging Face folder (e.g. after merging an adapter): tensors under
//! transformers' names and layouts, config and tokenizer files copied from the source folder.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::Tensor;
use peft_core::format::{to_safetensors, write_atomic, FileTensor};
use peft_core::{Projection, WeightLayout};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::load::LoadedModel;
use crate::model::CausalLm;

/// Files copied unchanged from the source folder when present.
const COPIED_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// Writes `loaded` to `dir` as a Hugging Face folder that transformers and `load_model` load.
/// Adapters must have been merged and unloaded first; their effect is whatever the base
/// weights now hold.
pub fn save_hf_folder(loaded: &LoadedModel, dir: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let (tensors, untied_head) = hf_tensors(&loaded.model)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let bytes = to_safetensors(&tensors).map_err(|e| ModelError::Backend(e.to_string()))?;
    write(&dir.join("model.safetensors"), &bytes)?;
    let mut config = source_config(loaded)?;
    if untied_head {
        config["tie_word_embeddings"] = serde_json::Value::Bool(false);
    }
    let text = serde_json::to_string_pretty(&config).expect("JSON value serialises");
    write(&dir.join("config.json"), text.as_bytes())?;
    if loaded.source.is_dir() {
        for name in COPIED_FILES {
            let from = loaded.source.join(name);
            if from.exists() {
                let bytes = std::fs::read(&from).map_err(io(&from))?;
                write(&dir.join(name), &bytes)?;
            }
        }
    } else if let Some(tokenizer) = &loaded.tokenizer {
        // A GGUF carries its tokenizer as metadata: write it out as transformers expects it.
        write(&dir.join("tokenizer.json"), tokenizer.to_json()?.as_bytes())?;
        let tokenizer_config = serde_json::json!({
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "chat_template": tokenizer.chat_template,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        let text = serde_json::to_string_pretty(&tokenizer_config).expect("JSON value serialises");
        write(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).map_err(|e| ModelError::Backend(e.to_string()))
}

/// `config.json` of the source folder, or one written from the config of a GGUF.
fn source_config(loaded: &LoadedModel) -> Result<serde_json::Value> {
    if !loaded.source.is_dir() {
        let ModelConfig::Llama(c) = &loaded.config else {
            return Err(ModelError::InvalidInput(format!(
                "cannot write a config.json for {}: only LLaMA models load from GGUF",
                loaded.source.display()
            )));
        };
        let mut value = serde_json::to_value(c).expect("config serialises");
        value["model_type"] = "llama".into();
        value["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        return Ok(value);
    }
    let path = loaded.source.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json { path, source })
}

/// Every weight under its transformers name and layout, and whether a tied head had to be
/// written separately because it no longer equals the embedding.
fn hf_tensors(model: &CausalLm) -> Result<(BTreeMap<String, FileTensor>, bool)> {
    let mut out = Tensors::default();
    let mut untied_head = false;
    match model {
        CausalLm::Llama(m) => {
            out.param("model.embed_tokens.weight", &m.embed_tokens)?;
            for (i, l) in m.layers.iter().enumerate() {
                let p = format!("model.layers.{i}");
                let (a, f) = (&l.self_attn, &l.mlp);
                for (name, proj) in [
                    ("self_attn.q_proj", &a.q_proj),
                    ("self_attn.k_proj", &a.k_proj),
                    ("self_attn.v_proj", &a.v_proj),
                    ("self_attn.o_proj", &a.o_proj),
                    ("mlp.gate_proj", &f.gate_proj),
                    ("mlp.up_proj", &f.up_proj),
                    ("mlp.down_proj", &f.down_proj),
                ] {
                    out.projection(&format!("{p}.{name}"), proj)?;
                }
                out.param(
                    &format!("{p}.input_layernorm.weight"),
                    &l.input_layernorm.weight,
                )?;
                out.param(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &l.post_attention_layernorm.weight,
                )?;
            }
            out.param("model.norm.weight", &m.norm.weight)?;
            if m.lm_head.base.weight.id != m.embed_tokens.id {
                out.projection("lm_head", &m.lm_head)?;
                untied_head = true;
            }
        }
        CausalLm::Gpt2(m) => {
            out.param("transformer.wte.weight", &m.wte)?;
            out.param("transformer.wpe.weight", &m.wpe)?;
            for (i, b) in m.h.iter().enumerate() {
                let p = format!("transformer.h.{i}");
                out.param(&format!("{p}.ln_1.weight"), &b.ln_1.weight)?;
                out.param(&format!("{p}.ln_1.bias"), &b.ln_1.bias)?;
                out.projection(&format!("{p}.attn.c_attn"), &b.attn.c_attn)?;
                out.projection(&format!("{p}.attn.c_proj"), &b.attn.c_proj)?;
                out.param(&format!("{p}.ln_2.weight"), &b.ln_2.weight)?;
                out.param(&format!("{p}.ln_2.bias"), &b.ln_2.bias)?;
                out.projection(&format!("{p}.mlp.c_fc"), &b.mlp.c_fc)?;
                out.projection(&format!("{p}.mlp.c_proj"), &b.mlp.c_proj)?;
            }
            out.param("transformer.ln_f.weight", &m.ln_f.weight)?;
            out.param("transformer.ln_f.bias", &m.ln_f.bias)?;
            if m.lm_head.base.weight.id != m.wte.id {
                return Err(ModelError::InvalidInput(
                    "GPT-2 ties its output head to the token embedding; a merged adapter on lm_head cannot be saved"
                        .into(),
                ));
            }
        }
    }
    Ok((out.0, untied_head))
}

#[derive(Default)]
struct Tensors(BTreeMap<String, FileTensor>);

impl Tensors {
    fn param<const D: usize>(&mut self, name: &str, p: &Param<Tensor<D>>) -> Result<()> {
        self.tensor(name, p.val())
    }

    fn tensor<const D: usize>(&mut self, name: &str, t: Tensor<D>) -> Result<()> {
        let t = FileTensor::read(t).map_err(|e| ModelError::Backend(e.to_string()))?;
        self.0.insert(name.to_string(), t);
        Ok(())
    }

    fn projection(&mut self, path: &str, proj: &Projection) -> Result<()> {
        if !proj.adapters.is_empty() || !proj.saved.is_empty() {
            return Err(ModelError::InvalidInput(format!(
                "{path} still has adapters attached; merge and unload them before saving"
            )));
        }
        let w = proj.base.weight.val();
        let w = match proj.layout {
            WeightLayout::Linear => w.transpose(),
            WeightLayout::Conv1D => w,
        };
        self.tensor(&format!("{path}.weight"), w)?;
        if let Some(b) = &proj.base.bias {
            self.param(&format!("{path}.bias"), b)?;
        }
        Ok(())
    }
}
