//! Errors of adapter configuration, attachment and files; each names the field, key or file.

use std::path::PathBuf;

/// Anything that can go wrong with an adapter.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// A config value is invalid or asks for something this implementation does not do.
    #[error("adapter config field `{field}`: {message}")]
    Config {
        /// The field, as `adapter_config.json` spells it.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The targets match none of the model's modules.
    #[error("target_modules {targets} match no module of the model; its modules are: {available}")]
    NoTargetMatched {
        /// The targets as configured.
        targets: String,
        /// The model's module names, comma-separated.
        available: String,
    },
    /// A file is missing.
    #[error("{what} not found: {path}")]
    MissingFile {
        /// What the file is.
        what: &'static str,
        /// The path tried.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// A weights file is not readable safetensors.
    #[error("cannot read {path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What the reader reported.
        message: String,
    },
    /// A tensor the adapter needs is missing from its file.
    #[error("{path}: missing tensor {key:?}")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The key, as PEFT names it.
        key: String,
    },
    /// The file holds a tensor that belongs to no adapted module.
    #[error("{path}: tensor {key:?} belongs to no module this adapter targets in the model")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A tensor's shape does not fit the model.
    #[error("{path}: tensor {key:?} has shape {found:?}, but the model needs {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype other than F32, F16 or BF16.
    #[error("{path}: tensor {key:?} has dtype {dtype}; expected F32, F16 or BF16")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor of a file holds NaN or an infinity.
    #[error("{path}: tensor {key:?} holds {value} at flat index {index}; the file is corrupt (or was saved from a run that diverged)")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The first non-finite value.
        value: f32,
        /// Its row-major index.
        index: usize,
    },
    /// An adapter name that the model does not have.
    #[error("no adapter named {name:?}; the model has: {available}")]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The names present.
        available: String,
    },
    /// An adapter name already in use.
    #[error("an adapter named {0:?} is already attached; unload it first or choose another name")]
    DuplicateAdapter(String),
    /// A merge would put NaN or Inf into a weight.
    #[error(
        "merging adapter {adapter:?} into {module} gives NaN or Inf; the weight was left unchanged"
    )]
    UnsafeMerge {
        /// The adapter.
        adapter: String,
        /// The module.
        module: String,
    },
    /// An operation that needs a state the model is not in (e.g. unmerge with nothing merged).
    #[error("{0}")]
    State(String),
    /// The compute backend failed (e.g. reading a tensor back).
    #[error("backend error: {0}")]
    Backend(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, PeftError>;
