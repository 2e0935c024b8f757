//! GPT-2 and LLaMA-family causal language models on Burn, written so that adapters attach to
//! any projection by its Hugging Face module name; loading Hugging Face folders and GGUF files;
//! tokenizers, chat templates and generation with a key/value cache.
//!
//! ```no_run
//! # fn main() -> Result<(), peft_models::ModelError> {
//! let device = burn::tensor::Device::default();
//! let loaded = peft_models::load_model(std::path::Path::new("my-model"), &device)?;
//! let ids = loaded.tokenizer()?.encode("Hello", true)?;
//! # Ok(()) }
//! ```
//!
//! Layers, bottom up (a module only uses modules of its own layer or below):
//! - [`error`], [`hf_json`], [`tokenizer`], [`chat`];
//! - [`weights`]: weight sources (safetensors, GGUF) and the scoped loader;
//! - [`nn`]: parts every architecture shares (attention, RoPE, norms, embeddings);
//! - [`arch`]: what an architecture implements; then one folder per architecture
//!   ([`llama`], [`gpt2`]);
//! - [`registry`]: [`ModelConfig`] and [`CausalLm`], one line per architecture; then
//!   [`model`], [`loss`], [`generate`], [`load`] and [`export`].

pub mod arch;
pub mod chat;
pub mod checkpointing;
pub mod error;
pub mod export;
pub mod generate;
pub mod gpt2;
pub mod hf_json;
pub mod llama;
pub mod load;
pub mod loss;
pub mod model;
pub mod nn;
pub mod registry;
pub mod tokenizer;
pub mod weights;

pub use error::{ModelError, Result};
pub use export::{save_hf_folder, save_model_folder, FolderFiles};
pub use load::{load_model, load_model_as, random_model, BaseFormat, LoadedModel};
pub use registry::{CausalLm, ModelConfig};
pub use tokenizer::TextTokenizer;
