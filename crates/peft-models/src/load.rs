//! Loading a model: a Hugging Face folder (`config.json`, safetensors weights single or
//! sharded, `tokenizer.json`, `generation_config.json`) or a GGUF file (config, weights and
//! tokenizer from its metadata).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use peft_core::PackFormat;

use crate::error::{ModelError, Result};
use crate::hf_json::{read_text, TokenIds};
use crate::registry::{CausalLm, ModelConfig};
use crate::tokenizer::TextTokenizer;
use crate::weights::gguf::{self, GgufFile};
use crate::weights::{SafetensorsWeights, WeightLoader, WeightSource};

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

/// Loads a model onto `device`. `path` is a Hugging Face folder or a `.gguf` file.
pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_model_quantized(path, device, None)
}

/// [`load_model`], keeping the linear projections' weights packed in blocks when `quantize`
/// is set (QLoRA's base): a GGUF's Q4_0, Q4_1 and Q8_0 blocks as stored, any other weight
/// quantized to `quantize` as it loads. Embeddings, norms and a head tied to the embedding
/// stay in f32.
pub fn load_model_quantized(
    path: &Path,
    device: &Device,
    quantize: Option<PackFormat>,
) -> Result<LoadedModel> {
    if path.is_file() {
        let named_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        // A `.gguf` that is truncated or has a wrong magic gets the GGUF reader's own message.
        if named_gguf || gguf::is_gguf(path) {
            return load_gguf(path, device, quantize);
        }
        return Err(not_a_model(path));
    }
    if !path.is_dir() {
        return Err(ModelError::MissingFile {
            what: "model",
            path: path.to_path_buf(),
            expected:
                "a Hugging Face model folder (config.json, model.safetensors) or a .gguf file",
        });
    }
    let config = ModelConfig::from_file(&path.join("config.json"))?;
    let weights = open_weights(path)?;
    let model = build(&config, &weights, device, quantize)?;
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

/// Loads a GGUF file onto `device`: weights dequantized to f32, the tokenizer and chat
/// template from its metadata.
fn load_gguf(path: &Path, device: &Device, quantize: Option<PackFormat>) -> Result<LoadedModel> {
    let (config, weights) = ModelConfig::from_gguf(GgufFile::open(path)?)?;
    let tokenizer = gguf::tokenizer(weights.file())?;
    let model = build(&config, &weights, device, quantize)?;
    let eos_token_ids = config.eos_token_ids();
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
fn build(
    config: &ModelConfig,
    weights: &dyn WeightSource,
    device: &Device,
    quantize: Option<PackFormat>,
) -> Result<CausalLm> {
    let loader = WeightLoader::new(weights, device).with_quantize(quantize);
    let model = config.build(&loader.root())?;
    loader.finish(|name| config.is_ignorable_tensor(name))?;
    Ok(model)
}

/// A model of `config`'s architecture with random weights on `device`: real shapes without a
/// checkpoint, for benchmarks; linear weights packed when `quantize` is set.
pub fn random_model(
    config: &ModelConfig,
    device: &Device,
    quantize: Option<PackFormat>,
) -> Result<CausalLm> {
    config.build(&WeightLoader::random(device).with_quantize(quantize).root())
}

/// The error for a `--model` that is a file but not a GGUF: a file from a model folder names
/// the folder to pass instead.
fn not_a_model(path: &Path) -> ModelError {
    let folder = path
        .parent()
        .filter(|dir| dir.join("config.json").is_file());
    let message = match folder {
        Some(dir) => format!(
            "it is a file of a Hugging Face model folder; pass the folder itself: {}",
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
            .display()
        ),
        None => "it is a file that does not start with the GGUF magic bytes; expected a Hugging \
                 Face model folder (config.json, model.safetensors) or a .gguf file"
            .into(),
    };
    ModelError::NotAModel {
        path: path.to_path_buf(),
        message,
    }
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
