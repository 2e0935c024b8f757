//! `PrefixTuningConfig` with PEFT's field names; dimensions left out are filled from the model
//! as PEFT's `_prepare_prompt_learning_config` fills them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::geometry::ModelGeometry;
use crate::method::api::MethodConfig;
use crate::method::common::{
    check_group, refuse_modules_to_save, PeftFields, TargetFields, VirtualTokenDims,
};

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
    /// The fields every PEFT config has.
    #[serde(flatten)]
    pub peft: PeftFields,
}

impl PrefixTuningConfig {
    /// A config with `num_virtual_tokens` and everything else to be filled from the model.
    pub fn new(num_virtual_tokens: usize, prefix_projection: bool) -> Self {
        Self {
            dims: VirtualTokenDims::new(num_virtual_tokens),
            encoder_hidden_size: None,
            prefix_projection,
            peft: PeftFields::causal_lm(),
        }
    }

    /// Layers, key/value heads and head width (after [`MethodConfig::resolve`]).
    pub fn kv_layout(&self) -> (usize, usize, usize) {
        let heads = VirtualTokenDims::get(self.dims.num_attention_heads);
        (
            VirtualTokenDims::get(self.dims.num_layers),
            heads,
            VirtualTokenDims::get(self.dims.token_dim) / heads,
        )
    }

    /// The token width and MLP hidden width (after [`MethodConfig::resolve`]).
    pub fn widths(&self) -> (usize, usize) {
        (
            VirtualTokenDims::get(self.dims.token_dim),
            VirtualTokenDims::get(self.encoder_hidden_size),
        )
    }
}

impl MethodConfig for PrefixTuningConfig {
    const PEFT_TYPE: &'static str = "PREFIX_TUNING";

    fn check_json(value: &Value) -> Result<()> {
        refuse_modules_to_save(value, Self::PEFT_TYPE)?;
        check_group::<VirtualTokenDims>(value)?;
        check_group::<PeftFields>(value)
    }

    fn validate(&self) -> Result<()> {
        self.dims.validate()?;
        if self.encoder_hidden_size == Some(0) {
            return Err(PeftError::Config {
                field: "encoder_hidden_size".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Heads and width are those of the keys and values.
    fn resolve(&mut self, model: &ModelGeometry) -> Result<()> {
        self.dims.resolve(model, true)?;
        let (layers, _, _) = self.kv_layout();
        let token_dim = VirtualTokenDims::get(self.dims.token_dim);
        let encoder = *self.encoder_hidden_size.get_or_insert(token_dim);
        // The MLP maps each virtual token to every layer's keys and values; a hidden layer
        // wider than that output is a typo that would allocate hidden × output values.
        let output = 2 * layers * token_dim;
        if encoder > output {
            return Err(PeftError::Config {
                field: "encoder_hidden_size".into(),
                message: format!(
                    "{encoder} is wider than the prefix it produces per token ({output}: 2 × \
                     {layers} layers × {token_dim}); at most {output}"
                ),
            });
        }
        Ok(())
    }

    fn targets(&self) -> Option<&TargetFields> {
        None
    }
}
