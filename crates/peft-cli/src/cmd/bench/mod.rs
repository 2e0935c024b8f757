//! `peft-cli bench`: one benchmark row — a model of a real architecture's shape with random
//! weights, one PEFT method (or full fine-tuning), one backend — printed as one line of JSON.
//! `cargo xtask bench` runs it for every combination (each in its own process, so that peak
//! memory is the row's own) and makes the tables and the chart; on a machine without a Rust
//! toolchain the same binary runs the rows.

mod peak;
mod preset;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn::train::Learner;
use peft_core::{AdapterConfig, ParameterReport, ProjectionHost, DEFAULT_ADAPTER};
use peft_models::generate::{generate, SamplingConfig};
use peft_models::loss::HostLabels;
use peft_models::{random_model, BaseFormat, CausalLm, ModelConfig};
use peft_train::batch::LmBatch;
use peft_train::config::{LoraOptions, Method, MethodSection, Schedule};
use peft_train::model::{TrainableLm, Trained};
use peft_train::schedule::WarmupSchedule;
use peft_train::step::optimizer_step;
use serde::Serialize;

use super::dtype::Dtype;
use super::QuantizeChoice;
use crate::backend::{self, BackendChoice};
use preset::Preset;

/// Tokens one benchmark step may hold (`--batch` × `--seq`): a bound far past any device's
/// memory that refuses a typo before it allocates.
const MAX_TOKENS_PER_STEP: usize = 1 << 24;

/// Options of `bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Model shape (random weights, nothing is downloaded): tiny (the test fixtures' LLaMA),
    /// gpt2-124m, smollm2-135m, qwen2.5-0.5b, llama-1b (Llama 3.2 1B).
    #[arg(long, value_enum, default_value_t = Preset::Tiny)]
    model: Preset,
    /// `full` fine-tuning (every weight trained), or a PEFT method (lora, dora, prefix, prompt,
    /// ia3, houlsby, pfeiffer, vera) with its default targets.
    #[arg(long, default_value = "lora", value_parser = parse_method)]
    method: Method,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first (JIT compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// LoRA/DoRA rank (alpha is twice the rank).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// LoRA/DoRA target modules, comma-separated (`q_proj,v_proj`), or `all-linear` (every
    /// linear layer but the output head, as PEFT has it); the architecture's default when
    /// left out.
    #[arg(long, value_name = "LIST|all-linear", value_delimiter = ',')]
    targets: Vec<String>,
    /// Float type of the frozen base's weights and of the computation through it, as `train
    /// --dtype`: adapters, their gradients and AdamW's state stay f32. Not with full
    /// fine-tuning or --quantize.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Recompute each decoder layer in backward instead of keeping its activations (as
    /// `train --gradient-checkpointing`).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// QLoRA: the base's linear weights packed in 4- or 8-bit blocks (random weights
    /// quantized as `train --quantize` quantizes), trained layer by layer as `train` does.
    #[arg(long, value_enum)]
    quantize: Option<QuantizeChoice>,
    /// New tokens for the generation measurement (0 skips it).
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// The device's peak dense throughput in TFLOP/s for this dtype, to report model FLOP
    /// utilisation. Known NVIDIA GPUs (H200, H100, A100, L40S, A10, RTX 4090/3090) are looked
    /// up by name (datasheet FP32, or BF16/FP16 tensor-core peak); elsewhere MFU is left out
    /// unless this is given.
    #[arg(long, value_name = "TFLOPS")]
    peak_tflops: Option<f64>,
    /// Print the model's `config.json` (what other tools need to build the same shape) and stop.
    #[arg(long)]
    print_config: bool,
}

fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_name(&text.to_lowercase()).ok_or_else(|| {
        let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        format!("{text:?} is not one of {}", names.join(", "))
    })
}

/// One benchmark row, as `cargo xtask bench` collects it.
#[derive(Debug, Serialize)]
struct Row {
    backend: String,
    device: String,
    model: Preset,
    method: String,
    /// The `--targets` given, comma-separated; `None` for the method's default.
    targets: Option<String>,
    batch: usize,
    seq: usize,
    dtype: Dtype,
    gradient_checkpointing: bool,
    /// `q4`, `q8`, or `None` for an f32 base.
    quantize: Option<String>,
    steps: usize,
    step_ms_median: f64,
    step_ms_min: f64,
    step_ms_max: f64,
    tokens_per_s: f64,
    forward_tokens_per_s: f64,
    generate_tokens_per_s: Option<f64>,
    mfu: Option<f64>,
    peak_tflops: Option<f64>,
    peak_mem_bytes: u64,
    peak_mem_kind: &'static str,
    trainable_params: usize,
    total_params: usize,
    adapter_bytes: u64,
}

/// Runs the row and prints it as one line of JSON on stdout.
pub fn run(args: Args) -> Result<()> {
    if args.print_config {
        let config: serde_json::Value = serde_json::from_str(args.model.config_json())?;
        println!("{config}");
        return Ok(());
    }
    if args.steps == 0 || args.batch == 0 || args.seq < 2 {
        bail!("--steps and --batch must be at least 1 and --seq at least 2");
    }
    if !args.targets.is_empty() && !matches!(args.method, Method::Lora | Method::Dora) {
        bail!(
            "--targets applies to lora and dora, not {}",
            args.method.name()
        );
    }
    if args.quantize.is_some() && matches!(args.method, Method::Full | Method::Prefix) {
        bail!(
            "--quantize keeps the base frozen and trains layer by layer: not with {}",
            args.method.name()
        );
    }
    // As `train` does: a packed base trains layer by layer.
    let checkpointing = args.gradient_checkpointing || args.quantize.is_some();
    let selected = backend::select(args.backend)?;
    eprintln!("backend: {}", selected.description);
    if args.dtype != Dtype::F32 && args.method == Method::Full {
        bail!("--dtype sets the frozen base's type; full fine-tuning trains it in f32");
    }
    selected.check_dtype(args.dtype.float_dtype())?;
    let device = selected.device;
    let config = ModelConfig::from_json(args.model.config_json(), Path::new("(preset)"))?;
    let train_device = device.clone().autodiff();
    train_device.seed(0);
    let format = BaseFormat {
        quantize: args.quantize.map(|q| q.config().format()),
        dtype: Some(args.dtype.float_dtype()),
    };
    let mut lm = random_model(&config, &train_device, format)?;
    let (trained, parameters) = attach(&mut lm, &args)?;
    let matmul_params = matmul_parameters(&lm);
    if args.seq > lm.context_length() {
        bail!(
            "--seq {} is longer than the model's context of {} positions",
            args.seq,
            lm.context_length()
        );
    }
    if args.batch.saturating_mul(args.seq) > MAX_TOKENS_PER_STEP {
        bail!(
            "--batch {} x --seq {} is more than {MAX_TOKENS_PER_STEP} tokens per step; no \
             device holds the activations of that many",
            args.batch,
            args.seq
        );
    }

    let batch = random_batch(&args, lm.vocab_size(), &train_device)?;
    let model = TrainableLm::new(lm, trained).with_gradient_checkpointing(checkpointing, 0)?;
    let total = args
        .warmup
        .checked_add(args.steps)
        .context("--warmup + --steps overflows")?;
    let schedule = WarmupSchedule::new(1e-4, 0, total, Schedule::Constant, 0);
    let mut learner = Learner::new(model, peft_train::optimizer(0.0), schedule);
    let mut step_ms = Vec::new();
    let mut device_peak = None;
    for step in 0..total {
        let start = Instant::now();
        optimizer_step(&mut learner, [batch.clone()], 0.0)?;
        sync(&device)?;
        if step >= args.warmup {
            step_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        if let Some(usage) = device.memory_pool_usage() {
            device_peak = Some(device_peak.unwrap_or(0).max(usage.bytes_reserved));
        }
    }
    let model = learner.model();
    let trained = model.to_save();
    let tokens = (args.batch * args.seq) as f64;
    let median = median(&mut step_ms);
    let tokens_per_s = tokens / (median / 1e3);
    // Training FLOPs per token: forward 2N, input gradients 2N, weight gradients 2N for the
    // weights that train (N = parameters in matrix multiplications; attention scores left out).
    let flops_per_token = match args.method {
        Method::Full => 6.0,
        _ => 4.0,
    } * matmul_params;
    let peak_tflops = args
        .peak_tflops
        .or_else(|| peak::known_peak_tflops(&selected.description, args.dtype));
    let mfu = peak_tflops.map(|peak| flops_per_token * tokens_per_s / (peak * 1e12));

    let inference = trained.valid();
    let forward_tokens_per_s = forward_speed(&inference, &batch, &args, &device)?;
    let generate_tokens_per_s = match args.gen_tokens {
        0 => None,
        n => Some(generation_speed(&inference, n, &device)?),
    };
    let adapter_bytes = match model.adapter() {
        Some((_, config)) => saved_adapter_bytes(&trained, config)?,
        // Full fine-tuning: every weight, in f32 (`--dtype` is refused for it).
        None => (parameters.total * std::mem::size_of::<f32>()) as u64,
    };
    let (peak_mem_bytes, peak_mem_kind) = match device_peak {
        Some(bytes) => (bytes, "device pool reserved"),
        None => (process_peak_rss()?, "process peak RSS"),
    };
    let row = Row {
        backend: format!("{:?}", args.backend).to_lowercase(),
        device: selected.description,
        model: args.model,
        method: args.method.name().to_string(),
        targets: (!args.targets.is_empty()).then(|| args.targets.join(",")),
        batch: args.batch,
        seq: args.seq,
        dtype: args.dtype,
        gradient_checkpointing: checkpointing,
        quantize: args.quantize.map(|q| format!("{q:?}").to_lowercase()),
        steps: args.steps,
        step_ms_median: median,
        step_ms_min: step_ms.first().copied().unwrap_or(median),
        step_ms_max: step_ms.last().copied().unwrap_or(median),
        tokens_per_s,
        forward_tokens_per_s,
        generate_tokens_per_s,
        mfu,
        peak_tflops,
        peak_mem_bytes,
        peak_mem_kind,
        trainable_params: parameters.trainable,
        total_params: parameters.total,
        adapter_bytes,
    };
    println!("{}", serde_json::to_string(&row)?);
    Ok(())
}

/// Attaches the method (full fine-tuning makes every weight trainable instead, as `train`
/// does); returns what trains and the parameter counts.
fn attach(lm: &mut CausalLm, args: &Args) -> Result<(Trained, ParameterReport)> {
    let lora = LoraOptions {
        rank: args.rank,
        alpha: 2.0 * args.rank as f64,
        dropout: 0.0,
        target: args.targets.clone(),
        ..LoraOptions::default()
    };
    let section = match args.method {
        Method::Lora => MethodSection::Lora(lora),
        Method::Dora => MethodSection::Dora(lora),
        other => other.defaults(),
    };
    let Some(config) = section.adapter_config() else {
        // Every weight trains; counted before a tied head gets an id of its own.
        let total = peft_core::count_parameters(lm);
        let parameters = ParameterReport {
            trainable: total,
            total,
        };
        let (prepared, tied_head) = peft_train::full::prepare(lm.clone());
        *lm = prepared;
        return Ok((Trained::Full(tied_head), parameters));
    };
    let report = peft_core::attach_adapter(lm, DEFAULT_ADAPTER, &config)?;
    let trained = Trained::Adapter {
        name: DEFAULT_ADAPTER.into(),
        config: Box::new(report.config),
    };
    Ok((trained, ParameterReport::of(lm)))
}

/// Parameters of every projection (weights that take part in matrix multiplications).
fn matmul_parameters(lm: &CausalLm) -> f64 {
    lm.projections()
        .iter()
        .map(|(_, p)| (p.in_features() * p.out_features()) as f64)
        .sum()
}

fn random_batch(args: &Args, vocab: usize, device: &Device) -> Result<LmBatch> {
    let ids = Tensor::<2>::random(
        [args.batch, args.seq],
        Distribution::Uniform(0.0, vocab as f64),
        device,
    )
    .int()
    .clamp(0, vocab as i64 - 1);
    // Read once, before any timed step: the labels are the ids themselves.
    let labels = ids
        .to_data()
        .try_into_vec_as::<i64>()
        .map_err(|e| anyhow::anyhow!("cannot read the random batch: {e:?}"))?;
    Ok(LmBatch {
        input_ids: ids,
        attention_mask: Tensor::<2, Int>::ones([args.batch, args.seq], device),
        labels: HostLabels::new(labels, args.seq),
        learned_tokens: args.batch * (args.seq - 1),
        tokens: args.batch * args.seq,
        loss_weight: 1.0,
    })
}

fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|e| anyhow::anyhow!("device synchronisation failed: {e:?}"))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Forward-only tokens per second (inference mode), median of `steps` passes after warm-up.
fn forward_speed(lm: &CausalLm, batch: &LmBatch, args: &Args, device: &Device) -> Result<f64> {
    let ids = batch.input_ids.clone().inner();
    let mask = batch.attention_mask.clone().inner();
    let mut times = Vec::new();
    for pass in 0..args.warmup + args.steps {
        let start = Instant::now();
        let logits = lm.forward(ids.clone(), Some(&mask), None);
        drop(logits);
        sync(device)?;
        if pass >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok((args.batch * args.seq) as f64 / median(&mut times))
}

/// Greedy generation with the KV cache: new tokens per second after a 16-token prompt.
fn generation_speed(lm: &CausalLm, new_tokens: usize, device: &Device) -> Result<f64> {
    let prompt: Vec<u32> = (1..=16).collect();
    let config = SamplingConfig {
        max_new_tokens: new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
        eos_token_ids: Vec::new(),
    };
    // One untimed run compiles and autotunes the shapes generation uses.
    generate(lm, &prompt, &config, device, |_| Ok(()))?;
    let start = Instant::now();
    let produced = generate(lm, &prompt, &config, device, |_| Ok(()))?;
    Ok(produced.len() as f64 / start.elapsed().as_secs_f64())
}

/// Size of the adapter folder as `train` writes it.
fn saved_adapter_bytes(lm: &CausalLm, config: &AdapterConfig) -> Result<u64> {
    let dir = tempfile::tempdir()?;
    peft_core::save_adapter(lm, DEFAULT_ADAPTER, config, dir.path())?;
    let mut total = 0;
    for entry in std::fs::read_dir(dir.path())? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// The process's peak resident memory (`VmHWM`), Linux only.
fn process_peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("peak memory needs /proc/self/status (Linux)")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM line in /proc/self/status")?;
    Ok(kib * 1024)
}
