//! `peft-cli train`: train an adapter from a TOML configuration, with flags overriding it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use peft_train::checkpoint::CONFIG_FILE;
use peft_train::config::Schedule;
use peft_train::{TestScores, TrainConfig, TrainError};

use super::dtype::Dtype;
use super::method::MethodFlags;
use super::QuantizeChoice;
use crate::backend::{self, BackendChoice};

/// Options of `train`; each one overrides the configuration file's value.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training configuration (TOML; see configs/README.md). Optional when flags give the
    /// model and the data.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Continue the run in DIR from its last complete checkpoint; its saved configuration is
    /// the starting point, and other flags still override it (e.g. a larger --max-steps).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Compute backend [default: the configuration's `model.backend`, else auto].
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Base model: a Hugging Face folder, a .gguf file (llama, qwen2, qwen3, gemma, phi3), or
    /// `smollm2-135m-instruct` (see `peft-cli inspect --help` for what each reads).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// QLoRA: keep the base's linear weights packed in 4- or 8-bit blocks (a GGUF's Q4_0,
    /// Q4_1 and Q8_0 blocks as stored, other weights quantized as they load) and train layer by
    /// layer, so that only one layer's weights are expanded to f32 at a time
    /// [default: the configuration's `model.quantize`, else off]. Not with full fine-tuning or
    /// prefix tuning.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeChoice>,
    /// Float type of the frozen base's weights and of the computation through it: adapters,
    /// their gradients and AdamW's state stay f32 (each adapter casts its input to f32 and
    /// its result back, as PEFT does), logits are upcast to f32 for the loss. bf16 and f16
    /// need a backend that computes in them (flex, cuda) [default: the configuration's
    /// `model.dtype`, else f32]. Not with full fine-tuning or --quantize.
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Continue training a saved adapter (a PEFT adapter folder, ours or Hugging Face PEFT's),
    /// as PEFT's is_trainable=True loads it: its adapter_config.json is the method, so the
    /// method flags (--method, --rank, ...) are refused with it.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Training data, JSONL: {"text"}, {"prompt","completion"} or {"messages":[...]} per line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: Option<PathBuf>,
    /// Validation data, JSONL (same formats).
    #[arg(long, value_name = "FILE.jsonl")]
    pub valid: Option<PathBuf>,
    /// Held-out JSONL scored before and after training (loss, perplexity, exact match of greedy
    /// answers); the scores are printed and written to <out>/test_scores.json.
    #[arg(long, value_name = "FILE.jsonl")]
    pub test: Option<PathBuf>,
    /// Hold out this fraction of the training data for validation when --valid is not given.
    #[arg(long, value_name = "F")]
    pub valid_fraction: Option<f64>,
    /// The PEFT method and its options.
    #[command(flatten)]
    pub method: MethodFlags,
    /// Peak learning rate [default: 2e-4].
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Sequences per micro-batch [default: 4].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step: the loss is the mean over all their labelled tokens,
    /// as in transformers' Trainer; an epoch's last step takes the micro-batches left
    /// [default: 1].
    #[arg(long, value_name = "K")]
    pub grad_accum: Option<usize>,
    /// Optimizer steps to run (takes precedence over --epochs).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Passes over the training data [default: 1 when --max-steps is not given].
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Longest sequence in tokens; longer examples are truncated [default: 512].
    #[arg(long, value_name = "T")]
    pub seq_len: Option<usize>,
    /// Concatenate examples into full --seq-len rows instead of padding each one.
    #[arg(long)]
    pub packing: bool,
    /// Steps of linear warmup from 0 to --lr [default: 0].
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<usize>,
    /// Learning-rate shape after warmup [default: linear].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// AdamW weight decay [default: 0].
    #[arg(long, value_name = "W")]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to G; 0 disables [default: 1].
    #[arg(long, value_name = "G")]
    pub max_grad_norm: Option<f64>,
    /// Keep only each decoder layer's input for backward and recompute the layer there, as
    /// transformers' gradient checkpointing does: the activations of one layer instead of all of
    /// them, for one more forward pass per step; dropout masks are drawn again alike. Not with
    /// prefix tuning.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Seed of initialisation, data order and dropout [default: 42].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Evaluate on the validation data every N steps (and at the end).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long, value_name = "N")]
    pub save_every: Option<usize>,
    /// Log metrics every N steps [default: 1].
    #[arg(long, value_name = "N")]
    pub log_every: Option<usize>,
    /// Output folder: metrics.jsonl, checkpoint-<step>/, final/ [default: runs/adapter].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `--schedule`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ScheduleArg {
    /// Half a cosine down to 0.
    Cosine,
    /// Straight line down to 0.
    Linear,
    /// Stay at the peak.
    Constant,
}

impl Args {
    /// The configuration: the resumed run's or the file's (or defaults), then the flags.
    fn config(&self) -> Result<TrainConfig> {
        let mut c = match (&self.config, &self.resume) {
            (Some(file), _) => TrainConfig::from_file(file)?,
            (None, Some(dir)) => TrainConfig::from_file(&dir.join(CONFIG_FILE))
                .with_context(|| format!("{} is not a training output folder", dir.display()))?,
            (None, None) => TrainConfig::default(),
        };
        some(&mut c.model.path, &self.model);
        if let Some(quantize) = self.quantize {
            c.model.quantize = Some(quantize.config());
        }
        if let Some(dtype) = self.dtype {
            c.model.dtype = Some(dtype.config());
        }
        some(&mut c.data.train, &self.data);
        some(&mut c.data.valid, &self.valid);
        set(&mut c.data.valid_fraction, &self.valid_fraction);
        self.method.apply(&mut c.method)?;
        some(&mut c.model.adapter, &self.adapter);
        if c.model.adapter.is_some() {
            if let Some(flag) = self.method.first_given() {
                bail!(
                    "{flag} cannot be combined with --adapter: the adapter's adapter_config.json \
                     sets the method and its options"
                );
            }
        }
        let t = &mut c.training;
        set(&mut t.lr, &self.lr);
        set(&mut t.batch_size, &self.batch_size);
        set(&mut t.grad_accum, &self.grad_accum);
        some(&mut t.max_steps, &self.max_steps);
        some(&mut t.epochs, &self.epochs);
        if self.max_steps.is_none() && self.epochs.is_some() {
            t.max_steps = None;
        }
        set(&mut c.data.seq_len, &self.seq_len);
        some(&mut c.test.data, &self.test);
        c.data.packing |= self.packing;
        set(&mut t.warmup_steps, &self.warmup_steps);
        if let Some(s) = self.schedule {
            t.schedule = match s {
                ScheduleArg::Cosine => Schedule::Cosine,
                ScheduleArg::Linear => Schedule::Linear,
                ScheduleArg::Constant => Schedule::Constant,
            };
        }
        set(&mut t.weight_decay, &self.weight_decay);
        set(&mut t.max_grad_norm, &self.max_grad_norm);
        t.gradient_checkpointing |= self.gradient_checkpointing;
        set(&mut t.seed, &self.seed);
        some(&mut t.eval_every, &self.eval_every);
        some(&mut t.save_every, &self.save_every);
        set(&mut t.log_every, &self.log_every);
        if let Some(dir) = &self.resume {
            t.out = dir.clone();
        }
        set(&mut t.out, &self.out);
        Ok(c)
    }
}

/// `slot = value` when the flag was given.
fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *slot = v.clone();
    }
}

/// `slot = value` for optional settings, when the flag was given.
fn some<T: Clone>(slot: &mut Option<T>, value: &Option<T>) {
    if value.is_some() {
        slot.clone_from(value);
    }
}

/// Trains, then says where the adapter (or the fully trained model) is and how it went.
pub fn run(args: Args) -> Result<()> {
    let config = args.config()?;
    let choice = match (args.backend, &config.model.backend) {
        (Some(b), _) => b,
        (None, Some(name)) => BackendChoice::from_str(name, true).map_err(|_| {
            anyhow::anyhow!(
                "invalid `model.backend` {name:?}: expected one of auto, ndarray, flex, wgpu, cuda"
            )
        })?,
        (None, None) => BackendChoice::Auto,
    };
    let selected = backend::select(choice)?;
    eprintln!("backend: {}", selected.description);
    if let Some(dtype) = config.model.dtype {
        selected.check_dtype(dtype.float_dtype())?;
    }
    let summary = peft_train::train(&config, &selected.device, args.resume.is_some())
        .map_err(with_flag_hint)?;
    if let Some(step) = summary.resumed_from {
        println!("resumed from step {step}");
    }
    println!("{}", summary.parameters);
    match summary.last_loss {
        Some(loss) => println!("steps: {}, final loss: {loss:.4}", summary.steps),
        None => println!("steps: {}", summary.steps),
    }
    if let Some(test) = &summary.test {
        print!("{}", test_comparison(&config, test));
    }
    if let Some(eval) = summary.last_eval_loss {
        println!("eval loss: {eval:.4}, eval perplexity: {:.3}", eval.exp());
    }
    // Without a terminal the trainer printed its warnings as they came; the dashboard hid them.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        for warning in &summary.warnings {
            eprintln!("warning: {warning}");
        }
    }
    let saved = match config.method.method() {
        peft_train::config::Method::Full => "model",
        _ => "adapter",
    };
    println!("{saved}: {}", summary.final_adapter.display());
    Ok(())
}

/// A configuration error with the flag that sets the key, where one does.
fn with_flag_hint(error: TrainError) -> anyhow::Error {
    let hint = match &error {
        TrainError::InvalidValue { key, .. } => match key.as_str() {
            "model.path" => " (set it or pass --model)",
            "data.train" => " (set it or pass --data)",
            "training.out" => "; pass --resume to continue it or choose another --out",
            _ => "",
        },
        _ => "",
    };
    match hint {
        "" => error.into(),
        // `InvalidValue` has no source to keep.
        hint => anyhow::anyhow!("{error}{hint}"),
    }
}

/// The `[test]` scores before and after training, side by side.
fn test_comparison(config: &TrainConfig, test: &TestScores) -> String {
    let (before, after) = (&test.before, &test.after);
    let percent = |r: &peft_train::eval::EvalReport| {
        r.exact_match
            .map_or("-".to_string(), |m| format!("{:.1}%", 100.0 * m))
    };
    let path = config
        .test
        .data
        .as_deref()
        .unwrap_or(std::path::Path::new("?"));
    format!(
        "test set {} ({} examples):\n{:<14}{:>10}{:>10}\n{:<14}{:>10}{:>10}\n{:<14}{:>10.4}{:>10.4}\n{:<14}{:>10.3}{:>10.3}\nscores: {}\n",
        path.display(),
        after.examples,
        "",
        "before",
        "after",
        "exact match",
        percent(before),
        percent(after),
        "loss",
        before.loss,
        after.loss,
        "perplexity",
        before.perplexity,
        after.perplexity,
        config.training.out.join(TestScores::FILE).display(),
    )
}
