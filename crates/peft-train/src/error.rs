//! Errors of a training run, each naming the file, key, line or step it is about.

use std::path::PathBuf;

/// Why a training run could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML for a training configuration.
    #[error("{}: {message}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A configuration value is out of its range.
    #[error("invalid `{key}`: {message}")]
    InvalidValue {
        /// The key (`training.lr`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A line of a JSONL data file is not a usable example.
    #[error("{}:{line}: {message}", path.display())]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Nothing is left to train on.
    #[error("{0}")]
    EmptyData(String),
    /// The model has no parameter that would be trained.
    #[error("no trainable parameter: {0}")]
    NothingToTrain(String),
    /// The loss or the gradient norm became NaN or infinite.
    #[error("training diverged at step {step}: loss {loss}, gradient norm {grad_norm}, on {batch}; {weights}; the step was not applied; {last_good}")]
    NonFiniteLoss {
        /// The step whose loss is not finite.
        step: usize,
        /// The loss.
        loss: f32,
        /// The global gradient norm.
        grad_norm: f32,
        /// The data lines of the step's micro-batches.
        batch: String,
        /// The first adapter tensor holding NaN/Inf, or that all were finite.
        weights: String,
        /// Where the last good state is.
        last_good: String,
    },
    /// A checkpoint cannot be used to resume.
    #[error("cannot resume from {}: {message}", path.display())]
    Resume {
        /// The output or checkpoint folder.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// From the adapter library.
    #[error(transparent)]
    Peft(#[from] peft_core::PeftError),
    /// From the model library.
    #[error(transparent)]
    Model(#[from] peft_models::ModelError),
    /// A named model could not be found or fetched.
    #[error(transparent)]
    Fetch(#[from] peft_fetch::FetchError),
    /// Burn failed to save or load a record, or to read a tensor.
    #[error("{0}")]
    Backend(String),
    /// Burn's training loop stopped on an error.
    #[error("training stopped: {0}")]
    Learner(String),
}

/// Result of training operations.
pub type Result<T> = std::result::Result<T, TrainError>;
