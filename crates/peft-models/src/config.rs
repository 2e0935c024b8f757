//! Reading a Hugging Face `config.json` and choosing the architecture from `model_type`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};
use crate::gpt2::Gpt2Config;
use crate::llama::LlamaConfig;

/// The `model_type` values this crate implements.
pub const SUPPORTED_MODEL_TYPES: &str = "llama, gpt2";

/// The configuration of one supported architecture.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per loaded model: boxing would buy nothing
pub enum ModelConfig {
    /// LLaMA family (RoPE, RMSNorm, SwiGLU, grouped-query attention).
    Llama(LlamaConfig),
    /// GPT-2 (learned positions, LayerNorm, fused qkv Conv1D).
    Gpt2(Gpt2Config),
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_text(
            path,
            "model config",
            "config.json from a Hugging Face model folder",
        )?;
        Self::from_json(&text, path)
    }

    /// Parses and validates the text of a `config.json`; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ModelError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::ConfigValue {
                path: path.to_path_buf(),
                key: "model_type".into(),
                message: format!(
                    "missing or not a string; expected one of: {SUPPORTED_MODEL_TYPES}"
                ),
            })?;
        let config = match model_type {
            "llama" => Self::Llama(parse(path, value)?),
            "gpt2" => Self::Gpt2(parse(path, value)?),
            other => {
                return Err(ModelError::UnknownModelType {
                    path: path.to_path_buf(),
                    model_type: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES,
                })
            }
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let fail = |key: &str, message: String| ModelError::ConfigValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        match self {
            Self::Llama(c) => c.validate().map_err(|(key, msg)| fail(key, msg)),
            Self::Gpt2(c) => c.validate().map_err(|(key, msg)| fail(key, msg)),
        }
    }

    /// The Hugging Face `model_type` of this config.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Llama(_) => "llama",
            Self::Gpt2(_) => "gpt2",
        }
    }

    /// Vocabulary size (rows of the embedding, columns of the logits).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(c) => c.vocab_size,
            Self::Gpt2(c) => c.vocab_size,
        }
    }

    /// End-of-sequence ids named in the config (`eos_token_id`, a number or a list).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            Self::Llama(c) => c.eos_token_id.to_vec(),
            Self::Gpt2(c) => c.eos_token_id.to_vec(),
        }
    }
}

/// `eos_token_id` as Hugging Face writes it: absent, one id, or a list.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// No id given.
    #[default]
    None,
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::None => Vec::new(),
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// Reads a whole text file, mapping "not found" to [`ModelError::MissingFile`].
pub(crate) fn read_text(path: &Path, what: &'static str, expected: &'static str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|source| ModelError::opening(path, what, expected, source))
}

fn parse<T: DeserializeOwned>(path: &Path, value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| ModelError::ConfigValue {
        path: PathBuf::from(path),
        key: field_path(&e),
        message: e.into_inner().to_string(),
    })
}

/// The key a deserialisation error is about (`rope_scaling.factor`), or `(top level)` for an
/// error about the object itself (e.g. a missing field, which the message names).
fn field_path<E>(e: &serde_path_to_error::Error<E>) -> String {
    match e.path().to_string() {
        p if p == "." => "(top level)".to_string(),
        p => p,
    }
}
