//! The LLaMA family: RoPE, grouped/multi-query attention, RMSNorm, SwiGLU, tied or untied head;
//! from Hugging Face folders and llama.cpp's GGUF files.

mod config;
mod gguf;
mod model;

use crate::arch::ArchConfig;
use crate::error::Result;
use crate::weights::gguf::{GgufFile, HfName};
use crate::weights::Weights;

pub use config::LlamaConfig;
pub use model::{Llama, LlamaAttention, LlamaLayer, LlamaMlp, LlamaModel};

impl ArchConfig for LlamaConfig {
    const MODEL_TYPE: &'static str = "llama";
    const HF_CLASS: &'static str = "LlamaForCausalLM";
    const GGUF_ARCHITECTURE: Option<&'static str> = Some("llama");

    type Model = Llama;

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
            ("layers", self.num_hidden_layers.to_string()),
            ("hidden size", self.hidden_size.to_string()),
            ("intermediate size", self.intermediate_size.to_string()),
            ("attention heads", self.num_attention_heads.to_string()),
            ("key/value heads", self.kv_heads().to_string()),
            ("head dim", self.head_dim().to_string()),
            ("vocabulary", self.vocab_size.to_string()),
            ("max positions", self.max_position_embeddings.to_string()),
            ("rope theta", self.rope_theta().to_string()),
            ("tied embeddings", self.tie_word_embeddings.to_string()),
        ]
    }

    fn is_ignorable_tensor(name: &str) -> bool {
        // Old checkpoints saved RoPE's inverse frequencies; tied checkpoints may repeat the head.
        name.ends_with(".rotary_emb.inv_freq") || name == "lm_head.weight"
    }

    fn check_untied_head(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    fn build(&self, root: &Weights) -> Result<Llama> {
        Llama::load(self, root)
    }

    fn from_gguf(file: &GgufFile) -> Result<Self> {
        gguf::config(file)
    }

    fn gguf_name(&self, name: &str) -> Option<HfName> {
        gguf::hf_name(self, name)
    }
}
