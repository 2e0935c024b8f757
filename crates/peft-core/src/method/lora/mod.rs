//! LoRA (Hu et al. 2021) with rsLoRA scaling and DoRA, as Hugging Face PEFT computes them.

mod config;
mod layer;
#[cfg(test)]
mod tests;

pub use config::{LoraConfig, LoraInit, LoraShape, DEFAULT_TARGETS};
pub use layer::LoraLayer;
