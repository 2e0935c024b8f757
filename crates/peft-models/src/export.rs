//! Writing a model back as a Hugging Face folder (e.g. after merging an adapter): tensors under
//! transformers' names and layouts, config and tokenizer files copied from the source folder.
//! The tensors are found by walking the model: its modules are named as transformers names
//! them, and each projection knows its path and layout.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use peft_core::files::write_atomic;
use peft_core::tensors::to_safetensors;
use peft_core::{HostTensor, ProjectionHost, WeightLayout};

use crate::error::{ModelError, Result};
use crate::load::LoadedModel;
use crate::registry::{CausalLm, ModelConfig};

/// Files copied unchanged from the source folder when present.
const COPIED_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// Writes `loaded` to `dir` as a Hugging Face folder that transformers and `load_model` load.
/// Adapters must have been merged and unloaded first; their effect is whatever the base
/// weights now hold. NaN or infinite weights are refused, naming the tensor, before anything
/// is written.
pub fn save_hf_folder(loaded: &LoadedModel, dir: &Path) -> Result<()> {
    save_model_folder(&loaded.model, &FolderFiles::of(loaded)?, dir)
}

/// What a model folder holds besides the weights, taken from where the model was loaded
/// from: `config.json`, and the tokenizer files copied (or, from a GGUF, written out). Read
/// once, it lets a training run write its model again and again without the source.
#[derive(Debug, Clone)]
pub struct FolderFiles {
    config: ModelConfig,
    config_json: serde_json::Value,
    /// Other files by name, with their contents.
    others: Vec<(String, Vec<u8>)>,
}

impl FolderFiles {
    /// The files of the folder or GGUF `loaded` came from.
    pub fn of(loaded: &LoadedModel) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        let mut others = Vec::new();
        if loaded.source.is_dir() {
            for name in COPIED_FILES {
                let from = loaded.source.join(name);
                if from.exists() {
                    others.push((name.to_string(), std::fs::read(&from).map_err(io(&from))?));
                }
            }
        } else if let Some(tokenizer) = &loaded.tokenizer {
            // A GGUF carries its tokenizer as metadata: write it out as transformers expects it.
            others.push(("tokenizer.json".into(), tokenizer.to_json()?.into_bytes()));
            let tokenizer_config = serde_json::json!({
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
                "chat_template": tokenizer.chat_template,
                "tokenizer_class": "PreTrainedTokenizerFast",
            });
            let text =
                serde_json::to_string_pretty(&tokenizer_config).expect("JSON value serialises");
            others.push(("tokenizer_config.json".into(), text.into_bytes()));
        }
        Ok(Self {
            config: loaded.config.clone(),
            config_json: source_config(loaded)?,
            others,
        })
    }
}

/// Writes `model` to `dir` with `files` beside its weights, as [`save_hf_folder`] does.
pub fn save_model_folder(model: &CausalLm, files: &FolderFiles, dir: &Path) -> Result<()> {
    let tensors = hf_tensors(model)?;
    check_finite(&tensors)?;
    let untied_head = tensors.contains_key(&format!("{HEAD}.weight"));
    if untied_head {
        files
            .config
            .check_untied_head()
            .map_err(ModelError::InvalidInput)?;
    }
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let bytes = to_safetensors(&tensors).map_err(|e| ModelError::Backend(e.to_string()))?;
    write(&dir.join("model.safetensors"), &bytes)?;
    let mut config = files.config_json.clone();
    if untied_head {
        config["tie_word_embeddings"] = serde_json::Value::Bool(false);
    }
    let text = serde_json::to_string_pretty(&config).expect("JSON value serialises");
    write(&dir.join("config.json"), text.as_bytes())?;
    for (name, bytes) in &files.others {
        write(&dir.join(name), bytes)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).map_err(|e| ModelError::Backend(e.to_string()))
}

/// `config.json` of the source folder, or one written from the config of a GGUF.
fn source_config(loaded: &LoadedModel) -> Result<serde_json::Value> {
    if !loaded.source.is_dir() {
        return Ok(loaded.config.to_json());
    }
    let path = loaded.source.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json { path, source })
}

/// The output head's module path (transformers' `*ForCausalLM`), written only when it no
/// longer equals the token embedding.
const HEAD: &str = "lm_head";

/// Refuses to write NaN or infinite weights, naming the first tensor that has one: a folder
/// of them would load and compute garbage without a word.
fn check_finite(tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    for (name, tensor) in tensors {
        if let Some((index, value)) = tensor.first_non_finite() {
            return Err(ModelError::InvalidInput(format!(
                "tensor {name} holds {value} at flat index {index}; nothing was written"
            )));
        }
    }
    Ok(())
}

/// Every weight under its transformers name and layout. A tensor shared with one already
/// written (a tied head) is written once, as transformers writes it.
fn hf_tensors(model: &CausalLm) -> Result<BTreeMap<String, HostTensor>> {
    let packed = model.projections().iter().any(|(_, p)| p.base.is_packed());
    if packed || model.token_embedding().dense().is_none() {
        return Err(ModelError::InvalidInput(
            "the model keeps its weights packed (loaded with --quantize); load it without \
             --quantize to save it as a model folder"
                .into(),
        ));
    }
    if let Some(adapter) = model.model_adapters().adapters.first() {
        return Err(ModelError::InvalidInput(format!(
            "adapter {:?} is still attached to the model; merge and unload it before saving",
            adapter.name
        )));
    }
    let mut walk = Walk::default();
    model.visit(&mut walk);
    let mut out = walk.tensors;
    for (path, proj) in model.projections() {
        if !proj.adapters.is_empty() || !proj.saved.is_empty() {
            return Err(ModelError::InvalidInput(format!(
                "{path} still has adapters attached; merge and unload them before saving"
            )));
        }
        // A tied head is written once, with its embedding.
        if let Some(dense) = proj.base.as_dense() {
            if !walk.seen.insert(dense.weight.id) {
                continue;
            }
        }
        let w = proj.base.weight();
        let w = match proj.layout {
            WeightLayout::Linear => w.transpose(),
            WeightLayout::Conv1D => w,
        };
        out.insert(format!("{path}.weight"), read(w)?);
        if let Some(b) = proj.base.bias() {
            out.insert(format!("{path}.bias"), read(b)?);
        }
    }
    walk.error.map_or(Ok(out), Err)
}

fn read<const D: usize>(t: Tensor<D>) -> Result<HostTensor> {
    HostTensor::read(t).map_err(|e| ModelError::Backend(e.to_string()))
}

/// Collects every parameter outside the projections under its module path.
#[derive(Default)]
struct Walk {
    path: Vec<String>,
    /// Depth of `Projection` modules around the current parameter.
    in_projection: usize,
    seen: HashSet<ParamId>,
    tensors: BTreeMap<String, HostTensor>,
    error: Option<ModelError>,
}

impl ModuleVisitor for Walk {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        // The architecture enum's variant is not a module of the checkpoint.
        if container_type.starts_with("Enum:") {
            return;
        }
        if container_type == "Struct:Projection" {
            self.in_projection += 1;
        }
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type.starts_with("Enum:") {
            return;
        }
        if container_type == "Struct:Projection" {
            self.in_projection -= 1;
        }
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.in_projection > 0 || !self.seen.insert(param.id) {
            return;
        }
        match read(param.val()) {
            Ok(t) => {
                self.tensors.insert(self.path.join("."), t);
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_weights_are_refused_by_name() {
        let tensor = |data: Vec<f32>| HostTensor {
            shape: vec![data.len()],
            data,
        };
        let mut tensors = BTreeMap::new();
        tensors.insert("a.weight".to_string(), tensor(vec![1.0, 2.0]));
        assert!(check_finite(&tensors).is_ok());
        tensors.insert("b.weight".to_string(), tensor(vec![0.5, f32::INFINITY]));
        let err = check_finite(&tensors).unwrap_err().to_string();
        assert!(err.contains("b.weight") && err.contains("inf"), "{err}");
    }
}
