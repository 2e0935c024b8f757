//! `PrefixTuningConfig` and `PromptTuningConfig` with PEFT's field names; dimensions left out
//! are filled from the model as PEFT's `_prepare_prompt_learning_config` fills them.

use serde::{Deserialize, Serialize};

use crate::error::{PeftError, Result};
use crate::projection::ModelGeometry;

/// The fields every prompt-learning config shares (PEFT's `PromptLearningConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VirtualTokenDims {
    /// Number of virtual tokens.
    pub num_virtual_tokens: usize,
    /// Width of one virtual token: the hidden size (prompt tuning), or for prefix tuning the
    /// key/value width (`kv_heads · head_dim`).
    #[serde(default)]
    pub token_dim: Option<usize>,
    /// 1 for decoder-only models.
    #[serde(default)]
    pub num_transformer_submodules: Option<usize>,
    /// Attention heads of the prefix (the key/value heads under grouped-query attention).
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    /// Decoder layers.
    #[serde(default)]
    pub num_layers: Option<usize>,
    /// Base model this adapter was trained on (informational).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT task type (informational; e.g. `CAUSAL_LM`).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Whether the adapter was saved for inference (informational).
    #[serde(default)]
    pub inference_mode: bool,
}

impl VirtualTokenDims {
    /// Fills what is missing from `model` (for prefix tuning, heads and width are those of the
    /// keys and values) and checks what was given against it, naming the field at fault.
    fn resolve(&mut self, model: &ModelGeometry, prefix: bool) -> Result<()> {
        let (heads, width) = if prefix {
            (model.num_kv_heads, model.num_kv_heads * model.head_dim)
        } else {
            (model.num_heads, model.hidden_size)
        };
        let fields = [
            ("num_layers", &mut self.num_layers, model.num_layers),
            ("token_dim", &mut self.token_dim, width),
            ("num_attention_heads", &mut self.num_attention_heads, heads),
            (
                "num_transformer_submodules",
                &mut self.num_transformer_submodules,
                1,
            ),
        ];
        for (field, slot, wanted) in fields {
            match *slot {
                None => *slot = Some(wanted),
                Some(given) if given == wanted => {}
                Some(given) => {
                    return Err(PeftError::Config {
                        field: field.into(),
                        message: format!(
                            "is {given}, but the model needs {wanted} ({} model with {} layers, \
                             hidden size {}, {} key/value heads of width {})",
                            model.model_type,
                            model.num_layers,
                            model.hidden_size,
                            model.num_kv_heads,
                            model.head_dim
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if self.num_virtual_tokens == 0 {
            return Err(PeftError::Config {
                field: "num_virtual_tokens".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The filled-in value of a dimension.
    fn get(slot: Option<usize>) -> usize {
        slot.expect("dimensions are filled by resolve before use")
    }
}

/// Prefix tuning (`PREFIX_TUNING`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefixTuningConfig {
    /// Shared dimensions.
    #[serde(flatten)]
    pub dims: VirtualTokenDims,
    /// Hidden width of the reparameterisation MLP (default `token_dim`).
    #[serde(default)]
    pub encoder_hidden_size: Option<usize>,
    /// Train the prefix through embedding → Linear → tanh → Linear (folded into
    /// `prompt_embeddings` when saved).
    #[serde(default)]
    pub prefix_projection: bool,
}

impl PrefixTuningConfig {
    /// A config with `num_virtual_tokens` and everything else to be filled from the model.
    pub fn new(num_virtual_tokens: usize, prefix_projection: bool) -> Self {
        Self {
            dims: VirtualTokenDims {
                num_virtual_tokens,
                task_type: Some("CAUSAL_LM".into()),
                ..VirtualTokenDims::default()
            },
            encoder_hidden_size: None,
            prefix_projection,
        }
    }

    /// Fills and checks the dimensions against `model`.
    pub fn resolve(&mut self, model: &ModelGeometry) -> Result<()> {
        self.dims.resolve(model, true)?;
        if self.encoder_hidden_size.is_none() {
            self.encoder_hidden_size = self.dims.token_dim;
        }
        Ok(())
    }

    /// Checks values, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        self.dims.validate()?;
        if self.encoder_hidden_size == Some(0) {
            return Err(PeftError::Config {
                field: "encoder_hidden_size".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Layers, key/value heads and head width (after [`Self::resolve`]).
    pub fn kv_layout(&self) -> (usize, usize, usize) {
        let heads = VirtualTokenDims::get(self.dims.num_attention_heads);
        (
            VirtualTokenDims::get(self.dims.num_layers),
            heads,
            VirtualTokenDims::get(self.dims.token_dim) / heads,
        )
    }

    /// The token width and MLP hidden width (after [`Self::resolve`]).
    pub fn widths(&self) -> (usize, usize) {
        (
            VirtualTokenDims::get(self.dims.token_dim),
            VirtualTokenDims::get(self.encoder_hidden_size),
        )
    }
}

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
}

impl PromptTuningConfig {
    /// A config with `num_virtual_tokens` and random init; dimensions filled from the model.
    pub fn new(num_virtual_tokens: usize) -> Self {
        Self {
            dims: VirtualTokenDims {
                num_virtual_tokens,
                task_type: Some("CAUSAL_LM".into()),
                ..VirtualTokenDims::default()
            },
            prompt_tuning_init: PromptInit::Random,
            prompt_tuning_init_text: None,
            tokenizer_name_or_path: None,
            init_token_ids: None,
        }
    }

    /// Fills and checks the dimensions against `model`.
    pub fn resolve(&mut self, model: &ModelGeometry) -> Result<()> {
        self.dims.resolve(model, false)
    }

    /// Checks values, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        self.dims.validate()?;
        if self.prompt_tuning_init == PromptInit::Text && self.prompt_tuning_init_text.is_none() {
            return Err(PeftError::Config {
                field: "prompt_tuning_init_text".into(),
                message: "is required when prompt_tuning_init is \"TEXT\"".into(),
            });
        }
        Ok(())
    }

    /// Virtual tokens and their width (after [`Self::resolve`]).
    pub fn shape(&self) -> (usize, usize) {
        (
            self.dims.num_virtual_tokens,
            VirtualTokenDims::get(self.dims.token_dim),
        )
    }
}
