//! `cargo xtask compare`: full fine-tuning and every PEFT method trained the same way on the
//! shipped task (`configs/compare.toml`: SmolLM2-135M-Instruct, `datasets/order-extraction`, the
//! same steps, batches and test split), each in its own `peft-cli train` process, and one table
//! of what each buys: exact match and loss on the test split, trainable parameters, the saved
//! size, step time and peak memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const HELP: &str = "usage: cargo xtask compare [options]

Trains every method below with configs/compare.toml (SmolLM2-135M-Instruct on
datasets/order-extraction, flex) at the same step budget, one peft-cli process each, and prints
a Markdown table; rows go to <out>/results.json and the table to <out>/table.md.

options:
  --methods LIST    comma-separated subset of: full, lora, dora, adalora, vera, ia3, prefix,
                    prompt, houlsby (default: all, in that order)
  --steps N         optimizer steps per method (default: the config's max_steps)
  --out DIR         where the runs go (default: runs/compare)
  --peft-cli PATH   a peft-cli built with flex (default: build it in release mode)";

/// Each method's learning rate and options: values that work for it on this task (virtual
/// tokens and scaling vectors need larger steps than weight deltas; full fine-tuning far
/// smaller ones), the LoRA family on every linear layer.
const METHODS: [(&str, &str, &[&str]); 9] = [
    ("full", "1e-4", &[]),
    (
        "lora",
        "2e-3",
        &["--rank", "16", "--alpha", "32", "--target", "all-linear"],
    ),
    (
        "dora",
        "2e-3",
        &["--rank", "16", "--alpha", "32", "--target", "all-linear"],
    ),
    (
        "adalora",
        "2e-3",
        &[
            "--init-r",
            "16",
            "--target-r",
            "8",
            "--target",
            "all-linear",
        ],
    ),
    ("vera", "1e-2", &["--rank", "256", "--target", "all-linear"]),
    ("ia3", "1e-2", &[]),
    ("prefix", "1e-2", &["--virtual-tokens", "20"]),
    (
        "prompt",
        "3e-2",
        &[
            "--virtual-tokens",
            "20",
            "--init-text",
            "Extract the order as JSON",
        ],
    ),
    ("houlsby", "1e-3", &[]),
];

struct Plan {
    methods: Vec<&'static (&'static str, &'static str, &'static [&'static str])>,
    steps: Option<usize>,
    out: PathBuf,
    cli: Option<PathBuf>,
}

fn parse(root: &Path, args: &[String]) -> Result<Option<Plan>> {
    let mut plan = Plan {
        methods: METHODS.iter().collect(),
        steps: None,
        out: root.join("runs/compare"),
        cli: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n\n{HELP}"))?;
        match flag.as_str() {
            "--methods" => {
                plan.methods = value
                    .split(',')
                    .map(|name| {
                        METHODS.iter().find(|m| m.0 == name).with_context(|| {
                            let names: Vec<&str> = METHODS.iter().map(|m| m.0).collect();
                            format!("--methods: {name:?} is not one of {}", names.join(", "))
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            "--steps" => {
                plan.steps = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|&n: &usize| n > 0)
                        .with_context(|| format!("--steps: {value:?} is not a positive count"))?,
                );
            }
            "--out" => plan.out = PathBuf::from(value),
            "--peft-cli" => plan.cli = Some(PathBuf::from(value)),
            other => bail!("unknown option {other}\n\n{HELP}"),
        }
    }
    Ok(Some(plan))
}

/// Runs the comparison.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let Some(plan) = parse(root, args)? else {
        println!("{HELP}");
        return Ok(());
    };
    let cli = match &plan.cli {
        Some(path) => path.clone(),
        None => crate::bench::build_cli(root, &["flex".to_string()])?,
    };
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("cannot create {}", plan.out.display()))?;
    let mut rows = Vec::new();
    for &&(name, lr, options) in &plan.methods {
        let out = plan.out.join(name);
        if out.exists() {
            std::fs::remove_dir_all(&out)
                .with_context(|| format!("cannot clear {}", out.display()))?;
        }
        eprintln!("training {name} ...");
        let mut command = Command::new(&cli);
        command
            .current_dir(root)
            .args([
                "train",
                "--config",
                "configs/compare.toml",
                "--method",
                name,
            ])
            .args(["--lr", lr])
            .args(options)
            .arg("--out")
            .arg(&out);
        if let Some(steps) = plan.steps {
            command.args(["--max-steps", &steps.to_string()]);
        }
        let row = train_row(command, name, &out)?;
        eprintln!("{row}");
        rows.push(row);
    }
    let results = plan.out.join("results.json");
    std::fs::write(&results, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("cannot write {}", results.display()))?;
    let table = table(&rows);
    std::fs::write(plan.out.join("table.md"), &table)?;
    println!("{table}");
    Ok(())
}

/// Runs one `train` command to its end, sampling its peak resident memory, and reads what it
/// left in `out`.
fn train_row(mut command: Command, name: &str, out: &Path) -> Result<Value> {
    let log_path = out.with_extension("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let started = Instant::now();
    let mut child = command
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start peft-cli")?;
    let mut peak_kib = 0;
    let status = loop {
        // The peak resident set so far.
        if let Some(kib) = crate::soak::status_kib(child.id(), "VmHWM") {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall_s = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "{name}: train failed ({status}); see {}",
            log_path.display()
        );
    }
    let log = std::fs::read_to_string(&log_path)?;
    let trainable = log
        .lines()
        .find_map(|l| l.strip_prefix("trainable params: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("{name}: no parameter count in {}", log_path.display()))?;
    let scores: Value = read_json(&out.join("test_scores.json"))?;
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let lines: Vec<Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut step_ms: Vec<f64> = lines.iter().filter_map(|l| l["step_ms"].as_f64()).collect();
    step_ms.sort_by(f64::total_cmp);
    let eval_loss = lines.iter().rev().find_map(|l| l["eval_loss"].as_f64());
    Ok(json!({
        "method": name,
        "exact_match_before": scores["before"]["exact_match"],
        "exact_match": scores["after"]["exact_match"],
        "test_loss": scores["after"]["loss"],
        "eval_loss": eval_loss,
        "trainable_params": trainable,
        "saved_bytes": folder_bytes(&out.join("final"))?,
        "step_ms_median": step_ms.get(step_ms.len() / 2),
        "peak_rss_mib": peak_kib / 1024,
        "wall_s": wall_s,
    }))
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Total size of the files in `dir`.
fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// The rows as a Markdown table.
fn table(rows: &[Value]) -> String {
    let percent = |v: &Value| {
        v.as_f64()
            .map_or("-".into(), |m| format!("{:.1}%", 100.0 * m))
    };
    let number =
        |v: &Value, digits: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"));
    let mut text = String::from(
        "| method | exact match (before → after) | test loss | eval loss | trainable params | \
         saved size | step time (median) | peak memory (RSS) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        text.push_str(&format!(
            "| {} | {} → {} | {} | {} | {} | {} | {} ms | {} MiB |\n",
            row["method"].as_str().unwrap_or("?"),
            percent(&row["exact_match_before"]),
            percent(&row["exact_match"]),
            number(&row["test_loss"], 4),
            number(&row["eval_loss"], 4),
            human(row["trainable_params"].as_f64().unwrap_or(0.0), ""),
            human(row["saved_bytes"].as_f64().unwrap_or(0.0), "B"),
            number(&row["step_ms_median"], 0),
            row["peak_rss_mib"],
        ));
    }
    text
}

/// `1234567` as `1.2M` (with `unit` after it).
fn human(value: f64, unit: &str) -> String {
    let (scaled, prefix) = [(1e9, "G"), (1e6, "M"), (1e3, "K")]
        .into_iter()
        .find(|(scale, _)| value >= *scale)
        .map_or((value, ""), |(scale, prefix)| (value / scale, prefix));
    format!("{scaled:.1}{prefix}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_pick_methods_and_steps_and_bad_ones_are_named() {
        let root = Path::new("/repo");
        let plan = parse(root, &args("--methods lora,full --steps 5"))
            .unwrap()
            .unwrap();
        let names: Vec<&str> = plan.methods.iter().map(|m| m.0).collect();
        assert_eq!(names, ["lora", "full"]);
        assert_eq!(plan.steps, Some(5));
        assert_eq!(plan.out, root.join("runs/compare"));
        let err = parse(root, &args("--methods lora,lokr")).err().unwrap();
        assert!(err.to_string().contains("\"lokr\""), "{err}");
        assert!(parse(root, &args("--steps 0")).is_err());
        assert!(parse(root, &args("--help")).unwrap().is_none());
    }

    #[test]
    fn rows_render_as_a_markdown_table() {
        let row = json!({
            "method": "lora", "exact_match_before": 0.05, "exact_match": 0.9,
            "test_loss": 0.12345, "eval_loss": null, "trainable_params": 4_884_480,
            "saved_bytes": 19_540_000, "step_ms_median": 1234.4, "peak_rss_mib": 900,
        });
        let table = table(&[row]);
        assert!(
            table.contains(
                "| lora | 5.0% → 90.0% | 0.1235 | - | 4.9M | 19.5MB | 1234 ms | 900 MiB |"
            ),
            "{table}"
        );
    }
}
