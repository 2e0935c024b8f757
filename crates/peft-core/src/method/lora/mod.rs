//! LoRA (Hu et al. 2021) with rsLoRA scaling and DoRA, as Hugging Face PEFT computes them.

mod config;
mod layer;
#[cfg(test)]
mod tests;

pub(crate) use config::whole_as_int;
pub use config::{LoraConfig, LoraInit, LoraShape, DEFAULT_TARGETS};
pub use layer::LoraLayer;

/// The [`LoraLayer`] fields LoRA+ trains at its higher learning rate: B, and DoRA's magnitude
/// (PEFT's `create_loraplus_optimizer` puts `lora_B` and every 1-D parameter in that group).
pub const LORA_PLUS_FAST_FIELDS: [&str; 2] = ["lora_b", "magnitude"];
