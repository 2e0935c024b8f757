//! AdamW's constants and its update of one element, in the order Burn's `AdamW` computes it.

use burn::optim::LearningRate;

/// AdamW's constants, as one tensor's update uses them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Constants {
    /// The first moment's decay.
    pub beta_1: f32,
    /// The second moment's decay.
    pub beta_2: f32,
    /// Added to `√v̂` in the denominator.
    pub epsilon: f32,
    /// The decoupled weight decay, per unit of learning rate.
    pub weight_decay: f32,
}

/// One step's update of one element, in Burn's `AdamW` order: the moments, their bias
/// correction, `m̂ / (√v̂ + ε)`, the decay of the parameter and the step by the learning rate.
#[derive(Clone, Copy)]
pub(super) struct Rule {
    beta_1: f32,
    beta_2: f32,
    factor_1: f32,
    factor_2: f32,
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    /// `1 − lr·weight_decay`, when there is a decay.
    keep: Option<f32>,
    lr: f32,
}

impl Rule {
    /// The update of step `time` (1 for the first) at the learning rate `lr`.
    pub(super) fn new(constants: Constants, lr: LearningRate, time: usize) -> Self {
        let Constants {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } = constants;
        let time = i32::try_from(time).unwrap_or(i32::MAX);
        let decay_rate = lr * f64::from(weight_decay);
        Self {
            beta_1,
            beta_2,
            factor_1: 1.0 - beta_1,
            factor_2: 1.0 - beta_2,
            correction_1: 1.0 - beta_1.powi(time),
            correction_2: 1.0 - beta_2.powi(time),
            epsilon,
            keep: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
            lr: lr as f32,
        }
    }

    /// The new parameter from `p` and its gradient `g`; the moments `m` and `v` are updated.
    #[inline(always)]
    pub(super) fn apply(&self, p: f32, g: f32, m: &mut f32, v: &mut f32) -> f32 {
        *m = *m * self.beta_1 + g * self.factor_1;
        *v = *v * self.beta_2 + (g * g) * self.factor_2;
        let delta = (*m / self.correction_1) / ((*v / self.correction_2).sqrt() + self.epsilon);
        let decayed = self.keep.map_or(p, |keep| p * keep);
        decayed - delta * self.lr
    }
}
