//! LoRA (Hu et al. 2021) with rsLoRA scaling and DoRA, as Hugging Face PEFT computes them.

mod config;
mod layer;

pub use config::{LoraConfig, LoraInit, LoraShape};
pub use layer::LoraLayer;
