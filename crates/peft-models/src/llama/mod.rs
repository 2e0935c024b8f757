//! The LLaMA family: RoPE, grouped/multi-query attention, RMSNorm, gated MLP, tied or untied
//! head; from Hugging Face folders and llama.cpp's GGUF files. Qwen2, Qwen3, Mistral, Gemma
//! and Phi-3 are the same model with a few switches ([`Family`]); each is its own
//! `model_type`, read into a [`LlamaConfig`] that knows its family.

mod config;
mod gguf;
mod model;

use serde::{Deserialize, Deserializer, Serialize};

use crate::arch::ArchConfig;
use crate::error::Result;
use crate::weights::gguf::{GgufFile, HfName};
use crate::weights::Weights;

pub use config::{Family, LlamaConfig};
pub use model::{
    GateUpProjections, Llama, LlamaAttention, LlamaLayer, LlamaMlp, LlamaModel, QkvProjections,
    SeparateGateUp, SeparateQkv,
};

/// Implements [`ArchConfig`] for `$config`, whose [`LlamaConfig`] `$inner` gives, for the
/// family `$family` (transformers class `$class`); `$extra` adds what only some have (GGUF).
macro_rules! llama_family {
    ($config:ty, |$c:ident| $inner:expr, $family:expr, $class:literal, $($extra:item)*) => {
        impl ArchConfig for $config {
            const MODEL_TYPE: &'static str = $family.model_type();
            const HF_CLASS: &'static str = $class;

            type Model = Llama;

            fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
                let $c = self;
                $inner.check()
            }

            fn vocab_size(&self) -> usize {
                let $c = self;
                $inner.vocab_size
            }

            fn eos_token_ids(&self) -> Vec<u32> {
                let $c = self;
                $inner.eos_token_id.to_vec()
            }

            fn describe(&self) -> Vec<(&'static str, String)> {
                let $c = self;
                $inner.describe()
            }

            fn is_ignorable_tensor(name: &str) -> bool {
                // Old checkpoints saved RoPE's inverse frequencies; tied checkpoints may repeat
                // the head; a GGUF's RoPE factors are read into the config.
                name.ends_with(".rotary_emb.inv_freq")
                    || name == "lm_head.weight"
                    || name == gguf::ROPE_FREQS
            }

            fn check_untied_head(&self) -> std::result::Result<(), String> {
                Ok(())
            }

            fn build(&self, root: &Weights) -> Result<Llama> {
                let $c = self;
                Llama::load($inner, root)
            }

            $($extra)*
        }
    };
}

llama_family! {
    LlamaConfig,
    |c| c,
    Family::Llama,
    "LlamaForCausalLM",
    const GGUF_ARCHITECTURE: Option<&'static str> = Some("llama");

    fn from_gguf(file: &GgufFile) -> Result<Self> {
        gguf::config(file, Family::Llama)
    }

    fn gguf_name(&self, name: &str) -> Option<HfName> {
        gguf::hf_name(self, name)
    }
}

/// Declares the config type of a family member: a [`LlamaConfig`] read with its family set;
/// with `gguf`, also read from llama.cpp's GGUF files of that `general.architecture`.
macro_rules! family_config {
    ($(#[$doc:meta])* $name:ident: $family:expr, $class:literal $(, $gguf:ident)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub LlamaConfig);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let mut config = LlamaConfig::deserialize(d)?;
                config.family = $family;
                Ok(Self(config))
            }
        }

        llama_family! { $name, |c| &c.0, $family, $class, $(family_config!(@$gguf $family);)? }
    };
    (@gguf $family:expr) => {
        const GGUF_ARCHITECTURE: Option<&'static str> = Some($family.model_type());

        fn from_gguf(file: &GgufFile) -> Result<Self> {
            gguf::config(file, $family).map(Self)
        }

        fn gguf_name(&self, name: &str) -> Option<HfName> {
            gguf::hf_name(&self.0, name)
        }
    };
}

family_config!(
    /// Qwen2 and Qwen2.5 (`qwen2`).
    Qwen2Config: Family::Qwen2, "Qwen2ForCausalLM", gguf
);
family_config!(
    /// Qwen3 (`qwen3`).
    Qwen3Config: Family::Qwen3, "Qwen3ForCausalLM", gguf
);
family_config!(
    /// Mistral (`mistral`).
    MistralConfig: Family::Mistral, "MistralForCausalLM"
);
family_config!(
    /// Gemma (`gemma`).
    GemmaConfig: Family::Gemma, "GemmaForCausalLM", gguf
);
family_config!(
    /// Phi-3 (`phi3`).
    Phi3Config: Family::Phi3, "Phi3ForCausalLM", gguf
);
