//! `peft-cli eval`: loss, perplexity and exact match of a model (with or without an adapter)
//! on a JSONL file, as a report for people or as JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use peft_train::data::read_jsonl;
use peft_train::eval::{stop_ids, EvalReport, EvalSettings, Evaluator};

use super::ModelArgs;

/// Arguments of `eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file to score, in the formats `train` reads: {"text"}, {"prompt","completion"} or
    /// {"messages"}. Prompt/completion records and conversations ending with an assistant turn
    /// are also answered by greedy generation and scored by exact match.
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Score only the first N records.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Longest example in tokens for the loss; longer ones are truncated.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Examples per forward pass for the loss, and prompts answered together in one
    /// generation batch (left-padded, one key/value cache).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Longest generated answer in tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Compute only the loss and perplexity (no generation).
    #[arg(long)]
    no_generate: bool,
    /// How many wrong answers to show next to the expected ones.
    #[arg(long, default_value_t = 5, value_name = "N")]
    show: usize,
    /// Fold the adapter into a copy of the weights before scoring: the same results up to float
    /// rounding, with generation as fast as the base model's (LoRA and DoRA).
    #[arg(long, requires = "adapter")]
    merge: bool,
    /// Print the report as JSON on stdout (every answer included) instead of text.
    #[arg(long)]
    json: bool,
}

/// Loads the model and the data, scores it and prints the report.
pub fn run(args: Args) -> Result<()> {
    if args.seq_len == 0 || args.batch_size == 0 || args.limit == Some(0) {
        anyhow::bail!("--seq-len, --batch-size and --limit must be at least 1");
    }
    let records = read_jsonl(&args.data)?;
    let (mut loaded, device) = args.model.load(false)?;
    if args.merge {
        peft_core::merge_and_unload(&mut loaded.model, true).context("cannot merge the adapter")?;
    }
    let evaluator = Evaluator {
        model: &loaded.model,
        tokenizer: loaded.tokenizer()?,
        eos_token_ids: stop_ids(&loaded)?,
        device: &device,
    };
    let settings = EvalSettings {
        seq_len: args.seq_len,
        batch_size: args.batch_size,
        max_new_tokens: args.max_new_tokens,
        limit: args.limit,
        generate: !args.no_generate,
    };
    let report = evaluator
        .run(&args.data, &records, &settings)
        .with_context(|| format!("cannot evaluate {}", args.data.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text_report(&report, args.show));
    }
    Ok(())
}

/// The report for people: scores, then the first `show` wrong answers with where they differ.
pub fn text_report(report: &EvalReport, show: usize) -> String {
    let mut out = format!(
        "examples: {}, scored tokens: {}\nloss: {:.4}, perplexity: {:.3}\n",
        report.examples, report.learned_tokens, report.loss, report.perplexity
    );
    let Some(exact) = report.exact_match else {
        return out;
    };
    let wrong: Vec<_> = report.samples.iter().filter(|s| !s.exact_match).collect();
    out += &format!(
        "exact match: {}/{} ({:.1}%)\n",
        report.samples.len() - wrong.len(),
        report.samples.len(),
        100.0 * exact
    );
    if !wrong.is_empty() && show > 0 {
        out += &format!(
            "wrong answers (first {} of {}):\n",
            show.min(wrong.len()),
            wrong.len()
        );
        for sample in wrong.iter().take(show) {
            let expected = sample.expected.trim();
            let generated = sample.generated.trim();
            let same = expected
                .chars()
                .zip(generated.chars())
                .take_while(|(a, b)| a == b)
                .count();
            out += &format!(
                "  record {}:\n    expected:  {expected}\n    generated: {generated}\n    {}^ first difference at character {}\n",
                sample.record,
                " ".repeat("generated: ".len() + same),
                same + 1
            );
        }
    }
    out
}
