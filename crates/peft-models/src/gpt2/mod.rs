//! GPT-2: learned positions, LayerNorm, fused qkv `c_attn` (Conv1D, `[in, out]`), GELU, tied head.

mod config;
mod model;

use crate::arch::ArchConfig;
use crate::error::Result;
use crate::weights::Weights;

pub use config::Gpt2Config;
pub use model::{Gpt2, Gpt2Attention, Gpt2Block, Gpt2Mlp, Gpt2Model};

impl ArchConfig for Gpt2Config {
    const MODEL_TYPE: &'static str = "gpt2";
    const HF_CLASS: &'static str = "GPT2LMHeadModel";

    type Model = Gpt2;

    fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        self.check()
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id.to_vec()
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("layers", self.n_layer.to_string()),
            ("hidden size", self.n_embd.to_string()),
            ("intermediate size", self.inner_dim().to_string()),
            ("attention heads", self.n_head.to_string()),
            ("vocabulary", self.vocab_size.to_string()),
            ("max positions", self.n_positions.to_string()),
            ("activation", self.activation_function.clone()),
        ]
    }

    fn is_ignorable_tensor(name: &str) -> bool {
        // Older checkpoints store the causal mask as buffers; the head is tied to `wte`.
        name.ends_with(".attn.bias")
            || name.ends_with(".attn.masked_bias")
            || name == "lm_head.weight"
    }

    /// GPT-2 checkpoints have no separate head (and this crate refuses an untied GPT-2).
    fn check_untied_head(&self) -> std::result::Result<(), String> {
        Err(
            "GPT-2 ties its output head to the token embedding; a merged adapter on lm_head \
             cannot be saved"
                .into(),
        )
    }

    fn build(&self, root: &Weights) -> Result<Gpt2> {
        Gpt2::load(self, root)
    }
}
