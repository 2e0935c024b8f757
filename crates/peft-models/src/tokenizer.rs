//! Tokenizers from `tokenizer.json` (through the `tokenizers` crate), their special tokens and
//! chat template from `tokenizer_config.json`, and incremental decoding for streamed output.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::hf_json::read_text;

/// A tokenizer with the special tokens and chat template that came with it.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Beginning-of-sequence token text, if the model has one.
    pub bos_token: Option<String>,
    /// End-of-sequence token text, if the model has one.
    pub eos_token: Option<String>,
    /// Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A token written either as a plain string or as an `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenText {
    Plain(String),
    Added { content: String },
}

impl TokenText {
    fn into_string(self) -> String {
        match self {
            Self::Plain(s) | Self::Added { content: s } => s,
        }
    }
}

/// `chat_template` as a single template or a list of named ones.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChatTemplates {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    bos_token: Option<TokenText>,
    #[serde(default)]
    eos_token: Option<TokenText>,
    #[serde(default)]
    chat_template: Option<ChatTemplates>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, and `tokenizer_config.json` beside it when present.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = read_text(&path, "tokenizer", "tokenizer.json in the model folder")?;
        let inner = tokenizers::Tokenizer::from_str(&text).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.exists() {
            let text = read_text(&config_path, "tokenizer config", "tokenizer_config.json")?;
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: config_path,
                source,
            })?
        } else {
            TokenizerConfig::default()
        };
        let chat_template = config.chat_template.map(|t| match t {
            ChatTemplates::One(s) => s,
            ChatTemplates::Named(list) => {
                let default = list.iter().position(|t| t.name == "default").unwrap_or(0);
                list.into_iter()
                    .nth(default)
                    .map(|t| t.template)
                    .unwrap_or_default()
            }
        });
        Ok(Self::new(
            inner,
            path,
            config.bos_token.map(TokenText::into_string),
            config.eos_token.map(TokenText::into_string),
            chat_template,
        ))
    }

    /// Wraps an already-built tokenizer (e.g. one reconstructed from GGUF metadata).
    pub fn new(
        inner: tokenizers::Tokenizer,
        path: PathBuf,
        bos_token: Option<String>,
        eos_token: Option<String>,
        chat_template: Option<String>,
    ) -> Self {
        Self {
            inner,
            path,
            bos_token,
            eos_token,
            chat_template,
        }
    }

    /// Token ids of `text`; `add_special_tokens` adds what the tokenizer's post-processor adds (e.g. BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| self.error(e))
    }

    /// Text of `ids`, leaving out special tokens when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.error(e))
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| self.error(e))
    }

    /// The id of a token given as text (e.g. `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn error(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// Turns generated ids into text chunks as they arrive, holding back bytes of a character that
/// is not complete yet (byte-level BPE splits multi-byte characters across tokens).
pub struct TokenStream<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TokenStream<'a> {
    /// A stream with nothing emitted yet.
    pub fn new(tokenizer: &'a TextTokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds `id` and returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(None);
        }
        let chunk = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(chunk))
    }
}
