//! Prompt learning: prefix tuning (Li & Liang 2021) and prompt tuning (Lester et al. 2021), as
//! Hugging Face PEFT runs them on decoder-only models. Neither touches a projection: the model
//! asks its [`crate::virtual_tokens::VirtualTokens`] slot for per-layer key/value prefixes or
//! for embeddings to put before the input.

mod config;
mod encoder;

pub use config::{PrefixTuningConfig, PromptInit, PromptTuningConfig, VirtualTokenDims};
pub use encoder::{PrefixEncoder, PrefixMlp, PromptEmbedding};
