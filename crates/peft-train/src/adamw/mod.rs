//! The training optimizer: AdamW with PyTorch's defaults, computed as Burn's `AdamW` computes it
//! and keeping Burn's `AdamWState` (so checkpoints hold the same optimizer record), with each
//! tensor's update as one parallel pass on flex f32 tensors. Composed of Burn's tensor operations
//! the update is a dozen single-threaded passes over the parameter, its gradient and both moments
//! on flex, and each allocates: for full fine-tuning that is a quarter of the calling thread's
//! time in a step.

#[cfg(feature = "flex")]
mod flex;
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
mod rule;

use burn::optim::{AdamW, AdamWConfig, AdamWState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

use self::rule::Constants;

/// AdamW with PyTorch's defaults (betas 0.9 and 0.999, epsilon 1e-8) and a decoupled weight decay.
#[derive(Clone)]
pub struct TrainingAdamW {
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    constants: Constants,
    /// Burn's AdamW with the same constants, for tensors the fused pass does not take.
    composed: AdamW,
}

impl TrainingAdamW {
    /// AdamW with `weight_decay` (decoupled, as `torch.optim.AdamW`).
    pub fn new(weight_decay: f64) -> Self {
        let constants = Constants {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: weight_decay as f32,
        };
        let composed = AdamWConfig::new()
            .with_beta_1(constants.beta_1)
            .with_beta_2(constants.beta_2)
            .with_epsilon(constants.epsilon)
            .with_weight_decay(constants.weight_decay)
            .build();
        Self {
            constants,
            composed,
        }
    }

    /// This optimizer over a whole module.
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for TrainingAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        #[cfg(feature = "flex")]
        let (tensor, grad, state) = match flex::step(self.constants, lr, tensor, grad, state) {
            Ok((tensor, state)) => return (tensor, Some(state)),
            Err(declined) => *declined,
        };
        self.composed.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}
