//! `cargo xtask bench`: builds `peft-cli` for the chosen backends, runs `peft-cli bench` once per
//! backend × model × method (each in its own process, so peak memory is the row's own), adds
//! transformers + PEFT's speed on the same shapes with `--compare-hf`, and writes
//! `target/bench/<timestamp>.json`, `latest.json`, a markdown table and an SVG chart.

mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const USAGE: &str = "usage: cargo xtask bench [options]

  --backends LIST   ndarray,flex,wgpu,cuda                 [default: ndarray,flex,wgpu]
  --models LIST     tiny,gpt2-124m,smollm2-135m,qwen2.5-0.5b,llama-1b
                    [default: tiny,smollm2-135m]
  --methods LIST    full,lora,dora,prefix,prompt,ia3,houlsby,pfeiffer,vera [default: full,lora]
  --batch B         sequences per step                     [default: 4]
  --seq T           tokens per sequence                    [default: 128]
  --shapes LIST     several batch×seq shapes, e.g. 2x64,4x128,8x256 (instead of --batch, --seq)
  --targets SPEC    LoRA/DoRA target modules on both sides: a comma-separated LIST, all-linear,
                    or default (the architecture's); repeat it for one set of lora/dora rows each
                                                           [default: default]
  --steps N         timed steps                            [default: 5]
  --warmup N        untimed steps first (JIT, autotune)    [default: 2]
  --rank R          LoRA/DoRA rank (alpha = 2R)            [default: 16]
  --gen-tokens N    new tokens for the generation speed    [default: 32]
  --dtype D         f32 | f16 | bf16                       [default: f32]
  --gradient-checkpointing
                    recompute each decoder layer in backward, on both sides
  --quantize Q      q4 | q8: QLoRA, burn-peft's base packed in blocks (it then trains layer by
                    layer, so the HF side runs with gradient checkpointing)
  --peak-tflops F   the device's peak TFLOP/s for MFU (known NVIDIA GPUs are looked up)
  --compare-hf      also time transformers + PEFT (needs python3 with torch, transformers, peft)
  --hf-device D     torch device for --compare-hf          [default: cuda for cuda rows, else cpu]
  --quick           --steps 2 --warmup 1 --seq 64 --gen-tokens 8
  --peft-cli PATH   use this peft-cli binary instead of building one
  --rows FILE       only render: read rows (one JSON object per line, as `peft-cli bench`
                    prints them) and write the JSON, table and chart";

/// What to run.
#[derive(Debug)]
struct Plan {
    backends: Vec<String>,
    models: Vec<String>,
    methods: Vec<String>,
    /// `(batch, seq)` per row set.
    shapes: Vec<(usize, usize)>,
    /// Target sets for LoRA/DoRA rows; `None` is the architecture's default.
    targets: Vec<Option<String>>,
    steps: usize,
    warmup: usize,
    rank: usize,
    dtype: String,
    /// Per-layer activation checkpointing on both sides.
    gradient_checkpointing: bool,
    /// `q4` or `q8`: burn-peft's base packed in blocks.
    quantize: Option<String>,
    gen_tokens: usize,
    peak_tflops: Option<f64>,
    compare_hf: bool,
    hf_device: Option<String>,
    peft_cli: Option<PathBuf>,
    rows: Option<PathBuf>,
}

impl Plan {
    fn parse(args: &[String]) -> Result<Self> {
        let mut plan = Plan {
            backends: list("ndarray,flex,wgpu"),
            models: list("tiny,smollm2-135m"),
            methods: list("full,lora"),
            shapes: Vec::new(),
            targets: Vec::new(),
            steps: 5,
            warmup: 2,
            rank: 16,
            dtype: "f32".into(),
            gradient_checkpointing: false,
            quantize: None,
            gen_tokens: 32,
            peak_tflops: None,
            compare_hf: false,
            hf_device: None,
            peft_cli: None,
            rows: None,
        };
        let (mut batch, mut seq) = (None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))
            };
            let number = |v: String| -> Result<usize> {
                v.parse()
                    .with_context(|| format!("{flag}: {v:?} is not a whole number"))
            };
            match flag.as_str() {
                "--backends" => plan.backends = list(&value()?),
                "--models" => plan.models = list(&value()?),
                "--methods" => plan.methods = list(&value()?),
                "--batch" => batch = Some(number(value()?)?),
                "--seq" => seq = Some(number(value()?)?),
                "--shapes" => plan.shapes = shapes(&value()?)?,
                "--targets" => plan.targets.push(match value()?.as_str() {
                    "default" => None,
                    spec => Some(spec.to_string()),
                }),
                "--steps" => plan.steps = number(value()?)?,
                "--warmup" => plan.warmup = number(value()?)?,
                "--rank" => plan.rank = number(value()?)?,
                "--gen-tokens" => plan.gen_tokens = number(value()?)?,
                "--dtype" => plan.dtype = value()?,
                "--gradient-checkpointing" => plan.gradient_checkpointing = true,
                "--quantize" => plan.quantize = Some(value()?),
                "--peak-tflops" => {
                    let v = value()?;
                    plan.peak_tflops = Some(
                        v.parse()
                            .with_context(|| format!("--peak-tflops: {v:?} is not a number"))?,
                    );
                }
                "--compare-hf" => plan.compare_hf = true,
                "--hf-device" => plan.hf_device = Some(value()?),
                "--quick" => {
                    (plan.steps, plan.warmup, plan.gen_tokens) = (2, 1, 8);
                    seq = seq.or(Some(64));
                }
                "--peft-cli" => plan.peft_cli = Some(PathBuf::from(value()?)),
                "--rows" => plan.rows = Some(PathBuf::from(value()?)),
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown option {other:?}\n\n{USAGE}"),
            }
        }
        if plan.shapes.is_empty() {
            plan.shapes = vec![(batch.unwrap_or(4), seq.unwrap_or(128))];
        } else if batch.is_some() || seq.is_some() {
            bail!("give either --shapes or --batch/--seq\n\n{USAGE}");
        }
        if plan.targets.is_empty() {
            plan.targets.push(None);
        }
        Ok(plan)
    }
}

/// `2x64,4x128` → `[(2, 64), (4, 128)]`.
fn shapes(text: &str) -> Result<Vec<(usize, usize)>> {
    list(text)
        .iter()
        .map(|shape| {
            let parsed = shape
                .split_once(['x', '×'])
                .and_then(|(b, t)| Some((b.parse().ok()?, t.parse().ok()?)));
            parsed.with_context(|| {
                format!("--shapes: {shape:?} is not BATCHxSEQ (whole numbers, e.g. 4x128)")
            })
        })
        .collect()
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Runs the benchmark as `args` (after `bench`) say.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let plan = Plan::parse(args)?;
    let out_dir = target_dir(root).join("bench");
    let rows = match &plan.rows {
        Some(file) => read_rows(file)?,
        None => {
            let cli = match &plan.peft_cli {
                Some(path) => path.clone(),
                None => build_cli(root, &plan.backends)?,
            };
            measure(&cli, &plan)?
        }
    };
    if rows.is_empty() {
        bail!("no benchmark row was produced");
    }
    report::write(&out_dir, &rows)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// `cargo build --release -p peft-cli` with the features the backends need.
pub(crate) fn build_cli(root: &Path, backends: &[String]) -> Result<PathBuf> {
    let mut features = Vec::new();
    for backend in backends {
        match backend.as_str() {
            "ndarray" | "flex" | "wgpu" => features.push(backend.clone()),
            "cuda" => features.push("cuda".into()),
            other => bail!("unknown backend {other:?}; expected ndarray, flex, wgpu or cuda"),
        }
    }
    eprintln!(
        "building peft-cli (release, features {}); the first build takes a while",
        features.join(",")
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "peft-cli",
            "--no-default-features",
        ])
        .args(["--features", &features.join(",")])
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("building peft-cli failed ({status})");
    }
    Ok(target_dir(root).join("release").join("peft-cli"))
}

/// One row set's shape: model, method, LoRA targets and batch×seq (one row per backend).
#[derive(Debug, Clone, PartialEq)]
struct RowSpec {
    model: String,
    method: String,
    targets: Option<String>,
    batch: usize,
    seq: usize,
}

impl RowSpec {
    /// Every combination of the plan; target sets multiply the LoRA and DoRA rows only.
    fn all(plan: &Plan) -> Vec<Self> {
        let mut specs = Vec::new();
        for model in &plan.models {
            for &(batch, seq) in &plan.shapes {
                for method in &plan.methods {
                    let targets: &[Option<String>] = if matches!(method.as_str(), "lora" | "dora") {
                        &plan.targets
                    } else {
                        &[None]
                    };
                    for targets in targets {
                        specs.push(RowSpec {
                            model: model.clone(),
                            method: method.clone(),
                            targets: targets.clone(),
                            batch,
                            seq,
                        });
                    }
                }
            }
        }
        specs
    }

    /// The flags both sides share.
    fn shared_args(&self, plan: &Plan) -> Vec<String> {
        let mut args: Vec<String> = vec!["--method".into(), self.method.clone()];
        for (flag, value) in [
            ("--batch", self.batch),
            ("--seq", self.seq),
            ("--steps", plan.steps),
            ("--warmup", plan.warmup),
            ("--rank", plan.rank),
        ] {
            args.extend([flag.to_string(), value.to_string()]);
        }
        args.extend(["--dtype".into(), plan.dtype.clone()]);
        // A packed base trains layer by layer: the HF side checkpoints alike.
        if plan.gradient_checkpointing || plan.quantize.is_some() {
            args.push("--gradient-checkpointing".into());
        }
        if let Some(targets) = &self.targets {
            args.extend(["--targets".into(), targets.clone()]);
        }
        args
    }
}

/// Every row of the plan, with the HF columns when asked for.
fn measure(cli: &Path, plan: &Plan) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    let mut hf_cache: Vec<((RowSpec, String), Value)> = Vec::new();
    for spec in RowSpec::all(plan) {
        for backend in &plan.backends {
            eprintln!(
                "bench: {backend} {} {} {}x{}{}",
                spec.model,
                spec.method,
                spec.batch,
                spec.seq,
                spec.targets
                    .as_deref()
                    .map_or(String::new(), |t| format!(" targets {t}"))
            );
            let mut row = match bench_row(cli, plan, backend, &spec) {
                Ok(row) => row,
                Err(e) => {
                    eprintln!("  skipped: {e:#}");
                    continue;
                }
            };
            if plan.compare_hf {
                let device = plan
                    .hf_device
                    .clone()
                    .unwrap_or_else(|| if backend == "cuda" { "cuda" } else { "cpu" }.to_string());
                let key = (spec.clone(), device.clone());
                let hf = match hf_cache.iter().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.clone(),
                    None => {
                        let v = hf_row(cli, plan, &spec, &device)?;
                        hf_cache.push((key, v.clone()));
                        v
                    }
                };
                merge_hf(&mut row, &hf);
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn bench_row(cli: &Path, plan: &Plan, backend: &str, spec: &RowSpec) -> Result<Value> {
    let mut command = Command::new(cli);
    command
        .args(["bench", "--backend", backend, "--model", &spec.model])
        .args(spec.shared_args(plan))
        .args(["--gen-tokens", &plan.gen_tokens.to_string()]);
    if let Some(quantize) = &plan.quantize {
        command.args(["--quantize", quantize]);
    }
    if let Some(peak) = plan.peak_tflops {
        command.args(["--peak-tflops", &peak.to_string()]);
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", cli.display()))?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("peft-cli bench printed {line:?}"))
}

/// Times transformers + PEFT on the same configuration; `{"error": ...}` when it cannot.
fn hf_row(cli: &Path, plan: &Plan, spec: &RowSpec, device: &str) -> Result<Value> {
    let model = &spec.model;
    let config = Command::new(cli)
        .args(["bench", "--model", model, "--print-config"])
        .output()
        .context("cannot ask peft-cli for the model's config")?;
    let dir = std::env::temp_dir().join(format!("burn-peft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join(format!("{model}.json"));
    std::fs::write(&config_path, &config.stdout)?;
    let script = dir.join("hf_peft.py");
    std::fs::write(&script, include_str!("hf_peft.py"))?;
    eprintln!("  transformers + PEFT: {model} {} on {device}", spec.method);
    let output = Command::new("python3")
        .arg(&script)
        .args(["--config", config_path.to_str().context("utf-8 temp path")?])
        .args(["--device", device])
        .args(spec.shared_args(plan))
        .output();
    // The config and the script were only for this run.
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.context("cannot run python3 for --compare-hf")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        json!({"error": format!("the HF script failed: {}", String::from_utf8_lossy(&output.stderr).trim())})
    });
    if let Some(error) = value.get("error") {
        eprintln!("  --compare-hf: {}", error.as_str().unwrap_or_default());
    }
    Ok(value)
}

/// Adds the HF columns and the ratio burn-peft / HF to `row`.
fn merge_hf(row: &mut Value, hf: &Value) {
    let hf_tps = hf.get("hf_tokens_per_s").and_then(Value::as_f64);
    let ours = row["tokens_per_s"].as_f64();
    row["hf_tokens_per_s"] = json!(hf_tps);
    row["hf_peak_mem_bytes"] = hf.get("hf_peak_mem_bytes").cloned().unwrap_or(Value::Null);
    row["hf_versions"] = hf.get("hf_versions").cloned().unwrap_or(Value::Null);
    row["hf_error"] = hf.get("error").cloned().unwrap_or(Value::Null);
    row["ratio_vs_hf"] = match (ours, hf_tps) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
}

fn read_rows(file: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read rows from {}", file.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with('{'))
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", file.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_override_defaults_and_quick_shortens_the_run() {
        let plan = Plan::parse(&args(
            "--backends flex,wgpu --methods lora --quick --rank 8",
        ))
        .unwrap();
        assert_eq!(plan.backends, ["flex", "wgpu"]);
        assert_eq!(plan.models, ["tiny", "smollm2-135m"]);
        assert_eq!(plan.methods, ["lora"]);
        assert_eq!(
            (plan.steps, plan.warmup, plan.shapes[0], plan.rank),
            (2, 1, (4, 64), 8)
        );
    }

    #[test]
    fn shapes_and_target_sets_multiply_the_rows() {
        let plan = Plan::parse(&args(
            "--models tiny --methods full,lora --shapes 2x64,4x128 \
             --targets default --targets all-linear",
        ))
        .unwrap();
        let specs = RowSpec::all(&plan);
        // Per shape: full once, lora once per target set.
        assert_eq!(specs.len(), 6, "{specs:?}");
        let lora: Vec<_> = specs.iter().filter(|s| s.method == "lora").collect();
        assert_eq!(lora[0].targets, None);
        assert_eq!(lora[1].targets.as_deref(), Some("all-linear"));
        assert_eq!((lora[3].batch, lora[3].seq), (4, 128));
        let full = specs.iter().find(|s| s.method == "full").unwrap();
        assert!(!full.shared_args(&plan).contains(&"--targets".to_string()));
        let shared = lora[1].shared_args(&plan);
        assert!(shared.windows(2).any(|w| w == ["--targets", "all-linear"]));
        assert!(shared.windows(2).any(|w| w == ["--batch", "2"]));
    }

    #[test]
    fn bad_options_are_named() {
        let err = Plan::parse(&args("--batch many")).unwrap_err().to_string();
        assert!(err.contains("--batch") && err.contains("many"), "{err}");
        let err = Plan::parse(&args("--fast")).unwrap_err().to_string();
        assert!(err.contains("--fast"), "{err}");
        let err = Plan::parse(&args("--shapes 4by128"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("4by128"), "{err}");
        let err = Plan::parse(&args("--shapes 4x128 --seq 64"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("either --shapes"), "{err}");
        let err = Plan::parse(&args("--steps")).unwrap_err().to_string();
        assert!(err.contains("--steps needs a value"), "{err}");
    }

    #[test]
    fn the_hf_ratio_is_ours_over_theirs() {
        let mut row = json!({"tokens_per_s": 300.0});
        merge_hf(
            &mut row,
            &json!({"hf_tokens_per_s": 200.0, "hf_peak_mem_bytes": 5}),
        );
        assert_eq!(row["ratio_vs_hf"], json!(1.5));
        let mut row = json!({"tokens_per_s": 300.0});
        merge_hf(&mut row, &json!({"error": "cannot import torch"}));
        assert_eq!(row["ratio_vs_hf"], Value::Null);
        assert_eq!(row["hf_error"], json!("cannot import torch"));
    }
}
