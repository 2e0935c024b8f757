//! Training adapters on a frozen base model with Burn's Learner.
//!
//! [`train`] loads the model and data a [`TrainConfig`] names, attaches the adapter (or restores
//! it from the last checkpoint), and runs Burn's `SupervisedTraining` with the step-counted
//! loop of [`strategy`]: only adapter tensors get gradients and optimizer state, gradients are
//! averaged over accumulation and clipped by their global norm, and the run leaves
//! `metrics.jsonl`, atomic checkpoints and the final adapter in PEFT's format.

pub mod batch;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod model;
pub mod plain;
pub mod schedule;
pub mod strategy;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::tensor::Device;
use burn::train::metric::LearningRateMetric;
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use peft_core::ParameterReport;
use peft_models::{CausalLm, LoadedModel, TextTokenizer};

pub use config::TrainConfig;
pub use error::{Result, TrainError};

use crate::batch::ExampleLoader;
use crate::checkpoint::TrainerState;
use crate::data::{BatchPlan, Example, Tokenization};
use crate::eval::{EvalReport, EvalSettings, Evaluator};
use crate::metrics::{LmMetric, LmQuantity};
use crate::model::{OptimizerSnapshot, TrainableLm};
use crate::schedule::WarmupSchedule;
use crate::strategy::{LoopReport, LoopSettings, StepStrategy};

/// Name of the adapter being trained (PEFT's default).
pub const ADAPTER_NAME: &str = "default";
/// Folder of the final adapter inside the output folder.
pub const FINAL_DIR: &str = "final";

/// LoRA-family adapters rarely learn anything below this learning rate.
const LOWEST_USEFUL_LR: f64 = 1e-5;

/// What a finished run produced.
#[derive(Debug)]
pub struct TrainSummary {
    /// The trained model (adapter attached, out of autodiff).
    pub model: CausalLm,
    /// Optimizer steps completed, counting those before a resume.
    pub steps: usize,
    /// Where the final adapter was saved.
    pub final_adapter: PathBuf,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Last validation loss.
    pub last_eval_loss: Option<f64>,
    /// Trainable and total parameters.
    pub parameters: ParameterReport,
    /// Warnings about the run (also printed when they happen without a dashboard).
    pub warnings: Vec<String>,
    /// The step a resumed run started from.
    pub resumed_from: Option<usize>,
    /// `[test]` scored with the base model before training and the adapter after it.
    pub test: Option<TestScores>,
}

/// The `[test]` file scored before and after training.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestScores {
    /// The base model.
    pub before: EvalReport,
    /// The base model with the trained adapter.
    pub after: EvalReport,
}

impl TestScores {
    /// Where [`train`] writes them, under the output folder.
    pub const FILE: &'static str = "test_scores.json";
}

/// Trains the adapter `config` describes on `device`; with `resume`, continues from the last
/// complete checkpoint in the output folder.
pub fn train(config: &TrainConfig, device: &Device, resume: bool) -> Result<TrainSummary> {
    config.validate()?;
    let t = &config.training;
    let out = t.out.clone();
    let resume_from = prepare_output(config, resume)?;
    let device = if device.is_autodiff() {
        device.clone()
    } else {
        device.clone().autodiff()
    };
    device.seed(t.seed);

    let model_path = config.model.path.as_deref().expect("validated");
    let loaded = peft_models::load_model(model_path, &device)?;
    let eos = eos_id(&loaded)?;
    let (train_examples, valid_examples) = load_examples(config, &loaded, eos)?;
    let stop_ids = eval::stop_ids(&loaded)?;
    let inference_device = device.clone().inner();
    let test = TestRun {
        config,
        // Borrowed from the field so that the model can move out below; `load_examples`
        // already failed if there is no tokenizer.
        tokenizer: loaded
            .tokenizer
            .as_ref()
            .expect("load_examples needs the tokenizer"),
        stop_ids: &stop_ids,
        device: &inference_device,
    };
    let test_before = test.score(&loaded.model.valid(), "base model")?;
    let mut lm = loaded.model;
    let adapter_config = attach(&mut lm, config, test.tokenizer, resume_from.as_ref())?;
    let parameters = ParameterReport::of(&lm);
    if parameters.trainable == 0 {
        return Err(TrainError::NothingToTrain(
            "the adapter adds no trainable tensor to this model".into(),
        ));
    }
    let plain_log = !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut warnings = Vec::new();
    let mut warn = |warning: String| {
        if plain_log {
            eprintln!("warning: {warning}");
        }
        warnings.push(warning);
    };
    if t.lr < LOWEST_USEFUL_LR {
        warn(format!(
            "learning rate {} is far below what LoRA needs (typically 1e-4 to 1e-3); the \
             adapter will barely move",
            t.lr
        ));
    }
    if resume_from.is_some()
        && matches!(&adapter_config, peft_core::AdapterConfig::PrefixTuning(c) if c.prefix_projection)
    {
        warn(
            "checkpoints hold the prefix with its MLP folded in (as PEFT saves it); training \
             continues on the folded prefix with fresh optimizer state for it"
                .into(),
        );
    }

    let plan = BatchPlan::new(train_examples.len(), t.batch_size, t.seed);
    let start_step = resume_from.as_ref().map_or(0, |(state, _)| state.step);
    let has_valid = !valid_examples.is_empty();
    let settings = loop_settings(t, &plan, has_valid, start_step);
    let loader = |examples, device: Device| {
        ExampleLoader::new(Arc::new(examples), t.batch_size, eos, device)
    };
    let train_loader = loader(train_examples, device.clone());
    let valid_loader = loader(valid_examples, device.clone().inner());
    let report = Arc::new(Mutex::new(LoopReport::default()));
    let strategy = StepStrategy {
        device: device.clone(),
        train: train_loader.clone(),
        plan,
        valid: has_valid.then(|| valid_loader.clone()),
        settings: settings.clone(),
        out: out.clone(),
        adapter: (ADAPTER_NAME.to_string(), adapter_config.clone()),
        report: report.clone(),
        plain_log,
    };

    let model = TrainableLm {
        lm,
        snapshot: OptimizerSnapshot::default(),
    };
    let schedule = WarmupSchedule::new(
        t.lr,
        t.warmup_steps,
        settings.max_steps,
        t.schedule,
        start_step,
    );
    let mut learner = Learner::new(model, adamw(t.weight_decay).init(), schedule);
    if let Some((_, dir)) = &resume_from {
        learner.load_optim(checkpoint::read_optimizer(dir)?);
    }
    let mut training =
        SupervisedTraining::new(&out, Arc::new(train_loader), Arc::new(valid_loader))
            .metric_train_numeric(LmMetric::new(LmQuantity::Loss))
            .metric_train_numeric(LmMetric::new(LmQuantity::Perplexity))
            .metric_train_numeric(LearningRateMetric::new())
            .metric_train_numeric(LmMetric::new(LmQuantity::TokensPerSecond))
            .metric_train_numeric(LmMetric::new(LmQuantity::GradNorm))
            .metric_valid_numeric(LmMetric::new(LmQuantity::Loss))
            .metric_valid_numeric(LmMetric::new(LmQuantity::Perplexity))
            .num_epochs(settings.rounds())
            // Burn's application logger is process-global (and installs a panic hook); errors
            // reach the user through this function's result instead.
            .with_application_logger(None)
            .label(&format!(
                "{} steps, evaluation every {}",
                settings.max_steps, settings.eval_every
            ))
            .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)));
    if plain_log {
        training = training.renderer(Box::new(plain::QuietRenderer));
    }
    if start_step > 0 {
        training = training.checkpoint(settings.round_of(start_step + 1).saturating_sub(1));
    }
    let result = training.launch(learner);

    let mut report = std::mem::take(&mut *report.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(error) = report.error.take() {
        return Err(error);
    }
    if let Some(error) = result.error {
        return Err(TrainError::Learner(error.to_string()));
    }
    let lm = result.model.lm;
    let final_adapter = out.join(FINAL_DIR);
    checkpoint::save_adapter_folder(
        &final_adapter,
        &checkpoint::AdapterToSave {
            model: &lm,
            name: ADAPTER_NAME,
            config: &adapter_config,
        },
    )?;
    warnings.extend(report.warnings);
    let test = match test_before {
        Some(before) => {
            // Scored with the adapter folded into a copy of the weights where the method
            // merges: the same function up to float rounding, and generation runs as fast as
            // the base model's.
            let mut scored = lm.valid();
            let what = if peft_core::active_adapter_merges(&scored) {
                peft_core::merge_and_unload(&mut scored, true)?;
                "trained adapter (merged into a copy of the weights)"
            } else {
                "trained adapter"
            };
            let after = test.score(&scored, what)?.expect("[test] is set");
            let scores = TestScores { before, after };
            let json = serde_json::to_string_pretty(&scores).expect("scores serialise");
            peft_core::format::write_atomic(&out.join(TestScores::FILE), json.as_bytes())?;
            Some(scores)
        }
        None => None,
    };
    Ok(TrainSummary {
        model: lm,
        steps: report.steps.max(start_step),
        final_adapter,
        last_loss: report.last_loss,
        last_eval_loss: report.last_eval_loss,
        parameters,
        warnings,
        resumed_from: resume_from.map(|(state, _)| state.step),
        test,
    })
}

/// What scoring `[test]` needs.
struct TestRun<'a> {
    config: &'a TrainConfig,
    tokenizer: &'a TextTokenizer,
    stop_ids: &'a [u32],
    device: &'a Device,
}

impl TestRun<'_> {
    /// Scores `[test]` (when set) with `model` (in inference mode), telling the user which
    /// model is being scored.
    fn score(&self, model: &CausalLm, what: &str) -> Result<Option<EvalReport>> {
        let Some(path) = &self.config.test.data else {
            return Ok(None);
        };
        eprintln!("scoring {} with the {what}", path.display());
        let records = data::read_jsonl(path)?;
        let evaluator = Evaluator {
            model,
            tokenizer: self.tokenizer,
            eos_token_ids: self.stop_ids.to_vec(),
            device: self.device,
        };
        let settings = EvalSettings {
            seq_len: self.config.data.seq_len,
            batch_size: self.config.training.batch_size,
            max_new_tokens: self.config.test.max_new_tokens,
            limit: self.config.test.limit,
            generate: true,
        };
        evaluator.run(path, &records, &settings).map(Some)
    }
}

/// Attaches a fresh adapter, or the checkpoint's when resuming; returns its configuration
/// (as attached, with the model's defaults filled in, so that checkpoints describe the tensors
/// they hold).
fn attach(
    lm: &mut CausalLm,
    config: &TrainConfig,
    tokenizer: &TextTokenizer,
    resume_from: Option<&(TrainerState, PathBuf)>,
) -> Result<peft_core::AdapterConfig> {
    match resume_from {
        Some((_, dir)) => Ok(peft_core::load_adapter(lm, ADAPTER_NAME, dir)?),
        None => {
            let mut adapter = config.method.adapter_config();
            tokenize_init_text(&mut adapter, tokenizer)?;
            Ok(peft_core::attach_adapter(lm, ADAPTER_NAME, &adapter)?.config)
        }
    }
}

/// Gives a prompt-tuning config that starts from text the text's token ids, tokenized as PEFT
/// tokenizes it (with the tokenizer's special tokens).
pub fn tokenize_init_text(
    config: &mut peft_core::AdapterConfig,
    tokenizer: &TextTokenizer,
) -> Result<()> {
    if let peft_core::AdapterConfig::PromptTuning(c) = config {
        if let Some(text) = &c.prompt_tuning_init_text {
            c.init_token_ids = Some(tokenizer.encode(text, true)?);
        }
    }
    Ok(())
}

/// The loop's step counts: `max_steps`, else `epochs` passes of `plan`'s micro-batches.
fn loop_settings(
    t: &config::TrainingSection,
    plan: &BatchPlan,
    has_valid: bool,
    start_step: usize,
) -> LoopSettings {
    let max_steps = t
        .max_steps
        .unwrap_or_else(|| t.epochs.unwrap_or(1) * plan.batches_per_epoch().div_ceil(t.grad_accum));
    LoopSettings {
        grad_accum: t.grad_accum,
        max_steps,
        start_step,
        eval_every: t.eval_every.filter(|_| has_valid).unwrap_or(max_steps),
        save_every: t.save_every,
        log_every: t.log_every,
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
        check_change_at: (t.warmup_steps + 2).min(max_steps),
    }
}

/// AdamW with PyTorch's defaults (Burn's default epsilon and weight decay differ).
pub fn adamw(weight_decay: f64) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
}

/// Creates the output folder and saves the run's configuration in it; refuses to overwrite an
/// earlier run's checkpoints unless resuming; when resuming, finds the checkpoint and checks
/// that the adapter settings are the run's.
fn prepare_output(config: &TrainConfig, resume: bool) -> Result<Option<(TrainerState, PathBuf)>> {
    let out = &config.training.out;
    let latest = checkpoint::latest(out)?;
    if resume {
        let Some((state, dir)) = latest else {
            return Err(TrainError::Resume {
                path: out.to_path_buf(),
                message:
                    "it holds no complete checkpoint (checkpoint-<step>/ with trainer_state.json)"
                        .into(),
            });
        };
        let saved = TrainConfig::from_file(&out.join(checkpoint::CONFIG_FILE))?;
        if saved.method != config.method {
            return Err(TrainError::Resume {
                path: out.to_path_buf(),
                message: format!(
                    "the adapter settings cannot change on resume: the run has {:?}, this \
                     configuration {:?}",
                    saved.method, config.method
                ),
            });
        }
        checkpoint::truncate_metrics(out, state.step)?;
        return Ok(Some((state, dir)));
    }
    if let Some((_, dir)) = latest {
        return Err(TrainError::InvalidValue {
            key: "training.out".into(),
            message: format!(
                "{} already holds a run ({}); pass --resume to continue it or choose another --out",
                out.display(),
                dir.display()
            ),
        });
    }
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_file(out.join(metrics::MetricsLog::FILE));
    peft_core::format::write_atomic(
        &out.join(checkpoint::CONFIG_FILE),
        config.to_toml().as_bytes(),
    )?;
    Ok(None)
}

/// The id appended to every training example: the model's first EOS id, else its tokenizer's.
pub(crate) fn eos_id(loaded: &LoadedModel) -> Result<u32> {
    if let Some(&id) = loaded.eos_token_ids.first() {
        return Ok(id);
    }
    let tokenizer = loaded.tokenizer()?;
    tokenizer
        .eos_token
        .as_deref()
        .and_then(|t| tokenizer.token_to_id(t))
        .ok_or_else(|| TrainError::InvalidValue {
            key: "model.path".into(),
            message: format!(
                "{} names no end-of-sequence token (generation_config.json eos_token_id or \
                     tokenizer_config.json eos_token), which training appends to every example",
                loaded.source.display()
            ),
        })
}

fn load_examples(
    config: &TrainConfig,
    loaded: &LoadedModel,
    eos_id: u32,
) -> Result<(Vec<Example>, Vec<Example>)> {
    let tokenizer = loaded.tokenizer()?;
    let tokenization = Tokenization {
        tokenizer,
        eos_id,
        seq_len: config.data.seq_len,
    };
    let read = |path: &Path| -> Result<Vec<Example>> {
        let records = data::read_jsonl(path)?;
        let examples = tokenization.examples(path, &records)?;
        let examples = if config.data.packing {
            data::pack(&examples, config.data.seq_len)
        } else {
            examples
        };
        if examples.is_empty() {
            return Err(TrainError::EmptyData(format!(
                "{}: no example left to learn from ({} records; an example needs at least one \
                 completion token within data.seq_len = {})",
                path.display(),
                records.len(),
                config.data.seq_len
            )));
        }
        Ok(examples)
    };
    let train_path = config.data.train.as_deref().expect("validated");
    let train = read(train_path)?;
    match (&config.data.valid, config.data.valid_fraction) {
        (Some(valid), _) => Ok((train, read(valid)?)),
        (None, f) if f > 0.0 && train.len() > 1 => {
            Ok(data::split_valid(train, f, config.training.seed))
        }
        _ => Ok((train, Vec::new())),
    }
}
