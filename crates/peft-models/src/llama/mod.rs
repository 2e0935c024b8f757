//! The LLaMA family: RoPE, grouped/multi-query attention, RMSNorm, SwiGLU, tied or untied head.

mod config;
mod model;

pub use config::{LlamaConfig, RopeKind, RopeScaling};
pub use model::{Llama, LlamaAttention, LlamaLayer, LlamaMlp};
