//! The training loop, as a custom learning strategy of Burn's `SupervisedTraining`: counted in
//! optimizer steps rather than epochs, with token-weighted gradient accumulation, global-norm clipping,
//! evaluation, checkpoints and guards. Burn's `Learner` runs the forward/backward passes and the
//! optimizer; Burn's event processor drives the dashboard.
//!
//! One Burn "epoch" here is one evaluation round: `eval_every` steps followed by a validation
//! pass (the whole run is one round without validation data).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use burn::train::{
    EventProcessorTraining, InferenceStep, Interrupter, Learner, LearnerEvent,
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents,
    TrainingItem, ValidLoader,
};
use peft_models::FolderFiles;

use crate::batch::ExampleLoader;
use crate::checkpoint::{self, ModelToSave, TrainerState};
use crate::data::BatchPlan;
use crate::error::{Result, TrainError};
use crate::metrics::MetricsLog;
use crate::model::{LmOutput, StepStats, TrainableLm};
use crate::plain::{eval_line, step_line};
use crate::step::step_gradients;

/// Step counts that shape the loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Last step.
    pub max_steps: usize,
    /// Steps already done (when resuming).
    pub start_step: usize,
    /// Steps per evaluation round.
    pub eval_every: usize,
    /// Save a checkpoint every this many steps.
    pub save_every: Option<usize>,
    /// Log every this many steps.
    pub log_every: usize,
    /// Global-norm clipping threshold (0: none).
    pub max_grad_norm: f64,
    /// Seed of the data order and of dropout.
    pub seed: u64,
    /// Step after which unchanged adapter weights draw a warning.
    pub check_change_at: usize,
}

impl LoopSettings {
    /// Number of evaluation rounds over the whole run.
    pub fn rounds(&self) -> usize {
        self.max_steps.div_ceil(self.eval_every)
    }

    /// The round that `step` (from 1) belongs to.
    pub fn round_of(&self, step: usize) -> usize {
        (step - 1) / self.eval_every + 1
    }
}

/// What the loop leaves behind for the caller.
#[derive(Debug, Default)]
pub struct LoopReport {
    /// Why it stopped early, if it did.
    pub error: Option<TrainError>,
    /// Warnings for the user.
    pub warnings: Vec<String>,
    /// Optimizer steps done (including those before a resume).
    pub steps: usize,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Last validation loss.
    pub last_eval_loss: Option<f64>,
    /// The last complete checkpoint.
    pub last_checkpoint: Option<std::path::PathBuf>,
}

/// The strategy handed to `SupervisedTraining::with_training_strategy`.
pub struct StepStrategy {
    /// The training device (with autodiff).
    pub device: Device,
    /// Training examples.
    pub train: ExampleLoader,
    /// The file they come from (for messages).
    pub data_path: std::path::PathBuf,
    /// Order of the training examples.
    pub plan: BatchPlan,
    /// Validation examples.
    pub valid: Option<ExampleLoader>,
    /// Step counts.
    pub settings: LoopSettings,
    /// Output folder.
    pub out: std::path::PathBuf,
    /// What a fully trained model's folder holds besides the weights (none when an adapter
    /// trains).
    pub folder_files: Option<Arc<FolderFiles>>,
    /// Filled in as the loop runs.
    pub report: Arc<Mutex<LoopReport>>,
    /// No dashboard: print a line per logged step and evaluation, and warnings as they come.
    pub plain_log: bool,
}

impl SupervisedLearningStrategy<TrainableLm> for StepStrategy {
    fn fit(
        &self,
        components: TrainingComponents<TrainableLm>,
        learner: Learner<TrainableLm>,
        _dataloader_train: TrainLoader<TrainableLm>,
        _dataloader_valid: ValidLoader<TrainableLm>,
        _starting_epoch: usize,
    ) -> (TrainableLm, SupervisedTrainingEventProcessor<TrainableLm>) {
        let interrupter = components.interrupter;
        let metrics = match MetricsLog::open(&self.out) {
            Ok(metrics) => metrics,
            Err(error) => {
                self.fail(&interrupter, error);
                return (learner.model(), components.event_processor);
            }
        };
        let mut run = Run {
            strategy: self,
            // Full fine-tuning moves every weight: keeping their starting values would double
            // the weights' memory for a check meant for adapters.
            initial: match learner.model().adapter() {
                Some(_) => trainable_tensors(&learner.model()),
                None => Vec::new(),
            },
            learner,
            processor: components.event_processor,
            interrupter,
            metrics,
            plan: self.plan.clone(),
        };
        if let Err(error) = run.run() {
            self.fail(&run.interrupter, error);
        }
        (run.learner.model(), run.processor)
    }
}

impl StepStrategy {
    /// Stops Burn's loop and keeps `error` for the caller.
    fn fail(&self, interrupter: &Interrupter, error: TrainError) {
        interrupter.stop(Some(&error.to_string()));
        self.lock_report().error = Some(error);
    }

    fn lock_report(&self) -> std::sync::MutexGuard<'_, LoopReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Run<'a> {
    strategy: &'a StepStrategy,
    learner: Learner<TrainableLm>,
    processor: SupervisedTrainingEventProcessor<TrainableLm>,
    interrupter: Interrupter,
    metrics: MetricsLog,
    /// The trainable tensors before the first step (device handles, for the "unchanged" guard).
    initial: Vec<Tensor<1>>,
    /// This run's cursor over the data order.
    plan: BatchPlan,
}

impl Run<'_> {
    fn run(&mut self) -> Result<()> {
        let s = &self.strategy.settings;
        let first_step = s.start_step + 1;
        if first_step > s.max_steps {
            return Ok(());
        }
        for round in s.round_of(first_step)..=s.rounds() {
            let begin = ((round - 1) * s.eval_every + 1).max(first_step);
            let end = (round * s.eval_every).min(s.max_steps);
            self.emit_train(LearnerEvent::StartSplit {
                epoch_number: round,
                total_items: end - begin + 1,
            })?;
            for step in begin..=end {
                self.train_step(
                    step,
                    Progress {
                        items_processed: step - begin + 1,
                        items_total: end - begin + 1,
                        unit: Some("steps".into()),
                    },
                )?;
                if self.interrupter.should_stop() {
                    // Stopped from the dashboard: the caller saves the adapter as it is.
                    return Ok(());
                }
            }
            self.emit_train(LearnerEvent::EndSplit(round))?;
            self.validate(round, end)?;
            self.emit_train(LearnerEvent::EndEpoch(round))?;
        }
        Ok(())
    }

    fn train_step(&mut self, step: usize, progress: Progress) -> Result<()> {
        let strategy = self.strategy;
        let s = &strategy.settings;
        let started = Instant::now();
        // Dropout draws from the device's generator; reseeding it from (seed, step) makes the
        // random state of every step reproducible after a resume.
        self.strategy.device.seed(mix(s.seed, step as u64));
        let saving = s.save_every.is_some_and(|n| step % n == 0) || step == s.max_steps;
        if saving {
            self.learner.model().snapshot.request();
        }
        let indices = self.plan.step_batches(step, s.grad_accum);
        let batches = indices.iter().map(|i| strategy.train.batch_of(i));
        let gradients = step_gradients(&mut self.learner, batches, s.max_grad_norm)?;
        // The one read per step: the loss (for the NaN guard and the log) and the norm, before
        // the update, so that a non-finite one leaves the adapter as it was.
        let values = Tensor::cat(vec![gradients.loss.clone(), gradients.grad_norm.clone()], 0)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Backend(format!("cannot read the loss: {e:?}")))?;
        let (loss_value, norm_value) = (values[0], values[1]);
        if !(loss_value.is_finite() && norm_value.is_finite()) {
            return Err(self.non_finite(step, loss_value, norm_value, &indices.concat()));
        }
        let output = gradients.apply(&mut self.learner)?;
        let (loss, lr) = (output.loss, output.lr);
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let stats = StepStats {
            loss: f64::from(loss_value),
            grad_norm: f64::from(norm_value),
            tokens_per_s: output.tokens as f64 / seconds,
            step_ms: seconds * 1e3,
        };
        {
            let mut report = self.lock_report();
            report.steps = step;
            report.last_loss = Some(stats.loss);
        }
        if step % s.log_every == 0 || step == s.max_steps {
            let base_lr = lr.base();
            self.metrics.step(step, &stats, base_lr)?;
            if self.strategy.plain_log {
                println!("{}", step_line(step, s.max_steps, &stats, base_lr));
            }
            let item = LmOutput {
                loss,
                learned_tokens: output.learned_tokens,
                tokens: output.tokens,
                stats: Some(stats),
            };
            self.emit_train(LearnerEvent::ProcessedItem(TrainingItem::new(
                item,
                progress,
                Some(step),
                Some(lr),
            )))?;
        }
        if step == s.check_change_at {
            self.warn_if_unchanged(step)?;
        }
        if saving {
            self.save_checkpoint(step)?;
        }
        Ok(())
    }

    fn validate(&mut self, round: usize, step: usize) -> Result<()> {
        let Some(valid) = &self.strategy.valid else {
            return Ok(());
        };
        let model = self.learner.model().valid();
        let total = valid.len();
        self.emit_valid(LearnerEvent::StartSplit {
            epoch_number: round,
            total_items: total,
        })?;
        let mut weighted = Vec::new();
        let mut learned_total = 0usize;
        let mut iterator = burn::data::dataloader::DataLoader::iter(valid);
        let mut iteration = 0;
        while let Some(batch) = iterator.next() {
            let batch = batch.map_err(|e| TrainError::Learner(e.to_string()))?;
            iteration += 1;
            let output = InferenceStep::step(&model, batch);
            learned_total += output.learned_tokens;
            weighted.push(output.loss.clone() * output.learned_tokens as f64);
            let progress = iterator.progress();
            self.emit_valid(LearnerEvent::ProcessedItem(TrainingItem::new(
                output,
                progress,
                Some(iteration),
                None,
            )))?;
        }
        self.emit_valid(LearnerEvent::EndSplit(round))?;
        if learned_total == 0 {
            return Ok(());
        }
        let eval_loss = (Tensor::cat(weighted, 0).sum() / learned_total as f64)
            .try_into_scalar::<f64>()
            .map_err(|e| TrainError::Backend(format!("cannot read the validation loss: {e:?}")))?;
        self.lock_report().last_eval_loss = Some(eval_loss);
        self.metrics.eval(step, eval_loss)?;
        if self.strategy.plain_log {
            println!("{}", eval_line(step, eval_loss));
        }
        Ok(())
    }

    fn save_checkpoint(&mut self, step: usize) -> Result<()> {
        let model = self.learner.model();
        let optimizer = model.snapshot.take().ok_or_else(|| {
            TrainError::Learner(format!(
                "the optimizer state of step {step} was not captured for its checkpoint"
            ))
        })?;
        let state = TrainerState {
            step,
            micro_batches: self
                .plan
                .micro_batches_through(step, self.strategy.settings.grad_accum),
            seed: self.strategy.settings.seed,
        };
        let dir = checkpoint::save(
            &self.strategy.out,
            // The model's own copy of the adapter's config: the method may have updated it
            // while training (AdaLoRA's rank pattern).
            &ModelToSave {
                model: &model,
                files: self.strategy.folder_files.as_deref(),
            },
            optimizer,
            &state,
        )?;
        self.lock_report().last_checkpoint = Some(dir);
        Ok(())
    }

    fn warn_if_unchanged(&mut self, step: usize) -> Result<()> {
        if self.initial.is_empty() {
            return Ok(());
        }
        // One scalar read: the total absolute change of every trainable tensor.
        let moved: Vec<Tensor<1>> = trainable_tensors(&self.learner.model())
            .into_iter()
            .zip(&self.initial)
            .map(|(now, before)| (now - before.clone()).abs().sum())
            .collect();
        let moved = Tensor::cat(moved, 0)
            .sum()
            .try_into_scalar::<f32>()
            .map_err(|e| TrainError::Backend(format!("cannot read the adapter change: {e:?}")))?;
        if moved == 0.0 {
            let warning = format!(
                "the adapter weights have not changed after {step} optimizer steps: check the \
                 learning rate, the warmup and that the data has completion tokens"
            );
            if self.strategy.plain_log {
                eprintln!("warning: {warning}");
            }
            self.lock_report().warnings.push(warning);
        }
        Ok(())
    }

    fn lock_report(&self) -> std::sync::MutexGuard<'_, LoopReport> {
        self.strategy.lock_report()
    }

    /// The error for a non-finite loss or gradient norm at `step`: the data lines of its
    /// micro-batches, the first adapter tensor that holds NaN or an infinity (the update was
    /// not applied, so this is the state the step started from) and the last good checkpoint.
    fn non_finite(&self, step: usize, loss: f32, grad_norm: f32, indices: &[usize]) -> TrainError {
        let model = self.learner.model();
        let weights = match model.adapter() {
            Some((name, _)) => first_non_finite_adapter_tensor(&model.lm, name),
            None => "full fine-tuning: the loss, the learning rate or the batch's tokens \
                     produced it"
                .into(),
        };
        let last_good = match &self.lock_report().last_checkpoint {
            Some(dir) => format!("the last good checkpoint is {}", dir.display()),
            None => "no checkpoint was saved before it".into(),
        };
        TrainError::NonFiniteLoss {
            step,
            loss,
            grad_norm,
            batch: format!(
                "lines {} of {}",
                self.strategy.train.lines_of(indices),
                self.strategy.data_path.display()
            ),
            weights,
            last_good,
        }
    }

    fn emit_train(&mut self, event: LearnerEvent<LmOutput>) -> Result<()> {
        self.processor
            .process_train(event)
            .map_err(|e| TrainError::Learner(e.to_string()))
    }

    fn emit_valid(&mut self, event: LearnerEvent<LmOutput>) -> Result<()> {
        self.processor
            .process_valid(event)
            .map_err(|e| TrainError::Learner(e.to_string()))
    }
}

/// Which adapter tensor of `lm` holds NaN or an infinity, in a sentence.
fn first_non_finite_adapter_tensor(lm: &peft_models::CausalLm, name: &str) -> String {
    match peft_core::adapter_folder::adapter_tensors(lm, name, None) {
        Ok(tensors) => match tensors
            .iter()
            .find_map(|(key, t)| t.first_non_finite().map(|(i, v)| (key, i, v)))
        {
            Some((key, index, value)) => {
                format!("adapter tensor {key} already held {value} at flat index {index}")
            }
            None => "every adapter tensor was finite: the base model or the batch's tokens \
                     produced it (or the learning rate is too high)"
                .into(),
        },
        Err(e) => format!("the adapter tensors could not be read: {e}"),
    }
}

/// Handles to the trainable (adapter) tensors of `model`, flattened and detached; no data moves.
fn trainable_tensors(model: &TrainableLm) -> Vec<Tensor<1>> {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0.push(param.val().detach().flatten(0, D - 1));
            }
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// A per-step seed from the run's seed (splitmix64's finaliser, so neighbouring steps get
/// unrelated streams).
fn mix(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
