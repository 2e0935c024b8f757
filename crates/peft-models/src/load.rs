//! Loading a model: a Hugging Face folder (`config.json`, safetensors weights single or
//! sharded, `tokenizer.json`, `generation_config.json`) or a GGUF file (config, weights and
//! tokenizer from its metadata).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, FloatDType, Tensor};
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

/// How the frozen base is held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BaseFormat {
    /// Linear weights packed in blocks (QLoRA's base): a GGUF's Q4_0, Q4_1 and Q8_0 blocks as
    /// stored, any other weight quantized to this format as it loads; a tied embedding and
    /// head share one packed table. Norms (and an untied embedding) stay f32.
    pub quantize: Option<PackFormat>,
    /// The float type of every base weight (and so of the activations); `None` keeps the
    /// device's (f32). Adapters attached later are f32 whatever this is.
    pub dtype: Option<FloatDType>,
}

impl BaseFormat {
    /// Refuses what `device` cannot compute, and packed blocks in anything but f32.
    fn check(&self, device: &Device) -> Result<()> {
        let Some(dtype) = self.dtype.filter(|d| *d != FloatDType::F32) else {
            return Ok(());
        };
        if self.quantize.is_some() {
            return Err(ModelError::InvalidInput(format!(
                "--quantize expands its blocks to f32; it cannot be combined with --dtype {}",
                dtype_name(dtype)
            )));
        }
        if !device.supports_dtype(dtype) {
            return Err(ModelError::InvalidInput(format!(
                "the {device:?} device does not compute in {}; use --dtype f32 there (or the \
                 flex or cuda backend)",
                dtype_name(dtype)
            )));
        }
        Ok(())
    }
}

/// `bf16`, `f16`, `f32`: as the command line spells it.
fn dtype_name(dtype: FloatDType) -> String {
    format!("{dtype:?}").to_lowercase()
}

/// Loads a model onto `device`. `path` is a Hugging Face folder or a `.gguf` file.
pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_model_as(path, device, BaseFormat::default())
}

/// [`load_model`], its frozen weights held as `format` says.
pub fn load_model_as(path: &Path, device: &Device, format: BaseFormat) -> Result<LoadedModel> {
    format.check(device)?;
    if path.is_file() {
        let named_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        // A `.gguf` that is truncated or has a wrong magic gets the GGUF reader's own message.
        if named_gguf || gguf::is_gguf(path) {
            return load_gguf(path, device, format);
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
    let model = build(&config, &weights, device, format)?;
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
fn load_gguf(path: &Path, device: &Device, format: BaseFormat) -> Result<LoadedModel> {
    let (config, weights) = ModelConfig::from_gguf(GgufFile::open(path)?)?;
    let tokenizer = gguf::tokenizer(weights.file())?;
    let model = build(&config, &weights, device, format)?;
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
    format: BaseFormat,
) -> Result<CausalLm> {
    let loader = WeightLoader::new(weights, device).with_quantize(format.quantize);
    let model = config.build(&loader.root())?;
    loader.finish(|name| config.is_ignorable_tensor(name))?;
    Ok(in_dtype(model, format.dtype))
}

/// `model` with every float parameter cast to `dtype` (read in f32, held in `dtype`).
fn in_dtype(model: CausalLm, dtype: Option<FloatDType>) -> CausalLm {
    struct Cast(FloatDType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
        }
    }
    match dtype {
        Some(dtype) if dtype != FloatDType::F32 => model.map(&mut Cast(dtype)),
        _ => model,
    }
}

/// A model of `config`'s architecture with random weights on `device`: real shapes without a
/// checkpoint, for benchmarks; its frozen weights held as `format` says.
pub fn random_model(config: &ModelConfig, device: &Device, format: BaseFormat) -> Result<CausalLm> {
    format.check(device)?;
    let loader = WeightLoader::random(device).with_quantize(format.quantize);
    Ok(in_dtype(config.build(&loader.root())?, format.dtype))
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
