//! GPT-2: learned positions, LayerNorm, fused qkv `c_attn` (Conv1D, `[in, out]`), GELU, tied head.

mod config;
mod model;

pub use config::{Activation, Gpt2Config};
pub use model::{Gpt2, Gpt2Attention, Gpt2Block, Gpt2Mlp, Gpt2Model};
