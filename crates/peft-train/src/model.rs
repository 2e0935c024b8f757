//! The model as Burn's Learner sees it: a causal LM with adapters, its training and
//! validation steps, and what each step reports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::tensor::Tensor;
use burn::train::metric::{Adaptor, ItemLazy};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use peft_core::method::api::OptimizerStep;
use peft_core::{AdapterConfig, ProjectionHost};
use peft_models::checkpointing::layer_seed;
use peft_models::loss::lm_loss;
use peft_models::CausalLm;

use crate::batch::LmBatch;
use crate::error::TrainError;
use crate::full::TiedHead;

/// What a run trains.
#[derive(Clone, Debug)]
pub enum Trained {
    /// The adapter `name` (configured as `config`), whose method may add to the loss and act
    /// after each optimizer step; the base weights are frozen.
    Adapter {
        /// Its name on the model.
        name: String,
        /// Its configuration.
        config: Box<AdapterConfig>,
    },
    /// Every weight (full fine-tuning), the output head tied to the embedding where the
    /// model ties them.
    Full(Option<TiedHead>),
}

/// A causal LM as the Learner trains it: with an adapter whose tensors alone train (the base
/// weights frozen, `require_grad = false`, so Burn computes gradients and keeps optimizer
/// state for the adapter only), or with every weight trained.
#[derive(Module, Debug)]
pub struct TrainableLm {
    /// The model, with the adapter attached when one trains.
    pub lm: CausalLm,
    /// What trains.
    #[module(skip)]
    pub trained: Trained,
    /// Where the optimizer's state is copied when a checkpoint asks for it.
    #[module(skip)]
    pub snapshot: OptimizerSnapshot,
    /// Optimizer steps taken (those before a resume included), which the adapter's method
    /// may schedule its work by.
    #[module(skip)]
    pub steps_taken: usize,
    /// What went wrong in the method's work after the last optimizer step, for the loop to
    /// report (Burn's optimizer hook cannot return an error).
    #[module(skip)]
    pub after_step_error: AfterStepError,
    /// With per-layer activation checkpointing, the seed its dropout replay starts from
    /// ([`TrainableLm::with_gradient_checkpointing`]); `None` keeps every activation.
    #[module(skip)]
    pub gradient_checkpointing: Option<u64>,
    /// Micro-batches run since the last optimizer step: each draws its own dropout masks.
    #[module(skip)]
    micro_batches: MicroBatchCount,
}

impl TrainableLm {
    /// `lm` training what `trained` says: its adapter (attached and active), or every weight
    /// (prepared by [`crate::full::prepare`]).
    pub fn new(lm: CausalLm, trained: Trained) -> Self {
        Self {
            lm,
            trained,
            snapshot: OptimizerSnapshot::default(),
            steps_taken: 0,
            after_step_error: AfterStepError::default(),
            gradient_checkpointing: None,
            micro_batches: MicroBatchCount::default(),
        }
    }

    /// The same model, its training steps with per-layer activation checkpointing when `on`
    /// (see [`peft_models::checkpointing`]), dropout replayed from masks seeded by `seed`, the
    /// step and the micro-batch. Refused for prefix tuning, whose keys and values enter every
    /// layer.
    pub fn with_gradient_checkpointing(
        mut self,
        on: bool,
        seed: u64,
    ) -> crate::error::Result<Self> {
        if on && self.lm.model_adapters().prefix_active() {
            return Err(TrainError::InvalidValue {
                key: "training.gradient_checkpointing".into(),
                message: "prefix tuning puts its keys and values into every layer; train it \
                          without checkpointing"
                    .into(),
            });
        }
        self.gradient_checkpointing = on.then_some(seed);
        Ok(self)
    }

    /// The adapter trained, with its configuration as the method last updated it (AdaLoRA's
    /// rank pattern); none in full fine-tuning.
    pub fn adapter(&self) -> Option<(&str, &AdapterConfig)> {
        match &self.trained {
            Trained::Adapter { name, config } => Some((name, &**config)),
            Trained::Full(_) => None,
        }
    }

    /// The model as it is saved: a tied head tied again in full fine-tuning.
    pub fn to_save(&self) -> CausalLm {
        match &self.trained {
            Trained::Full(Some(tied)) => tied.retie(self.lm.clone()),
            _ => self.lm.clone(),
        }
    }

    /// Makes `grads` the gradients of the weights as the optimizer steps them (a tied head's
    /// added to the embedding's).
    pub fn fold_gradients(&self, grads: &mut GradientsParams) {
        if let Trained::Full(Some(tied)) = &self.trained {
            tied.fold_gradients(grads);
        }
    }

    /// The same model, `steps` optimizer steps into its run (when resuming).
    pub fn with_steps_taken(mut self, steps: usize) -> Self {
        self.steps_taken = steps;
        self
    }

    /// Mean next-token loss of `batch` `[1]`.
    pub fn lm_loss(&self, batch: &LmBatch) -> Tensor<1> {
        lm_loss(
            &self.lm,
            batch.input_ids.clone(),
            Some(&batch.attention_mask),
            &batch.labels,
        )
    }

    /// The training loss of `batch` `[1]`: [`Self::lm_loss`] plus the term the adapter's
    /// method adds (AdaLoRA's orthogonality regulariser).
    pub fn loss(&self, batch: &LmBatch) -> Tensor<1> {
        let loss = self.lm_loss(batch);
        match self.extra_loss() {
            Some(term) => loss + term,
            None => loss,
        }
    }

    /// The term the adapter's method adds to the loss, if any.
    fn extra_loss(&self) -> Option<Tensor<1>> {
        self.adapter()
            .and_then(|(name, config)| peft_core::adapters::extra_loss(&self.lm, name, config))
    }

    /// [`TrainStep::step`] with per-layer activation checkpointing: the gradients of every
    /// backward pass summed, the method's term taken in one more.
    fn checkpointed_step(&self, batch: LmBatch, seed: u64) -> TrainOutput<LmOutput> {
        let weight = batch.loss_weight;
        // Each step and micro-batch its own masks, the same again after a resume.
        let micro_batch = self.micro_batches.next();
        let step_seed = layer_seed(seed, (self.steps_taken << 16) + micro_batch);
        let layerwise = self.lm.layerwise_backward(
            batch.input_ids.clone(),
            Some(&batch.attention_mask),
            &batch.labels,
            weight,
            step_seed,
        );
        let mut loss = layerwise.loss;
        let mut passes = layerwise.passes;
        if let Some(extra) = self.extra_loss().map(|term| term.mul_scalar(weight)) {
            passes.push(extra.backward());
            loss = loss + extra.detach();
        }
        let mut summed = GradientsAccumulator::new();
        for grads in passes {
            summed.accumulate(self, GradientsParams::from_grads(grads, self));
        }
        TrainOutput {
            grads: summed.grads(),
            item: self.output(&batch, loss),
        }
    }

    fn output(&self, batch: &LmBatch, loss: Tensor<1>) -> LmOutput {
        LmOutput {
            loss,
            learned_tokens: batch.learned_tokens,
            tokens: batch.tokens,
            stats: None,
        }
    }
}

impl TrainStep for TrainableLm {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> TrainOutput<LmOutput> {
        if let Some(seed) = self.gradient_checkpointing {
            return self.checkpointed_step(batch, seed);
        }
        let loss = self.loss(&batch).mul_scalar(batch.loss_weight);
        let grads = loss.backward();
        let output = self.output(&batch, loss.detach());
        TrainOutput::new(self, grads, output)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        let snapshot = self.snapshot.clone();
        let acts = self
            .adapter()
            .is_some_and(|(_, config)| config.acts_after_optimizer_step());
        let applied = acts.then(|| copy_gradients(&self, &grads));
        self.micro_batches.reset();
        let mut model = optim.step(lr, self, grads);
        match (&mut model.trained, applied) {
            (Trained::Adapter { name, config }, Some(grads)) => {
                let step = OptimizerStep {
                    before: model.steps_taken,
                    grads: &grads,
                };
                if let Err(error) =
                    peft_core::adapters::after_optimizer_step(&mut model.lm, name, config, &step)
                {
                    model.after_step_error.set(error.to_string());
                }
            }
            (Trained::Full(Some(tied)), _) => tied.refresh(&mut model.lm),
            _ => {}
        }
        model.steps_taken += 1;
        snapshot.offer(optim);
        model
    }
}

impl InferenceStep for TrainableLm {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> LmOutput {
        let loss = self.lm_loss(&batch);
        self.output(&batch, loss)
    }
}

/// Handles to the gradients of `model`'s parameters in `grads` (no data is copied), for the
/// method's work after the optimizer has consumed `grads`.
fn copy_gradients<M: Module>(model: &M, grads: &GradientsParams) -> GradientsParams {
    struct Copy<'a> {
        from: &'a GradientsParams,
        to: GradientsParams,
    }
    impl ModuleVisitor for Copy<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.from.get::<D>(param.id) {
                self.to.register(param.id, grad);
            }
        }
    }
    let mut copy = Copy {
        from: grads,
        to: GradientsParams::new(),
    };
    model.visit(&mut copy);
    copy.to
}

/// A count of micro-batches shared by the clones of one model (Burn's `Learner` steps a clone).
#[derive(Clone, Default)]
struct MicroBatchCount(Arc<AtomicUsize>);

impl MicroBatchCount {
    /// The count before this call, counting this call.
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for MicroBatchCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MicroBatchCount")
    }
}

/// The error of the method's work after an optimizer step, shared between the model Burn's
/// `Learner` holds and the training loop.
#[derive(Clone, Default)]
pub struct AfterStepError(Arc<Mutex<Option<String>>>);

impl AfterStepError {
    fn set(&self, message: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    /// The error of the last step, if any (taken: a second call returns none).
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl std::fmt::Debug for AfterStepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterStepError")
    }
}

/// A copy of the optimizer's state taken right after an optimizer step, on request. Burn's
/// `Learner` owns the optimizer and offers no accessor; its `optimize` hook (above) is the one
/// place the optimizer is reachable, so checkpoints get the state through here.
#[derive(Clone, Default)]
pub struct OptimizerSnapshot(Arc<Mutex<SnapshotSlot>>);

#[derive(Default)]
struct SnapshotSlot {
    wanted: bool,
    record: Option<OptimizerRecord>,
}

impl OptimizerSnapshot {
    /// Asks for the state after the next optimizer step.
    pub fn request(&self) {
        self.lock().wanted = true;
    }

    /// The state taken after the requested step, if any.
    pub fn take(&self) -> Option<OptimizerRecord> {
        self.lock().record.take()
    }

    fn offer(&self, optim: &ModuleOptimizer) {
        let mut slot = self.lock();
        if std::mem::take(&mut slot.wanted) {
            slot.record = Some(optim.to_record());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SnapshotSlot> {
        // The slot holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for OptimizerSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OptimizerSnapshot")
    }
}

/// What one step reports: the loss (per micro-batch, or averaged over an optimizer step) and,
/// for optimizer steps, the host-side statistics the training loop computed.
#[derive(Debug, Clone)]
pub struct LmOutput {
    /// Mean loss `[1]`.
    pub loss: Tensor<1>,
    /// Positions that contributed to the loss.
    pub learned_tokens: usize,
    /// Real tokens processed.
    pub tokens: usize,
    /// Set on the item the training loop reports once per optimizer step.
    pub stats: Option<StepStats>,
}

/// Host-side numbers of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Loss averaged over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed per second over the step.
    pub tokens_per_s: f64,
    /// The step's wall time, in milliseconds.
    pub step_ms: f64,
}

impl ItemLazy for LmOutput {
    fn sync(self) -> Result<Self, burn::tensor::ExecutionError> {
        Ok(self)
    }
}

impl Adaptor<LmOutput> for LmOutput {
    fn adapt(&self) -> LmOutput {
        self.clone()
    }
}
