//! `peft-cli generate`: continue a prompt, streaming tokens to stdout.

use std::io::Write;

use anyhow::{Context, Result};
use peft_models::chat::{apply_chat_template, ChatMessage};
use peft_models::generate::{generate, SamplingConfig};
use peft_models::tokenizer::TokenStream;

use super::ModelArgs;

/// Arguments of `generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to continue (with --chat: the user's message).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user turn with the model's chat template and answer as the assistant.
    #[arg(long)]
    chat: bool,
    /// A system message placed before the user's turn (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Stop after this many new tokens (generation also stops at an end-of-sequence token).
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the K most likely tokens (with --temperature > 0).
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to P (with
    /// --temperature > 0).
    #[arg(long, value_name = "P")]
    top_p: Option<f32>,
    /// Seed of the sampler, so that a sampled answer can be reproduced.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Loads the model, encodes the prompt and streams the continuation.
pub fn run(args: Args) -> Result<()> {
    if let Some(p) = args.top_p.filter(|p| !(0.0..=1.0).contains(p) || *p == 0.0) {
        anyhow::bail!("--top-p {p} is out of range; expected a value in (0, 1]");
    }
    if args.temperature < 0.0 || !args.temperature.is_finite() {
        anyhow::bail!(
            "--temperature {} is out of range; expected 0 (greedy) or more",
            args.temperature
        );
    }
    let (loaded, device) = args.model.load(false)?;
    let tokenizer = loaded.tokenizer()?;
    let (text, add_special_tokens) = if args.chat {
        if tokenizer.chat_template.is_none() {
            anyhow::bail!(
                "chat template: the model has no chat template (tokenizer_config.json has no \
                 `chat_template`); run without --chat"
            );
        }
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        // The template writes the special tokens itself.
        (apply_chat_template(tokenizer, &messages, true)?, false)
    } else {
        (args.prompt.clone(), true)
    };
    let prompt = tokenizer.encode(&text, add_special_tokens)?;
    let mut eos_token_ids = loaded.eos_token_ids.clone();
    if args.chat {
        // Chat models end a turn with their EOS token text (e.g. `<|im_end|>`).
        eos_token_ids.extend(
            tokenizer
                .eos_token
                .as_deref()
                .and_then(|t| tokenizer.token_to_id(t)),
        );
    }
    let config = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        eos_token_ids,
    };
    let room = loaded
        .model
        .new_token_room(prompt.len(), args.max_new_tokens)
        .context("cannot generate")?;
    let mut stream = TokenStream::new(tokenizer);
    let mut stdout = std::io::stdout().lock();
    let new_ids = generate(&loaded.model, &prompt, &config, &device, |id| {
        if let Some(chunk) = stream.push(id)? {
            // A closed pipe (e.g. `| head`) ends generation quietly rather than with a panic.
            let _ = write!(stdout, "{chunk}").and_then(|()| stdout.flush());
        }
        Ok(())
    })
    .context("generation failed")?;
    writeln!(stdout).ok();
    if room < args.max_new_tokens && new_ids.len() == room {
        eprintln!(
            "stopped after {room} new tokens: the model's context of {} positions is full",
            loaded.model.context_length()
        );
    }
    Ok(())
}
