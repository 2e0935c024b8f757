//! Loading a Hugging Face model folder: `config.json`, safetensors weights (single or sharded),
//! `tokenizer.json` and `generation_config.json`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::gguf::{is_gguf, load_gguf};
use super::named::{ensure_named_model, named_model};
use super::safetensors::SafetensorsWeights;
use super::weights::{WeightLoader, WeightSource};
use crate::config::{read_text, ModelConfig, TokenIds};
use crate::error::{ModelError, Result};
use crate::gpt2::Gpt2;
use crate::llama::Llama;
use crate::model::{is_ignorable_tensor, CausalLm};
use crate::tokenizer::TextTokenizer;

/// A model ready to run, with what came with it.
#[derive(Debug)]
pub struct LoadedModel {
    /// The network.
    pub model: CausalLm,
    /// Its configuration.
    pub config: ModelConfig,
    /// Its tokenizer, when the folder has one.
    pub tokenizer: Option<TextTokenizer>,
    /// Ids that end generation (`generation_config.json`, else `config.json`, else the
    /// tokenizer's EOS token).
    pub eos_token_ids: Vec<u32>,
    /// Where it was loaded from.
    pub source: PathBuf,
}

impl LoadedModel {
    /// The tokenizer, or an error saying the folder has none.
    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::MissingFile {
                what: "tokenizer",
                path: self.source.clone(),
                expected: "tokenizer.json in the model folder, or tokenizer.ggml.* metadata in the GGUF (needed to turn text into tokens)",
            })
    }
}

/// Loads a model onto `device`. `path` is a Hugging Face folder, a `.gguf` file, or the name
/// of a model in [`NAMED_MODELS`](super::NAMED_MODELS) (fetched into the cache when absent).
pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    if !path.exists() {
        if let Some(named) = path.to_str().and_then(named_model) {
            let file = ensure_named_model(named)?;
            return load_gguf(&file, device);
        }
    }
    if path.is_file() && is_gguf(path) {
        return load_gguf(path, device);
    }
    if !path.is_dir() {
        return Err(ModelError::MissingFile {
            what: "model",
            path: path.to_path_buf(),
            expected: "a Hugging Face model folder (config.json, model.safetensors), a .gguf file, or a model name (smollm2-135m-instruct)",
        });
    }
    let config = ModelConfig::from_file(&path.join("config.json"))?;
    let weights = open_weights(path)?;
    let model = build(&config, &weights, device)?;
    let tokenizer = if path.join("tokenizer.json").exists() {
        Some(TextTokenizer::from_folder(path)?)
    } else {
        None
    };
    let eos_token_ids = eos_ids(path, &config, tokenizer.as_ref())?;
    Ok(LoadedModel {
        model,
        config,
        tokenizer,
        eos_token_ids,
        source: path.to_path_buf(),
    })
}

/// Builds `config`'s architecture from `weights`, checking names and shapes and refusing
/// tensors the architecture does not use.
pub(crate) fn build(
    config: &ModelConfig,
    weights: &dyn WeightSource,
    device: &Device,
) -> Result<CausalLm> {
    let mut loader = WeightLoader::new(weights, device);
    let model = match config {
        ModelConfig::Llama(c) => CausalLm::Llama(Llama::load(c, &mut loader)?),
        ModelConfig::Gpt2(c) => CausalLm::Gpt2(Gpt2::load(c, &mut loader)?),
    };
    loader.finish(|name| is_ignorable_tensor(config, name))?;
    Ok(model)
}

/// A model of `config`'s architecture with random weights on `device`: real shapes without a
/// checkpoint, for benchmarks.
pub fn random_model(config: &ModelConfig, device: &Device) -> Result<CausalLm> {
    let mut loader = WeightLoader::random(device);
    Ok(match config {
        ModelConfig::Llama(c) => CausalLm::Llama(Llama::load(c, &mut loader)?),
        ModelConfig::Gpt2(c) => CausalLm::Gpt2(Gpt2::load(c, &mut loader)?),
    })
}

fn open_weights(dir: &Path) -> Result<SafetensorsWeights> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        SafetensorsWeights::open_file(&single)
    } else if index.exists() {
        SafetensorsWeights::open_index(&index)
    } else {
        Err(ModelError::MissingFile {
            what: "weights",
            path: single,
            expected: "model.safetensors, or model.safetensors.index.json with its shards",
        })
    }
}

fn eos_ids(
    dir: &Path,
    config: &ModelConfig,
    tokenizer: Option<&TextTokenizer>,
) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        #[derive(serde::Deserialize)]
        struct GenerationConfig {
            #[serde(default)]
            eos_token_id: TokenIds,
        }
        let text = read_text(&path, "generation config", "generation_config.json")?;
        let generation: GenerationConfig =
            serde_json::from_str(&text).map_err(|source| ModelError::Json { path, source })?;
        let ids = generation.eos_token_id.to_vec();
        if !ids.is_empty() {
            return Ok(ids);
        }
    }
    let ids = config.eos_token_ids();
    if !ids.is_empty() {
        return Ok(ids);
    }
    Ok(tokenizer
        .and_then(|t| t.eos_token.as_deref().and_then(|e| t.token_to_id(e)))
        .into_iter()
        .collect())
}
