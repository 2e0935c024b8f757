//! The fit: Burn's `SupervisedTraining` with the step-counted loop of [`crate::strategy`], its
//! metrics and dashboard (or plain log lines without a terminal), resumed from a checkpoint's
//! optimizer state when there is one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use burn::train::metric::LearningRateMetric;
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use peft_models::FolderFiles;

use super::inputs::Trainee;
use crate::batch::ExampleLoader;
use crate::checkpoint::{self, TrainerState};
use crate::config::{TrainConfig, TrainingSection};
use crate::data::BatchPlan;
use crate::error::{Result, TrainError};
use crate::metrics::{LmMetric, LmQuantity};
use crate::model::{TrainableLm, Trained};
use crate::plain;
use crate::schedule::{learning_rates, WarmupSchedule};
use crate::step::optimizer;
use crate::strategy::{LoopReport, LoopSettings, StepStrategy};

/// A finished fit.
pub(super) struct Fitted {
    /// The trained model (adapter attached when one trained), with what it trained (the
    /// adapter's configuration as its method left it).
    pub model: TrainableLm,
    /// What the fully trained model's folder holds besides the weights.
    pub folder_files: Option<Arc<FolderFiles>>,
    /// The loop's counts, losses and warnings.
    pub report: LoopReport,
    /// The step a resumed run started from.
    pub resumed_from: Option<usize>,
}

/// Runs the training loop on `trainee`, from the checkpoint in `resume_from` if any.
pub(super) fn fit(
    config: &TrainConfig,
    trainee: Trainee,
    device: &Device,
    resume_from: Option<(TrainerState, PathBuf)>,
) -> Result<Fitted> {
    let t = &config.training;
    let Trainee {
        lm,
        mut trained,
        folder_files,
        eos_id,
        train,
        valid,
    } = trainee;
    let plan = BatchPlan::new(train.len(), t.batch_size, t.seed);
    // One optimizer step's micro-batches are gathered before it runs: more than an epoch
    // holds is a typo (an absurd value would exhaust memory or never finish a step).
    if t.grad_accum > plan.batches_per_epoch() {
        return Err(TrainError::InvalidValue {
            key: "training.grad_accum".into(),
            message: format!(
                "{} is more than the {} batches of {} in one epoch of the training data; at most {}",
                t.grad_accum,
                plan.batches_per_epoch(),
                t.batch_size,
                plan.batches_per_epoch()
            ),
        });
    }
    // The data position follows from the step; a state that says otherwise was edited.
    if let Some((state, dir)) = &resume_from {
        let expected = plan.micro_batches_through(state.step, t.grad_accum);
        if state.micro_batches != expected {
            return Err(TrainError::Resume {
                path: dir.join(checkpoint::STATE_FILE),
                message: format!(
                    "`micro_batches` is {}, but {} steps of {} micro-batches over this data \
                     make {expected}",
                    state.micro_batches, state.step, t.grad_accum
                ),
            });
        }
    }
    let start_step = resume_from.as_ref().map_or(0, |(state, _)| state.step);
    let has_valid = !valid.is_empty();
    let settings = loop_settings(t, &plan, has_valid, start_step);
    if let Trained::Adapter { config, .. } = &mut trained {
        config.prepare_training(settings.max_steps, resume_from.is_some())?;
    }
    let folder_files = folder_files.map(Arc::new);
    let loader = |examples, device: Device| {
        ExampleLoader::new(Arc::new(examples), t.batch_size, eos_id, device)
    };
    let train_loader = loader(train, device.clone());
    let valid_loader = loader(valid, device.clone().inner());
    let report = Arc::new(Mutex::new(LoopReport::default()));
    let plain_log = !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let strategy = StepStrategy {
        device: device.clone(),
        train: train_loader.clone(),
        data_path: config.data.train.clone().unwrap_or_default(),
        plan,
        valid: has_valid.then(|| valid_loader.clone()),
        settings: settings.clone(),
        out: t.out.clone(),
        folder_files: folder_files.clone(),
        report: report.clone(),
        plain_log,
    };
    let model = TrainableLm::new(lm, trained)
        .with_steps_taken(start_step)
        // A packed base trains layer by layer: autodiff would otherwise keep every layer's
        // expanded weights until backward.
        .with_gradient_checkpointing(
            t.gradient_checkpointing || config.model.quantize.is_some(),
            t.seed,
        )?;
    let schedule = WarmupSchedule::new(
        t.lr,
        t.warmup_steps,
        settings.max_steps,
        t.schedule,
        start_step,
    );
    let rates = learning_rates(schedule, config.method.loraplus_lr_ratio());
    let mut learner = Learner::new(model, optimizer(t.weight_decay), rates);
    if let Some((_, dir)) = &resume_from {
        learner.load_optim(checkpoint::read_optimizer(dir)?);
    }
    let training = supervised_training(
        &t.out,
        (train_loader, valid_loader),
        &settings,
        strategy,
        plain_log,
    );
    let result = training.launch(learner);
    let mut report = std::mem::take(&mut *report.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(error) = report.error.take() {
        return Err(error);
    }
    if let Some(error) = result.error {
        return Err(TrainError::Learner(error.to_string()));
    }
    report.steps = report.steps.max(start_step);
    Ok(Fitted {
        model: result.model,
        folder_files,
        report,
        resumed_from: resume_from.map(|(state, _)| state.step),
    })
}

/// Burn's training with the run's metrics, the loop of `strategy`, the dashboard (or nothing
/// drawn, the loop printing plain lines) and, when resuming, the round to start from.
fn supervised_training(
    out: &std::path::Path,
    (train, valid): (ExampleLoader, ExampleLoader),
    settings: &LoopSettings,
    strategy: StepStrategy,
    plain_log: bool,
) -> SupervisedTraining<TrainableLm> {
    let mut training = SupervisedTraining::new(out, Arc::new(train), Arc::new(valid))
        .metric_train_numeric(LmMetric::new(LmQuantity::Loss))
        .metric_train_numeric(LmMetric::new(LmQuantity::Perplexity))
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(LmMetric::new(LmQuantity::TokensPerSecond))
        .metric_train_numeric(LmMetric::new(LmQuantity::GradNorm))
        .metric_valid_numeric(LmMetric::new(LmQuantity::Loss))
        .metric_valid_numeric(LmMetric::new(LmQuantity::Perplexity))
        .num_epochs(settings.rounds())
        // Burn's application logger is process-global (and installs a panic hook); errors
        // reach the user through the run's result instead.
        .with_application_logger(None)
        .label(&format!(
            "{} steps, evaluation every {}",
            settings.max_steps, settings.eval_every
        ))
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)));
    if plain_log {
        training = training.renderer(Box::new(plain::QuietRenderer));
    }
    if settings.start_step > 0 {
        training =
            training.checkpoint(settings.round_of(settings.start_step + 1).saturating_sub(1));
    }
    training
}

/// The loop's step counts: `max_steps`, else `epochs` passes of `plan`'s micro-batches.
fn loop_settings(
    t: &TrainingSection,
    plan: &BatchPlan,
    has_valid: bool,
    start_step: usize,
) -> LoopSettings {
    let max_steps = t
        .max_steps
        .unwrap_or_else(|| t.epochs.unwrap_or(1) * plan.steps_per_epoch(t.grad_accum));
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
