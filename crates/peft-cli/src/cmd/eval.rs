//! `peft-cli eval`: loss, perplexity and exact match of a model (with or without an adapter)
//! on a JSONL file, as a report for people or as JSON.

use std::path::PathBuf;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use peft_core::adapters::BASE_ROW;
use peft_models::LoadedModel;
use peft_train::data::{read_jsonl, record_adapters, Record};
use peft_train::eval::{stop_ids, EvalReport, EvalSettings, Evaluator};

use super::ModelArgs;

/// Arguments of `eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file to score, in the formats `train` reads: {"text"}, {"prompt","completion"} or
    /// {"messages"}. Prompt/completion records and conversations ending with an assistant turn
    /// are also answered by greedy generation and scored by exact match. A record may name the
    /// adapter that answers it (`"adapter": "NAME"`, loaded with --adapter NAME=DIR, or
    /// "__base__" for the model without adapter); records naming none use the first --adapter.
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
    let mut records = read_jsonl(&args.data)?;
    let mut named = record_adapters(&args.data)?;
    let kept = args.limit.unwrap_or(records.len()).min(records.len());
    records.truncate(kept);
    named.truncate(kept);
    let per_record = named.iter().any(Option::is_some);
    if args.merge && (per_record || args.model.adapter.len() > 1) {
        anyhow::bail!(
            "--merge folds one adapter into the weights; it cannot serve records that name \
             different adapters"
        );
    }
    let (mut loaded, device) = args.model.load(false)?;
    if args.merge {
        peft_core::merge_and_unload(&mut loaded.model, true).context("cannot merge the adapter")?;
    }
    let settings = EvalSettings {
        seq_len: args.seq_len,
        batch_size: args.batch_size,
        max_new_tokens: args.max_new_tokens,
        limit: None,
        generate: !args.no_generate,
    };
    let report = if per_record {
        by_adapter(&mut loaded, &device, &args, &records, &named, &settings)?
    } else {
        evaluate(&loaded, &device, &args, &records, &settings)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text_report(&report, args.show));
    }
    Ok(())
}

/// Scores `records` with the model as loaded.
fn evaluate(
    loaded: &LoadedModel,
    device: &burn::tensor::Device,
    args: &Args,
    records: &[Record],
    settings: &EvalSettings,
) -> Result<EvalReport> {
    let evaluator = Evaluator {
        model: &loaded.model,
        tokenizer: loaded.tokenizer()?,
        eos_token_ids: stop_ids(loaded)?,
        device,
    };
    evaluator
        .run(&args.data, records, settings)
        .with_context(|| format!("cannot evaluate {}", args.data.display()))
}

/// Scores each record with the adapter it names (the first --adapter where it names none),
/// one adapter's records at a time, and puts the reports together in file order.
fn by_adapter(
    loaded: &mut LoadedModel,
    device: &burn::tensor::Device,
    args: &Args,
    records: &[Record],
    named: &[Option<String>],
    settings: &EvalSettings,
) -> Result<EvalReport> {
    let first = args.model.adapter.first().map(|a| a.name.as_str());
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, name) in named.iter().enumerate() {
        let name = name.as_deref().or(first).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: record {} names no adapter and no --adapter was given",
                args.data.display(),
                i + 1
            )
        })?;
        groups.entry(name).or_default().push(i);
    }
    let loaded_names = peft_core::adapter_names(&loaded.model);
    let mut parts = Vec::new();
    for (name, indices) in groups {
        if name == BASE_ROW {
            peft_core::adapters::disable_adapters(&mut loaded.model);
        } else if loaded_names.iter().any(|n| n == name) {
            peft_core::set_adapter(&mut loaded.model, name)?;
        } else {
            anyhow::bail!(
                "{}: record {} names adapter {name:?}, which is not loaded (loaded: {}; \
                 {BASE_ROW} is the model without adapter)",
                args.data.display(),
                indices[0] + 1,
                loaded_names.join(", ")
            );
        }
        let subset: Vec<Record> = indices.iter().map(|&i| records[i].clone()).collect();
        let mut report = evaluate(loaded, device, args, &subset, settings)
            .with_context(|| format!("records answered by adapter {name:?}"))?;
        for sample in &mut report.samples {
            sample.record = indices[sample.record - 1] + 1;
        }
        parts.push(report);
    }
    Ok(EvalReport::combine(parts))
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
