//! One optimizer step, as the trainer and `peft-cli bench` both take it: forward and backward
//! over each micro-batch (Burn's Learner), gradients summed, averaged and clipped by their
//! global norm, the schedule advanced, the optimizer applied. Nothing is read back from the
//! device: the loss and the norm stay tensors for the caller to read once (the trainer reads
//! them between the gradients and their application).

use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn::train::Learner;

use crate::batch::LmBatch;
use crate::clip::average_and_clip;
use crate::error::{Result, TrainError};
use crate::model::TrainableLm;

/// What one optimizer step computed.
pub struct StepOutput {
    /// Mean loss of the micro-batches, `[1]`.
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

/// One optimizer step's gradients, averaged and clipped but not applied yet: the trainer reads
/// the loss and norm first, so that a NaN leaves the weights as they were.
pub struct StepGradients {
    grads: GradientsParams,
    /// Mean loss of the micro-batches, `[1]`.
    pub loss: Tensor<1>,
    /// Global gradient norm before clipping, `[1]`.
    pub grad_norm: Tensor<1>,
    /// Real tokens processed.
    pub tokens: usize,
    /// Positions that contributed to the loss.
    pub learned_tokens: usize,
}

impl StepGradients {
    /// Advances the schedule and applies the optimizer.
    pub fn apply(self, learner: &mut Learner<TrainableLm>) -> StepOutput {
        learner.lr_step();
        let lr = learner.lr_current();
        learner.optimizer_step(self.grads);
        StepOutput {
            loss: self.loss,
            grad_norm: self.grad_norm,
            tokens: self.tokens,
            learned_tokens: self.learned_tokens,
            lr,
        }
    }
}

/// Takes one optimizer step over the micro-batches `batches`, clipping the global gradient
/// norm to `max_grad_norm` (0: no clipping).
pub fn optimizer_step(
    learner: &mut Learner<TrainableLm>,
    batches: impl IntoIterator<Item = LmBatch>,
    max_grad_norm: f64,
) -> Result<StepOutput> {
    Ok(step_gradients(learner, batches, max_grad_norm)?.apply(learner))
}

/// Forward and backward over the micro-batches `batches`: their gradients summed, averaged
/// and clipped to `max_grad_norm` (0: no clipping), not applied.
pub fn step_gradients(
    learner: &mut Learner<TrainableLm>,
    batches: impl IntoIterator<Item = LmBatch>,
    max_grad_norm: f64,
) -> Result<StepGradients> {
    let mut accumulator = GradientsAccumulator::new();
    let (mut losses, mut tokens, mut learned_tokens) = (Vec::new(), 0, 0);
    for batch in batches {
        let output = learner.train_step(batch);
        accumulator.accumulate(&learner.model(), output.grads);
        losses.push(output.item.loss);
        tokens += output.item.tokens;
        learned_tokens += output.item.learned_tokens;
    }
    let model = learner.model();
    let (grads, norm) = average_and_clip(&model, accumulator.grads(), losses.len(), max_grad_norm);
    let grad_norm = norm.ok_or_else(|| {
        TrainError::NothingToTrain(
            "the loss has no gradient with respect to any adapter tensor".into(),
        )
    })?;
    Ok(StepGradients {
        grads,
        loss: Tensor::cat(losses, 0).mean(),
        grad_norm,
        tokens,
        learned_tokens,
    })
}

/// AdamW with PyTorch's defaults (Burn's default epsilon and weight decay differ).
pub fn adamw(weight_decay: f64) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
}
