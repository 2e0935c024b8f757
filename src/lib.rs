//! burn-peft: parameter-efficient fine-tuning of language models on Burn.
//!
//! This facade re-exports the workspace's crates under one name:
//! - [`core`]: adapter layers and the points where they attach to a model;
//! - [`models`]: GPT-2 and LLaMA-family models, loading, tokenizers and generation;
//! - [`train`]: training adapters on a frozen base model.

pub use peft_core as core;
pub use peft_models as models;
pub use peft_train as train;
