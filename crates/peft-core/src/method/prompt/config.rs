//! `PromptTuningConfig` with PEFT's field names; dimensions left out are filled from the model
//! as PEFT's `_prepare_prompt_learning_config` fills them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::method::api::MethodConfig;
use crate::method::common::{
    check_group, refuse_modules_to_save, PeftFields, TargetFields, VirtualTokenDims,
};

/// How prompt-tuning embeddings start (`prompt_tuning_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PromptInit {
    /// Standard normal, as `nn.Embedding` starts.
    #[default]
    Random,
    /// The embeddings of `prompt_tuning_init_text`'s tokens, repeated or cut to length.
    Text,
    /// The embeddings of tokens drawn uniformly from the vocabulary.
    SampleVocab,
}

/// Prompt tuning (`PROMPT_TUNING`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptTuningConfig {
    /// Shared dimensions.
    #[serde(flatten)]
    pub dims: VirtualTokenDims,
    /// Initialisation.
    #[serde(default)]
    pub prompt_tuning_init: PromptInit,
    /// The text whose embeddings start the prompt (`TEXT`).
    #[serde(default)]
    pub prompt_tuning_init_text: Option<String>,
    /// The tokenizer PEFT would load for the text (informational here).
    #[serde(default)]
    pub tokenizer_name_or_path: Option<String>,
    /// The init text's token ids, from the model's tokenizer with special tokens, as PEFT
    /// tokenizes it; the caller fills them (this crate has no tokenizer). Not saved.
    #[serde(skip)]
    pub init_token_ids: Option<Vec<u32>>,
    /// The fields every PEFT config has.
    #[serde(flatten)]
    pub peft: PeftFields,
}

impl PromptTuningConfig {
    /// A config with `num_virtual_tokens` and random init; dimensions filled from the model.
    pub fn new(num_virtual_tokens: usize) -> Self {
        Self {
            dims: VirtualTokenDims::new(num_virtual_tokens),
            prompt_tuning_init: PromptInit::Random,
            prompt_tuning_init_text: None,
            tokenizer_name_or_path: None,
            init_token_ids: None,
            peft: PeftFields::causal_lm(),
        }
    }

    /// Virtual tokens and their width (after [`MethodConfig::resolve`]).
    pub fn shape(&self) -> (usize, usize) {
        (
            self.dims.num_virtual_tokens,
            VirtualTokenDims::get(self.dims.token_dim),
        )
    }
}

impl MethodConfig for PromptTuningConfig {
    const PEFT_TYPE: &'static str = "PROMPT_TUNING";

    fn check_json(value: &Value) -> Result<()> {
        refuse_modules_to_save(value, Self::PEFT_TYPE)?;
        check_group::<VirtualTokenDims>(value)?;
        check_group::<PeftFields>(value)
    }

    fn validate(&self) -> Result<()> {
        self.dims.validate()?;
        if self.prompt_tuning_init == PromptInit::Text && self.prompt_tuning_init_text.is_none() {
            return Err(PeftError::Config {
                field: "prompt_tuning_init_text".into(),
                message: "is required when prompt_tuning_init is \"TEXT\"".into(),
            });
        }
        Ok(())
    }

    fn resolve(&mut self, model: &ModelGeometry) -> Result<()> {
        self.dims.resolve(model, false)
    }

    fn targets(&self) -> Option<&TargetFields> {
        None
    }
}
