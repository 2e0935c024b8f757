//! Project chores, run as `cargo xtask <task>`.

use std::process::Command;

use anyhow::{bail, Context, Result};

mod bench;
mod compare;
mod dataset;
mod modules;
mod soak;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  lint      cargo fmt --check, cargo clippy --all-targets -D warnings and the module check,
            as CI runs them
  modules   the import graph of every crate's modules (--print to list the edges; a path to
            check another checkout); fails on a loop
  dataset   regenerate datasets/order-extraction (seeded; the shipped files are its output)
  bench     every backend, model and method side by side (cargo xtask bench --help)
  compare   full fine-tuning and every method trained on the order-extraction task, one table
            of what each buys (cargo xtask compare --help)
  soak      thousands of steps with memory sampled, then the same run killed (SIGKILL) and
            resumed again and again: must end bit-identical (cargo xtask soak --help)";

fn main() -> Result<()> {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("lint") => lint(),
        Some("modules") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let print = args.iter().any(|a| a == "--print");
            let root = args
                .iter()
                .find(|a| !a.starts_with("--"))
                .map_or_else(workspace_root, std::path::PathBuf::from);
            modules::check(&root, print)
        }
        Some("dataset") => dataset::generate(&workspace_root()),
        Some("bench") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            bench::run(&workspace_root(), &args)
        }
        Some("compare") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            compare::run(&workspace_root(), &args)
        }
        Some("soak") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            soak::run(&workspace_root(), &args)
        }
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    modules::check(&workspace_root(), false)?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// The workspace root (the parent of this crate's folder). Taken from `cargo run`'s environment
/// first: the compiled-in path is that of whichever clone built this binary, and clones that
/// share a target directory (as `.ci/run`'s default does) reuse one build.
fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    );
    manifest_dir
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
