//! AdaLoRA's rank allocation during training, as PEFT's `RankAllocator` and
//! `AdaLoraModel.update_and_allocate` do it after each optimizer step: every parameter's
//! sensitivity `|w · ∇w|` smoothed by `beta1` and its uncertainty by `beta2`; a total rank
//! budget falling cubically from the initial ranks to `target_r` per target between `tinit`
//! and `total_step − tfinal`; every `deltaT` steps the singular values (`lora_E` entries) whose
//! triplet score ranks below the budget are zeroed; at `total_step − tfinal` the final pattern
//! is fixed, and it is reapplied after every later step.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Tensor, TensorData};

use super::config::AdaLoraConfig;
use crate::error::{PeftError, Result};
use crate::method::api::OptimizerStep;

/// What the allocation keeps about one layer between optimizer steps (not saved).
#[derive(Clone, Debug, Default)]
pub struct Allocation {
    /// Smoothed sensitivities of `A`, `E` and `B`; none before the first step and after the
    /// final allocation (PEFT's `reset_ipt`).
    scores: Option<TripletScores>,
    /// Which singular values the last allocation kept; none before the first.
    pub(super) kept: Option<Vec<bool>>,
}

/// PEFT's `exp_avg_ipt` and `exp_avg_unc` of one parameter.
#[derive(Clone, Debug)]
struct Smoothed<const D: usize> {
    importance: Tensor<D>,
    uncertainty: Tensor<D>,
}

impl<const D: usize> Smoothed<D> {
    fn zeros_like(t: &Tensor<D>) -> Self {
        Self {
            importance: t.zeros_like(),
            uncertainty: t.zeros_like(),
        }
    }

    /// Folds in this step's sensitivity `|w · ∇w|` (PEFT's `update_ipt`).
    fn update(self, sensitivity: Tensor<D>, beta1: f64, beta2: f64) -> Self {
        let importance = self.importance * beta1 + sensitivity.clone() * (1.0 - beta1);
        let uncertainty =
            self.uncertainty * beta2 + (sensitivity - importance.clone()).abs() * (1.0 - beta2);
        Self {
            importance,
            uncertainty,
        }
    }

    /// PEFT's `_element_score`.
    fn score(&self) -> Tensor<D> {
        self.importance.clone() * self.uncertainty.clone()
    }
}

/// The smoothed sensitivities of one layer's `A` `[in, r]`, `E` `[r]` and `B` `[r, out]`.
#[derive(Clone, Debug)]
struct TripletScores {
    a: Smoothed<2>,
    e: Smoothed<1>,
    b: Smoothed<2>,
}

impl TripletScores {
    /// Each singular value's score `[r]`: its own plus the means of its row of `A` and its
    /// column of `B` (PEFT's `_combine_ipt`, summed in PEFT's order).
    fn per_rank(&self) -> Tensor<1> {
        let a = self.a.score().mean_dim(0).flatten::<1>(0, 1);
        let b = self.b.score().mean_dim(1).flatten::<1>(0, 1);
        self.e.score() + (a + b)
    }
}

/// `|w · ∇w|` of a parameter, off the autodiff graph (zero where it has no gradient).
fn sensitivity<const D: usize>(param: &Param<Tensor<D>>, grads: &GradientsParams) -> Tensor<D> {
    let value = param.val().inner();
    match grads.get::<D>(param.id) {
        Some(grad) => (value * grad).abs(),
        None => value.zeros_like(),
    }
}

/// One layer as the allocation sees it: its key, its `A` `[in, r]`, `E` `[r]` and `B`
/// `[r, out]`, and its allocation state.
pub(super) struct Triplet<'a> {
    pub key: &'a str,
    pub a: &'a Param<Tensor<2>>,
    pub e: &'a mut Param<Tensor<1>>,
    pub b: &'a Param<Tensor<2>>,
    pub state: &'a mut Allocation,
}

impl Triplet<'_> {
    /// The number of singular values.
    fn rank(&self) -> usize {
        self.e.dims()[0]
    }

    /// Folds this step's sensitivities into the layer's smoothed scores.
    fn observe(&mut self, grads: &GradientsParams, beta1: f64, beta2: f64) {
        let (a, e, b) = (
            sensitivity(self.a, grads),
            sensitivity(self.e, grads),
            sensitivity(self.b, grads),
        );
        let before = self.state.scores.take().unwrap_or_else(|| TripletScores {
            a: Smoothed::zeros_like(&a),
            e: Smoothed::zeros_like(&e),
            b: Smoothed::zeros_like(&b),
        });
        self.state.scores = Some(TripletScores {
            a: before.a.update(a, beta1, beta2),
            e: before.e.update(e, beta1, beta2),
            b: before.b.update(b, beta1, beta2),
        });
    }

    /// Zeroes the singular values `kept` leaves out, keeping the parameter's id and its
    /// place in the autodiff graph (as PEFT's in-place `masked_fill_`).
    fn mask_singular_values(&mut self, kept: &[bool]) {
        let pruned: Vec<bool> = kept.iter().map(|k| !k).collect();
        *self.e = self.e.clone().map(|e| {
            let (tracked, trained) = (e.is_autodiff(), e.is_require_grad());
            let value = e.inner();
            let pruned = Tensor::<1, Bool>::from_data(
                TensorData::new(pruned, [kept.len()]),
                &value.device(),
            );
            let masked = value.mask_fill(pruned, 0.0);
            match (tracked, trained) {
                (true, true) => Tensor::from_inner(masked).require_grad(),
                (true, false) => Tensor::from_inner(masked),
                _ => masked,
            }
        });
        self.state.kept = Some(kept.to_vec());
    }
}

/// The total rank budget at PEFT's `global_step` `step` and whether the step masks (PEFT's
/// `budget_schedule`): `init` until `tinit`, then falling cubically to `target` at
/// `total − tfinal`, masking every `deltaT` steps; `target` and masking every step after.
pub fn budget_schedule(
    config: &AdaLoraConfig,
    total: usize,
    (init, target): (usize, usize),
    step: usize,
) -> (usize, bool) {
    let (tinit, tfinal) = (config.tinit, config.tfinal);
    if step <= tinit {
        (init, false)
    } else if step + tfinal > total {
        (target, true)
    } else {
        let progress = (step - tinit) as f64 / (total - tfinal - tinit) as f64;
        let remaining = (1.0 - progress).powf(3.0);
        // Python's int() of a non-negative float: truncation.
        let budget = (init.saturating_sub(target)) as f64 * remaining + target as f64;
        (budget as usize, step % config.delta_t == 0)
    }
}

/// PEFT's `update_and_allocate(global_step)` over the layers of one adapter, recording the
/// rank pattern in `config`.
pub(super) fn update_and_allocate(
    config: &mut AdaLoraConfig,
    layers: &mut [Triplet<'_>],
    step: &OptimizerStep<'_>,
) -> Result<()> {
    let total = config.total_step.ok_or_else(|| PeftError::Config {
        field: "total_step".into(),
        message: "not set: the rank budget needs the run's step count".into(),
    })?;
    let budgets = (
        layers.iter().map(Triplet::rank).sum::<usize>(),
        config.target_r * layers.len(),
    );
    let end = total.saturating_sub(config.tfinal);
    let now = step.before;
    if now < end {
        for layer in layers.iter_mut() {
            layer.observe(step.grads, config.beta1, config.beta2);
        }
        let (budget, masks) = budget_schedule(config, total, budgets, now);
        if masks {
            config.rank_pattern = Some(mask_to_budget(layers, budgets.0 - budget)?);
        }
    } else if now == end {
        let (budget, _) = budget_schedule(config, total, budgets, now);
        config.rank_pattern = Some(mask_to_budget(layers, budgets.0 - budget)?);
        for layer in layers.iter_mut() {
            layer.state.scores = None;
        }
    } else {
        for layer in layers.iter_mut() {
            if let Some(kept) = layer.state.kept.clone() {
                layer.mask_singular_values(&kept);
            }
        }
    }
    Ok(())
}

/// Zeroes the `pruned` lowest-scored singular values over all layers (ties at the threshold
/// included, as PEFT's `<=`), and returns the pattern of those kept by PEFT's parameter name.
/// Reads the scores (one value per singular value) back once.
fn mask_to_budget(
    layers: &mut [Triplet<'_>],
    pruned: usize,
) -> Result<BTreeMap<String, Vec<bool>>> {
    let scores = layers
        .iter()
        .map(|l| {
            l.state
                .scores
                .as_ref()
                .map(TripletScores::per_rank)
                .ok_or_else(|| {
                    PeftError::State(format!(
                        "{}: no sensitivity observed before allocating ranks",
                        l.key
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let scores = Tensor::cat(scores, 0)
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| PeftError::Backend(format!("cannot read AdaLoRA's scores: {e:?}")))?;
    let threshold = (pruned > 0).then(|| {
        let mut sorted = scores.clone();
        sorted.sort_by(f32::total_cmp);
        sorted[pruned.min(sorted.len()) - 1]
    });
    let mut pattern = BTreeMap::new();
    let mut offset = 0;
    for layer in layers.iter_mut() {
        let rank = layer.rank();
        // Written as PEFT's mask (`score <= threshold`) negated, so that a NaN score is kept
        // as PEFT keeps it.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let kept: Vec<bool> = scores[offset..offset + rank]
            .iter()
            .map(|s| threshold.is_none_or(|t| !(*s <= t)))
            .collect();
        offset += rank;
        layer.mask_singular_values(&kept);
        pattern.insert(AdaLoraConfig::pattern_key(layer.key), kept);
    }
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn config() -> AdaLoraConfig {
        AdaLoraConfig {
            init_r: 2,
            target_r: 1,
            total_step: Some(3),
            tinit: 0,
            tfinal: 1,
            delta_t: 1,
            beta1: 0.5,
            beta2: 0.5,
            ..AdaLoraConfig::default()
        }
    }

    fn tensor<const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), &Device::flex())
    }

    /// The trained tensors of a layer `[in 1, out 1]` of rank 2, all ones, and its state.
    struct Layer {
        a: Param<Tensor<2>>,
        e: Param<Tensor<1>>,
        b: Param<Tensor<2>>,
        state: Allocation,
    }

    impl Layer {
        fn new() -> Self {
            Self {
                a: Param::from_tensor(tensor(&[1., 1.], [1, 2])),
                e: Param::from_tensor(tensor(&[1., 1.], [2])),
                b: Param::from_tensor(tensor(&[1., 1.], [2, 1])),
                state: Allocation::default(),
            }
        }

        fn triplet<'a>(&'a mut self, key: &'a str) -> Triplet<'a> {
            Triplet {
                key,
                a: &self.a,
                e: &mut self.e,
                b: &self.b,
                state: &mut self.state,
            }
        }

        /// Gradients `g` for each tensor, rank by rank, so that each sensitivity is `g`.
        fn register(&self, grads: &mut GradientsParams, g: [f32; 2]) {
            grads.register(self.a.id, tensor(&g, [1, 2]));
            grads.register(self.e.id, tensor(&g, [2]));
            grads.register(self.b.id, tensor(&g, [2, 1]));
        }

        fn scores(&self) -> Vec<f32> {
            values(self.state.scores.as_ref().unwrap().per_rank())
        }
    }

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn the_budget_falls_cubically_between_tinit_and_total_step_minus_tfinal() {
        let c = AdaLoraConfig {
            tinit: 1,
            tfinal: 1,
            delta_t: 2,
            ..AdaLoraConfig::default()
        };
        // init 6, target 2 over 6 steps: 4·(1 − (step − 1)/4)³ + 2, truncated.
        let schedule: Vec<(usize, bool)> = (0..=6)
            .map(|step| budget_schedule(&c, 6, (6, 2), step))
            .collect();
        assert_eq!(
            schedule,
            [
                (6, false),
                (6, false),
                (3, true),  // 4 · 0.421875 + 2 = 3.6875
                (2, false), // 4 · 0.125 + 2 = 2.5, an odd step
                (2, true),  // 4 · 0.015625 + 2 = 2.0625
                (2, false), // the budget reaches the target at total − tfinal
                (2, true),  // after it: the target, masking every step
            ]
        );
    }

    #[test]
    fn the_lowest_scored_singular_values_are_masked_and_the_final_pattern_kept() {
        let mut c = config();
        let (mut x, mut y) = (Layer::new(), Layer::new());
        let mut grads = GradientsParams::new();
        x.register(&mut grads, [1.0, 2.0]);
        y.register(&mut grads, [3.0, 0.5]);
        let step = |c: &mut AdaLoraConfig, x: &mut Layer, y: &mut Layer, n| {
            let mut layers = [x.triplet("x"), y.triplet("y")];
            update_and_allocate(
                c,
                &mut layers,
                &OptimizerStep {
                    before: n,
                    grads: &grads,
                },
            )
            .unwrap();
        };
        // Step 0 (before tinit ends): sensitivity s observed, nothing masked. With β = ½,
        // importance ½s, uncertainty ¼s, so each of A, E, B scores s²/8 and a triplet 3s²/8.
        step(&mut c, &mut x, &mut y, 0);
        assert_eq!(x.scores(), [0.375, 1.5]);
        assert_eq!(y.scores(), [3.375, 0.09375]);
        assert!(c.rank_pattern.is_none());
        // Step 1: importance ¾s, uncertainty ¼s, a triplet 9s²/16; the budget is
        // ⌊2·(1 − ½)³ + 2⌋ = 2 of 4, so the two lowest (y's 0.140625, x's 0.5625) go.
        step(&mut c, &mut x, &mut y, 1);
        assert_eq!(x.scores(), [0.5625, 2.25]);
        assert_eq!(y.scores(), [5.0625, 0.140625]);
        let expected = BTreeMap::from([
            ("x.lora_E".to_string(), vec![false, true]),
            ("y.lora_E".to_string(), vec![true, false]),
        ]);
        assert_eq!(c.rank_pattern.as_ref(), Some(&expected));
        assert_eq!(values(x.e.val()), [0.0, 1.0]);
        assert_eq!(values(y.e.val()), [1.0, 0.0]);
        // Step 2 = total − tfinal: the final allocation, then the scores are dropped.
        step(&mut c, &mut x, &mut y, 2);
        assert_eq!(c.rank_pattern.as_ref(), Some(&expected));
        assert!(x.state.scores.is_none());
        // After it, the final pattern is applied again after every step.
        x.e = Param::from_tensor(tensor(&[5.0, 5.0], [2]));
        step(&mut c, &mut x, &mut y, 3);
        assert_eq!(values(x.e.val()), [0.0, 5.0]);
        assert_eq!(c.rank_pattern.as_ref(), Some(&expected));
    }
}
