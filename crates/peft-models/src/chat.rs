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
    let render = || {
        env.get_template("chat").and_then(|t| {
            t.render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => tokenizer.bos_token.clone().unwrap_or_default(),
                eos_token => tokenizer.eos_token.clone().unwrap_or_default(),
            })
        })
    };
    without_panicking(render)
        .ok_or_else(|| {
            ModelError::ChatTemplate(
                "rendering failed: the template engine crashed on this template (e.g. minijinja \
                 2.24 on `''[::-1]`, a reversed empty string)"
                    .into(),
            )
        })?
        .map_err(|e| ModelError::ChatTemplate(format!("rendering failed: {e}")))
}

/// Runs `f`, turning a panic into `None` without printing it. The template engine panics on
/// a few inputs (found by `tests/fuzz.rs`); a model's template is user data, so its crash must
/// be an error, not the process's end.
fn without_panicking<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    std::panic::set_hook(hook);
    result
}
