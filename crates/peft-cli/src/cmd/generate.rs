//! `peft-cli generate`: continue a prompt, streaming tokens to stdout.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use peft_core::BASE_ROW;
use peft_models::chat::{apply_chat_template, ChatMessage};
use peft_models::generate::{generate, generate_batch, SamplingConfig};
use peft_models::tokenizer::{TextTokenizer, TokenStream};
use peft_models::LoadedModel;
use peft_train::data::record_adapter;

use super::ModelArgs;

/// Arguments of `generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to continue (with --chat: the user's message).
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    prompt: Option<String>,
    /// A JSONL file of prompts, `{"prompt": "...", "adapter": "alpha"}` per line, continued in
    /// one batch: each row with the adapter its record names (a name given with --adapter
    /// NAME=DIR, or __base__ for the model without adapter; none: the first --adapter), as
    /// PEFT's adapter_names mixes them (LoRA, DoRA, IA3 and VeRA). Prints one JSON line per
    /// record: {"record", "adapter", "completion"}.
    #[arg(long, value_name = "FILE.jsonl")]
    prompts: Option<PathBuf>,
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

/// Loads the model, encodes the prompt and streams the continuation (or continues a file of
/// prompts in one batch).
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
    let (mut loaded, device) = args.model.load(false)?;
    let tokenizer = loaded.tokenizer()?;
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
    let Some(text) = &args.prompt else {
        let path = args
            .prompts
            .as_deref()
            .context("give --prompt or --prompts")?;
        return generate_file(&args, path, &mut loaded, &config, &device);
    };
    let tokenizer = loaded.tokenizer()?;
    let prompt = encode_prompt(&args, tokenizer, text)?;
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

/// `text` as token ids: wrapped as a user turn with the chat template under --chat.
fn encode_prompt(args: &Args, tokenizer: &TextTokenizer, text: &str) -> Result<Vec<u32>> {
    if !args.chat {
        return Ok(tokenizer.encode(text, true)?);
    }
    if tokenizer.chat_template.is_none() {
        bail!(
            "chat template: the model has no chat template (tokenizer_config.json has no \
             `chat_template`); run without --chat"
        );
    }
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", text));
    // The template writes the special tokens itself.
    Ok(tokenizer.encode(&apply_chat_template(tokenizer, &messages, true)?, false)?)
}

/// One line of a --prompts file.
struct PromptRecord {
    prompt: String,
    adapter: Option<String>,
}

/// The records of a --prompts file; the error names the line at fault.
fn read_prompts(path: &Path) -> Result<Vec<PromptRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        let Some(prompt) = value.get("prompt").and_then(|p| p.as_str()) else {
            bail!("{}: expected a string `prompt`", at());
        };
        // The `adapter` field as `eval` reads it.
        let adapter = record_adapter(&value).map_err(|message| anyhow!("{}: {message}", at()))?;
        records.push(PromptRecord {
            prompt: prompt.to_string(),
            adapter,
        });
    }
    if records.is_empty() {
        bail!("{}: no prompt in the file", path.display());
    }
    Ok(records)
}

/// Continues every prompt of `path` in one batch, each row with the adapter its record names,
/// and prints one JSON line per record.
fn generate_file(
    args: &Args,
    path: &Path,
    loaded: &mut LoadedModel,
    config: &SamplingConfig,
    device: &burn::tensor::Device,
) -> Result<()> {
    let records = read_prompts(path)?;
    let first = args.model.adapter.first().map(|a| a.name.as_str());
    let rows: Vec<&str> = records
        .iter()
        .map(|r| r.adapter.as_deref().or(first).unwrap_or(BASE_ROW))
        .collect();
    match rows[0] {
        // One adapter for every row: any method serves it, as the active adapter.
        only if rows.iter().all(|r| *r == only) => match only {
            BASE_ROW => {
                peft_core::disable_adapters(&mut loaded.model);
            }
            name => peft_core::set_adapter(&mut loaded.model, name)
                .with_context(|| format!("{}", path.display()))?,
        },
        _ => peft_core::set_adapter_per_row(&mut loaded.model, &rows)
            .with_context(|| format!("{}", path.display()))?,
    }
    let tokenizer = loaded.tokenizer()?;
    let prompts = records
        .iter()
        .map(|r| encode_prompt(args, tokenizer, &r.prompt))
        .collect::<Result<Vec<_>>>()?;
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let outputs =
        generate_batch(&loaded.model, &prompts, config, device).context("generation failed")?;
    let mut stdout = std::io::stdout().lock();
    for (i, (ids, adapter)) in outputs.iter().zip(&rows).enumerate() {
        let line = serde_json::json!({
            "record": i + 1,
            "adapter": adapter,
            "completion": tokenizer.decode(ids, true)?,
        });
        writeln!(stdout, "{line}")?;
    }
    Ok(())
}
