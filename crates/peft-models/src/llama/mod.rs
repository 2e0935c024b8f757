//! The LLaMA family: RoPE, grouped/multi-query attention, RMSNorm, SwiGLU, tied or untied head;
//! from Hugging Face folders and llama.cpp's GGUF files.

mod config;
mod gguf;
mod model;

pub use config::LlamaConfig;
pub use model::{Llama, LlamaAttention, LlamaLayer, LlamaMlp, LlamaModel};
