//! Prompt tuning (Lester et al. 2021), as Hugging Face PEFT runs it on decoder-only models:
//! learned embeddings before the input's. It touches no projection: the model asks its
//! model-wide adapter for the embeddings (`crate::model_adapters`).

mod config;
mod embedding;

pub use config::{PromptInit, PromptTuningConfig};
pub use embedding::PromptEmbedding;
