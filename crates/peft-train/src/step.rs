//! One optimizer step, as the trainer and `peft-cli bench` both take it: forward and backward
//! over each micro-batch (Burn's Learner), each micro-batch's loss weighted by its share of the
//! step's labelled tokens (transformers' `Trainer` ≥ 4.46 divides every micro-batch's summed
//! token losses by the labelled tokens of the whole step), gradients summed and clipped by their
//! global norm, the schedule advanced, the optimizer applied. Nothing is read back from the
//! device: the loss and the norm stay tensors for the caller to read once (the trainer reads
//! them between the gradients and their application).

use burn::module::ParamGroup;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use burn::train::Learner;

use crate::adamw::TrainingAdamW;
use crate::batch::LmBatch;
use crate::clip::clip_by_global_norm;
use crate::error::{Result, TrainError};
use crate::model::TrainableLm;

/// What one optimizer step computed.
pub struct StepOutput {
    /// Mean loss over the step's labelled tokens, `[1]`.
    pub loss: Tensor<1>,
    /// Global gradient norm before clipping, `[1]`.
    pub grad_norm: Tensor<1>,
    /// Real tokens processed.
    pub tokens: usize,
    /// Positions that contributed to the loss.
    pub learned_tokens: usize,
    /// The learning rate the step used.
    pub lr: ModuleLearningRate,
}

/// One optimizer step's gradients, clipped but not applied yet: the trainer reads the loss and
/// norm first, so that a NaN leaves the weights as they were.
pub struct StepGradients {
    grads: GradientsParams,
    /// Mean loss over the step's labelled tokens, `[1]`.
    pub loss: Tensor<1>,
    /// Global gradient norm before clipping, `[1]`.
    pub grad_norm: Tensor<1>,
    /// Real tokens processed.
    pub tokens: usize,
    /// Positions that contributed to the loss.
    pub learned_tokens: usize,
}

impl StepGradients {
    /// The summed, clipped gradients, by parameter id, as the optimizer will apply them.
    pub fn gradients(&self) -> &GradientsParams {
        &self.grads
    }

    /// Advances the schedule and applies the optimizer (and the adapter method's work after
    /// it, whose error this returns).
    pub fn apply(self, learner: &mut Learner<TrainableLm>) -> Result<StepOutput> {
        learner.lr_step();
        let lr = learner.lr_current();
        learner.optimizer_step(self.grads);
        if let Some(message) = learner.model().after_step_error.take() {
            return Err(TrainError::Learner(message));
        }
        Ok(StepOutput {
            loss: self.loss,
            grad_norm: self.grad_norm,
            tokens: self.tokens,
            learned_tokens: self.learned_tokens,
            lr,
        })
    }
}

/// Takes one optimizer step over the micro-batches `batches`, clipping the global gradient
/// norm to `max_grad_norm` (0: no clipping).
pub fn optimizer_step(
    learner: &mut Learner<TrainableLm>,
    batches: impl IntoIterator<Item = LmBatch>,
    max_grad_norm: f64,
) -> Result<StepOutput> {
    step_gradients(learner, batches, max_grad_norm)?.apply(learner)
}

/// Forward and backward over the micro-batches `batches`, each loss weighted by the batch's
/// share of the step's labelled tokens, gradients summed and clipped to `max_grad_norm` (0: no
/// clipping), not applied. A micro-batch without labelled tokens adds nothing (as in `Trainer`)
/// and is skipped, unless no micro-batch has any: then each weighs the same, and the loss is
/// transformers' NaN.
pub fn step_gradients(
    learner: &mut Learner<TrainableLm>,
    batches: impl IntoIterator<Item = LmBatch>,
    max_grad_norm: f64,
) -> Result<StepGradients> {
    let mut batches: Vec<LmBatch> = batches.into_iter().collect();
    let learned: usize = batches.iter().map(|b| b.learned_tokens).sum();
    if learned > 0 {
        batches.retain(|b| b.learned_tokens > 0);
    }
    let count = batches.len();
    let mut accumulator = GradientsAccumulator::new();
    let (mut losses, mut tokens) = (Vec::new(), 0);
    for mut batch in batches {
        batch.loss_weight = if learned > 0 {
            batch.learned_tokens as f32 / learned as f32
        } else {
            1.0 / count as f32
        };
        let output = learner.train_step(batch);
        accumulator.accumulate(&learner.model(), output.grads);
        losses.push(output.item.loss);
        tokens += output.item.tokens;
    }
    let model = learner.model();
    let mut grads = accumulator.grads();
    model.fold_gradients(&mut grads);
    let (grads, norm) = clip_by_global_norm(&model, grads, max_grad_norm);
    let grad_norm = norm.ok_or_else(|| {
        TrainError::NothingToTrain(
            "the loss has no gradient with respect to any trained tensor".into(),
        )
    })?;
    Ok(StepGradients {
        grads,
        loss: Tensor::cat(losses, 0).sum(),
        grad_norm,
        tokens,
        learned_tokens: learned,
    })
}

/// Parameters transformers' `Trainer` exempts from weight decay (`get_decay_parameter_names`:
/// biases and normalisation weights, by name), matched against Burn's parameter paths
/// (`…down.bias`, a bottleneck adapter's `…norm.weight`, a layer norm's `…layer_norm.gamma`).
const NO_DECAY: &str = r"bias|layernorm|rmsnorm|(^|\.)norm($|\.)|_norm($|\.)";

/// The training optimizer: AdamW with PyTorch's defaults and `weight_decay` on every trained
/// tensor but biases and normalisation weights, as `Trainer` groups them.
pub fn optimizer(weight_decay: f64) -> ModuleOptimizer {
    let optimizer = adamw(weight_decay).init();
    if weight_decay == 0.0 {
        return optimizer;
    }
    let no_decay = ParamGroup::from_regex(NO_DECAY).expect("the no-decay pattern is a valid regex");
    optimizer.with_group(no_decay, adamw(0.0), None)
}

/// AdamW with PyTorch's defaults (Burn's default epsilon and weight decay differ).
pub fn adamw(weight_decay: f64) -> TrainingAdamW {
    TrainingAdamW::new(weight_decay)
}
