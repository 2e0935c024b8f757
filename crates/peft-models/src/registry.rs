//! The architectures this crate implements, registered once: one line per architecture in
//! `register_architectures!` fills [`ModelConfig`] and [`CausalLm`] (the enum Burn's `Module`
//! derive needs) and their dispatch to the traits of [`crate::arch`].

use std::path::Path;

use burn::tensor::{Int, Tensor};
use peft_core::{ModelAdapters, ModelGeometry, Projection, ProjectionHost};

use crate::arch::{ArchConfig, Architecture, ArchitectureVisitor};
use crate::error::{ModelError, Result};
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::hf_json::parse;
use crate::llama::{
    GemmaConfig, Llama, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config,
};
use crate::nn::attention::KvCache;
use crate::nn::embedding::Embedding;
use crate::nn::projections::HasProjections;
use crate::weights::gguf::{GgufFile, GgufWeights};
use crate::weights::Weights;

/// Generates [`ModelConfig`] and [`CausalLm`] from lines `Variant: ConfigType => ModelType`, in
/// the order given (the order of the supported types in messages).
macro_rules! register_architectures {
    ($($variant:ident: $config:ty => $model:ty,)*) => {
        /// The configuration of one supported architecture.
        #[derive(Debug, Clone)]
        // One per loaded model: boxing would buy nothing.
        #[allow(clippy::large_enum_variant)]
        pub enum ModelConfig {
            $(
                #[doc = concat!("`", stringify!($config), "`.")]
                $variant($config),
            )*
        }

        /// A causal language model of any supported architecture.
        // One per process: the variants' sizes do not matter.
        #[allow(clippy::large_enum_variant)]
        #[derive(burn::module::Module, Debug)]
        pub enum CausalLm {
            $(
                #[doc = concat!("`", stringify!($model), "`.")]
                $variant($model),
            )*
        }

        /// transformers' `model_type` of every architecture.
        const MODEL_TYPES: &[&str] = &[$(<$config as ArchConfig>::MODEL_TYPE),*];
        /// llama.cpp's `general.architecture` of every architecture read from GGUF.
        const GGUF_ARCHITECTURES: &[Option<&str>] = &[$(<$config as ArchConfig>::GGUF_ARCHITECTURE),*];

        impl ModelConfig {
            /// Parses the architecture `model_type` names, if one does.
            fn parse_architecture(
                model_type: &str,
                path: &Path,
                value: serde_json::Value,
            ) -> Option<Result<Self>> {
                $(
                    if model_type == <$config as ArchConfig>::MODEL_TYPE {
                        return Some(parse(path, value).map(Self::$variant));
                    }
                )*
                None
            }

            /// The configuration and tensors of a GGUF file of architecture `arch`, if one
            /// reads it.
            fn from_gguf_architecture(
                arch: &str,
                file: GgufFile,
            ) -> Option<Result<(Self, GgufWeights)>> {
                $(
                    if Some(arch) == <$config as ArchConfig>::GGUF_ARCHITECTURE {
                        return Some(<$config as ArchConfig>::from_gguf(&file).map(|config| {
                            let weights = GgufWeights::new(file, |name| config.gguf_name(name));
                            (Self::$variant(config), weights)
                        }));
                    }
                )*
                None
            }

            /// Checks the values the model depends on; the error names the key.
            fn check(&self) -> std::result::Result<(), (&'static str, String)> {
                match self {
                    $(Self::$variant(c) => c.validate(),)*
                }
            }

            /// The Hugging Face `model_type` of this config.
            pub fn model_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$config as ArchConfig>::MODEL_TYPE,)*
                }
            }

            /// Vocabulary size (rows of the embedding, columns of the logits).
            pub fn vocab_size(&self) -> usize {
                match self {
                    $(Self::$variant(c) => c.vocab_size(),)*
                }
            }

            /// End-of-sequence ids named in the config (`eos_token_id`, a number or a list).
            pub fn eos_token_ids(&self) -> Vec<u32> {
                match self {
                    $(Self::$variant(c) => c.eos_token_ids(),)*
                }
            }

            /// The values a user wants to see, in order, the architecture first.
            pub fn describe(&self) -> Vec<(&'static str, String)> {
                let mut rows = vec![("architecture", self.model_type().to_string())];
                rows.extend(match self {
                    $(Self::$variant(c) => c.describe(),)*
                });
                rows
            }

            /// Whether a checkpoint tensor may be left unused by this architecture.
            pub fn is_ignorable_tensor(&self, name: &str) -> bool {
                match self {
                    $(Self::$variant(_) => <$config as ArchConfig>::is_ignorable_tensor(name),)*
                }
            }

            /// Refuses, saying why, to write an output head that no longer equals the embedding
            /// where the architecture cannot load one.
            pub fn check_untied_head(&self) -> std::result::Result<(), String> {
                match self {
                    $(Self::$variant(c) => c.check_untied_head(),)*
                }
            }

            /// This config as `config.json` (for a model that came without one: GGUF).
            pub fn to_json(&self) -> serde_json::Value {
                let (value, model_type, class) = match self {
                    $(Self::$variant(c) => (
                        serde_json::to_value(c),
                        <$config as ArchConfig>::MODEL_TYPE,
                        <$config as ArchConfig>::HF_CLASS,
                    ),)*
                };
                let mut value = value.expect("config serialises");
                value["model_type"] = model_type.into();
                value["architectures"] = serde_json::json!([class]);
                value
            }

            /// The model of this architecture, built from the checkpoint's top scope.
            pub fn build(&self, root: &Weights) -> Result<CausalLm> {
                Ok(match self {
                    $(Self::$variant(c) => CausalLm::$variant(c.build(root)?),)*
                })
            }
        }

        impl CausalLm {
            /// The last hidden states `[batch, seq, hidden]` (what the output head reads) from
            /// token embeddings `[batch, seq, hidden]` (what [`CausalLm::embed`] gives).
            pub fn hidden_states_of_embeddings(
                &self,
                x: Tensor<3>,
                padding_mask: Option<&Tensor<2, Int>>,
                cache: Option<&mut KvCache>,
            ) -> Tensor<3> {
                match self {
                    $(Self::$variant(m) => m.hidden_states(x, padding_mask, cache),)*
                }
            }

            /// What `visitor` does with the model's concrete architecture.
            pub fn visit_architecture<V: ArchitectureVisitor>(&self, visitor: V) -> V::Output {
                match self {
                    $(Self::$variant(m) => visitor.visit(m),)*
                }
            }

            /// The output head.
            pub fn lm_head(&self) -> &Projection {
                match self {
                    $(Self::$variant(m) => m.lm_head(),)*
                }
            }

            /// The token embedding.
            pub fn token_embedding(&self) -> &Embedding {
                match self {
                    $(Self::$variant(m) => m.token_embedding(),)*
                }
            }

            /// Decoder layers.
            pub fn num_layers(&self) -> usize {
                match self {
                    $(Self::$variant(m) => m.num_layers(),)*
                }
            }

            /// The longest sequence the model can encode, where positions are learned (GPT-2).
            pub fn max_positions(&self) -> Option<usize> {
                match self {
                    $(Self::$variant(m) => m.max_positions(),)*
                }
            }
        }

        impl ProjectionHost for CausalLm {
            fn projections(&self) -> Vec<(String, &Projection)> {
                match self {
                    $(Self::$variant(m) => m.projections(),)*
                }
            }

            fn projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
                match self {
                    $(Self::$variant(m) => m.projections_mut(),)*
                }
            }

            fn geometry(&self) -> ModelGeometry {
                match self {
                    $(Self::$variant(m) => m.geometry(),)*
                }
            }

            fn model_adapters(&self) -> &ModelAdapters {
                match self {
                    $(Self::$variant(m) => m.model_adapters(),)*
                }
            }

            fn model_adapters_mut(&mut self) -> &mut ModelAdapters {
                match self {
                    $(Self::$variant(m) => m.model_adapters_mut(),)*
                }
            }

            fn embed_ids(&self, ids: &[u32]) -> Tensor<2> {
                self.token_embedding().rows_of(ids)
            }
        }
    };
}

register_architectures! {
    Llama: LlamaConfig => Llama,
    Qwen2: Qwen2Config => Llama,
    Qwen3: Qwen3Config => Llama,
    Mistral: MistralConfig => Llama,
    Gemma: GemmaConfig => Llama,
    Phi3: Phi3Config => Llama,
    Gpt2: Gpt2Config => Gpt2,
}

impl ModelConfig {
    /// The `model_type`s this crate implements, for messages.
    pub fn supported_model_types() -> String {
        MODEL_TYPES.join(", ")
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::hf_json::read_text(
            path,
            "model config",
            "config.json from a Hugging Face model folder",
        )?;
        Self::from_json(&text, path)
    }

    /// Parses and validates the text of a `config.json`; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ModelError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let supported = Self::supported_model_types();
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::ConfigValue {
                path: path.to_path_buf(),
                key: "model_type".into(),
                message: format!("missing or not a string; expected one of: {supported}"),
            })?
            .to_string();
        let config = Self::parse_architecture(&model_type, path, value).ok_or_else(|| {
            ModelError::UnknownModelType {
                path: path.to_path_buf(),
                model_type,
                supported,
            }
        })??;
        config
            .check()
            .map_err(|(key, message)| ModelError::ConfigValue {
                path: path.to_path_buf(),
                key: key.to_string(),
                message,
            })?;
        Ok(config)
    }

    /// The configuration and tensors of a GGUF file, by its `general.architecture`.
    pub fn from_gguf(file: GgufFile) -> Result<(Self, GgufWeights)> {
        let arch = file.meta_str("general.architecture")?.to_string();
        let supported: Vec<&str> = GGUF_ARCHITECTURES.iter().flatten().copied().collect();
        let refusal = file.config_error(
            "general.architecture",
            format!(
                "{arch:?} is not supported; expected one of {}",
                supported.join(", ")
            ),
        );
        Self::from_gguf_architecture(&arch, file).ok_or(refusal)?
    }
}
