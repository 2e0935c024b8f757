//! `peft-cli`: inspect, run, merge and fine-tune language models with parameter-efficient methods.

mod allocator;
mod backend;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Parameter-efficient fine-tuning of language models on Burn.
#[derive(Parser)]
#[command(name = "peft-cli", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's architecture, sizes, parameter count and a per-module table.
    Inspect(Box<cmd::inspect::Args>),
    /// Generate text from a prompt, streaming tokens to stdout.
    Generate(cmd::generate::Args),
    /// Compute logits (and with --grads the loss and adapter gradients) for token ids read from
    /// a safetensors file, and write them to another.
    Logits(cmd::logits::Args),
    /// Train an adapter (LoRA, DoRA, IA3, prefix or prompt tuning, bottleneck) on a frozen base
    /// model from a TOML configuration and/or flags; saves checkpoints, metrics.jsonl and the
    /// final adapter in PEFT's format.
    Train(Box<cmd::train::Args>),
    /// Score a model (and adapter) on a JSONL file: loss, perplexity, exact match of greedy
    /// answers, and the wrong answers next to the expected ones.
    Eval(cmd::eval::Args),
    /// Merge an adapter into the model's weights and write a plain Hugging Face model folder.
    Merge(cmd::merge::Args),
    /// Benchmark one training configuration (random weights of a real architecture's shape) and
    /// print one JSON row: step time, tokens/s, forward and generation speed, peak memory,
    /// parameters, adapter size. `cargo xtask bench` runs every combination.
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => cmd::inspect::run(*args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Logits(args) => cmd::logits::run(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Train(args) => cmd::train::run(*args),
        Command::Bench(args) => cmd::bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
