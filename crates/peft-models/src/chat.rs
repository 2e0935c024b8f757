//! Chat prompts rendered with the model's own Jinja template (`chat_template`), as transformers'
//! `apply_chat_template` renders them.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// One turn of a conversation.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A turn with the given role and text.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Renders `messages` with the tokenizer's chat template; `add_generation_prompt` appends the
/// opening of the assistant's turn.
pub fn apply_chat_template(
    tokenizer: &TextTokenizer,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String> {
    let template = tokenizer.chat_template.as_deref().ok_or_else(|| {
        ModelError::ChatTemplate(
            "the model has no chat template (tokenizer_config.json has no `chat_template`)".into(),
        )
    })?;
    let mut env = Environment::new();
    // Templates written for Python Jinja call string methods (`.strip()`, `.startswith()`, ...).
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| ModelError::ChatTemplate(format!("invalid template: {e}")))?;
    env.get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => tokenizer.bos_token.clone().unwrap_or_default(),
                eos_token => tokenizer.eos_token.clone().unwrap_or_default(),
            })
        })
        .map_err(|e| ModelError::ChatTemplate(format!("rendering failed: {e}")))
}
