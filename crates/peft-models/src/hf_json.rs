//! Reading the JSON files of a Hugging Face model folder: whole files with a "not found" that
//! says what the file is, typed values with the key at fault, and `eos_token_id`'s spellings.

use std::path::Path;

use serde::de::DeserializeOwned;

/// The widest dimension (and the most heads) a `config.json` may give: far past any model,
/// small enough that the product of two of them cannot overflow.
pub(crate) const MAX_WIDTH: usize = 1 << 24;
use crate::error::{ModelError, Result};

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
pub fn read_text(path: &Path, what: &'static str, expected: &'static str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|source| ModelError::opening(path, what, expected, source))
}

/// Deserialises `value`, read from `path`, naming the key at fault.
pub fn parse<T: DeserializeOwned>(path: &Path, value: serde_json::Value) -> Result<T> {
    peft_core::json::parse(value).map_err(|(key, message)| ModelError::ConfigValue {
        path: path.to_path_buf(),
        key,
        message,
    })
}
