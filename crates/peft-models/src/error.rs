//! Errors raised while loading or running a model; each names the file, key or tensor at fault.

use std::path::PathBuf;

/// Anything that can go wrong between a model folder on disk and logits.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model needs is not there.
    #[error("{what} not found: {path} (expected {expected})")]
    MissingFile {
        /// What the file is (e.g. "model config").
        what: &'static str,
        /// The path that was tried.
        path: PathBuf,
        /// What a valid model folder holds instead.
        expected: &'static str,
    },
    /// A stored tensor holds NaN or an infinity.
    #[error("tensor {name:?} in {source_desc} holds {value} at flat index {index}; the weights are corrupt (or were saved from a run that diverged)")]
    NonFiniteTensor {
        /// The tensor name.
        name: String,
        /// The file(s) read.
        source_desc: String,
        /// The first non-finite value.
        value: f32,
        /// Its row-major index.
        index: usize,
    },
    /// `--model` names a file that is neither a GGUF nor a model folder.
    #[error("{path} is not a model: {message}")]
    NotAModel {
        /// The path given.
        path: PathBuf,
        /// What it is and what to pass instead.
        message: String,
    },
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed or has a value of the wrong type.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        source: serde_json::Error,
    },
    /// `model_type` names an architecture this crate does not implement.
    #[error("unknown model_type {model_type:?} in {path}; supported: {supported}")]
    UnknownModelType {
        /// The config file.
        path: PathBuf,
        /// The value found.
        model_type: String,
        /// The values this crate accepts.
        supported: String,
    },
    /// A config value is missing, out of range or inconsistent with another.
    #[error("invalid config value {key} in {path}: {message}")]
    ConfigValue {
        /// The config file.
        path: PathBuf,
        /// The key at fault.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The weights lack a tensor the architecture needs.
    #[error("missing tensor {name:?} in {source_desc}")]
    MissingTensor {
        /// The tensor name, as the checkpoint would spell it.
        name: String,
        /// The file(s) searched.
        source_desc: String,
    },
    /// The weights hold tensors the architecture does not use.
    #[error("unexpected tensor {name:?} in {source_desc} (and {more} more); the checkpoint does not fit this model's config")]
    UnexpectedTensor {
        /// The first unused tensor name.
        name: String,
        /// How many other tensors were unused.
        more: usize,
        /// The file(s) read.
        source_desc: String,
    },
    /// A tensor has a different shape than the config implies.
    #[error("shape mismatch for tensor {name:?} in {source_desc}: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
        /// The file holding it.
        source_desc: String,
    },
    /// A weights file is not a readable safetensors (or GGUF) file.
    #[error("cannot read weights file {path}: {message}")]
    BadWeightsFile {
        /// The file.
        path: PathBuf,
        /// What the reader reported.
        message: String,
    },
    /// A tensor is stored in a type this crate cannot convert to floats.
    #[error("tensor {name:?} in {source_desc} has unsupported dtype {dtype}; expected one of {expected}")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
        /// The file holding it.
        source_desc: String,
        /// The types this crate reads from that kind of file.
        expected: &'static str,
    },
    /// The tokenizer file could not be loaded, or encoding failed.
    #[error("tokenizer error ({path}): {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizer library's message.
        message: String,
    },
    /// The chat template is missing or failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The compute backend reported an error (e.g. reading a result back from the device).
    #[error("backend error: {0}")]
    Backend(String),
    /// A request the model cannot serve (e.g. a sequence longer than its context).
    #[error("{0}")]
    InvalidInput(String),
}

impl ModelError {
    /// The error for a file that could not be opened: [`ModelError::MissingFile`] (naming
    /// `what` and what was `expected`) when it does not exist, else [`ModelError::Io`].
    pub(crate) fn opening(
        path: &std::path::Path,
        what: &'static str,
        expected: &'static str,
        source: std::io::Error,
    ) -> Self {
        match source.kind() {
            std::io::ErrorKind::NotFound => Self::MissingFile {
                what,
                path: path.to_path_buf(),
                expected,
            },
            _ => Self::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
