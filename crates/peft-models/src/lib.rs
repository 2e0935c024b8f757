//! GPT-2 and LLaMA-family causal language models on Burn, written so that adapters attach to
//! any projection by its Hugging Face module name; loading Hugging Face folders; tokenizers,
//! chat templates and generation with a key/value cache.
//!
//! ```no_run
//! # fn main() -> Result<(), peft_models::ModelError> {
//! let device = burn::tensor::Device::default();
//! let loaded = peft_models::load_model(std::path::Path::new("my-model"), &device)?;
//! let ids = loaded.tokenizer()?.encode("Hello", true)?;
//! # Ok(()) }
//! ```

pub mod attention;
pub mod chat;
pub mod config;
pub mod error;
pub mod export;
pub mod generate;
pub mod gpt2;
pub mod llama;
pub mod load;
pub mod loss;
pub mod model;
pub mod norm;
pub mod tokenizer;
mod virtual_input;

pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use export::save_hf_folder;
pub use load::{load_model, random_model, LoadedModel};
pub use model::CausalLm;
pub use tokenizer::TextTokenizer;
