//! One tensor's AdamW update on flex f32 storage: the moments, their bias correction, the
//! decoupled weight decay and the step in one parallel pass, in place where the parameter and the
//! moments are not shared. Element by element it is the arithmetic of Burn's `AdamW` (same
//! operations on the same `f32` constants, in the same order), so both give the same numbers.

use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate};
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use peft_core::flex_node::into_flex;
use rayon::prelude::*;

use super::rule::{Constants, Rule};

/// Elements per parallel task: large enough that scheduling costs nothing, small enough for
/// both cores to share a LoRA factor.
const TASK_ELEMENTS: usize = 1 << 14;

/// What [`step`] gives back when it does not take the tensors: its inputs, untouched.
pub(super) type Declined<const D: usize> = Box<(Tensor<D>, Tensor<D>, Option<AdamWState<D>>)>;

/// The updated parameter and state, or the inputs back when they are not all flex f32 tensors of
/// one shape (or the state keeps AMSGrad's maximum, which this pass does not compute).
pub(super) fn step<const D: usize>(
    constants: Constants,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamWState<D>>,
) -> Result<(Tensor<D>, AdamWState<D>), Declined<D>> {
    let takes = |t: &Tensor<D>| t.dtype() == DType::F32 && t.dims() == tensor.dims();
    let state_fits = state.as_ref().is_none_or(|s| {
        let m = &s.momentum;
        m.max_moment_2.is_none() && takes(&m.moment_1) && takes(&m.moment_2)
    });
    if !(takes(&tensor) && takes(&grad) && state_fits) {
        return Err(Box::new((tensor, grad, state)));
    }
    let moments = state.as_ref().map(|s| {
        let m = &s.momentum;
        (into_flex(&m.moment_1), into_flex(&m.moment_2))
    });
    let (Some((param, wrap)), Some((grad_flex, _))) = (into_flex(&tensor), into_flex(&grad)) else {
        return Err(Box::new((tensor, grad, state)));
    };
    let (time, moments) = match (moments, &state) {
        (None, _) => (1, None),
        (Some((Some((m, _)), Some((v, _)))), Some(s)) => (s.momentum.time + 1, Some((m, v))),
        _ => return Err(Box::new((tensor, grad, state))),
    };
    // The only other handles on the parameter's and the moments' storage go, so that the pass
    // below writes in place.
    drop((tensor, grad, state));

    let (param, m, v) = update(constants, lr, time, param, &grad_flex, moments);
    let momentum = AdaptiveMomentumState::new(time, wrap(m), wrap(v));
    Ok((wrap(param), AdamWState::new(momentum)))
}

/// The pass itself: the new parameter and moments. The moments are updated in place (copied
/// first if shared); the parameter too when nothing else holds it, and otherwise written to a new
/// buffer: Burn's `Learner` keeps the model it steps from until the step returns, so a trained
/// parameter is always shared there, and copying it first would be one more pass for nothing.
fn update(
    constants: Constants,
    lr: LearningRate,
    time: usize,
    param: FlexTensor,
    grad: &FlexTensor,
    moments: Option<(FlexTensor, FlexTensor)>,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let rule = Rule::new(constants, lr, time);
    let shape = param.layout().shape().clone();
    // Each as one run of `f32` covering its whole buffer (copied when it is a view).
    let mut param = param.to_contiguous();
    let grad = grad.to_contiguous();
    // The first step's moments are zeros, on which the update gives `(1 − β)·g` and
    // `(1 − β₂)·g²` exactly, as Burn's first step computes them.
    let (mut m, mut v) = match moments {
        Some((m, v)) => (m.to_contiguous(), v.to_contiguous()),
        None => {
            let zeros = || FlexTensor::from_data(TensorData::zeros::<f32, _>(shape.clone()));
            (zeros(), zeros())
        }
    };
    let g = grad.storage::<f32>();
    let (m_values, v_values) = (m.storage_mut::<f32>(), v.storage_mut::<f32>());
    let moments = m_values
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(v_values.par_chunks_mut(TASK_ELEMENTS))
        .zip(g.par_chunks(TASK_ELEMENTS));
    if param.is_unique() {
        let p = param.storage_mut::<f32>();
        p.par_chunks_mut(TASK_ELEMENTS)
            .zip(moments)
            .for_each(|(p, ((m, v), g))| {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    *p = rule.apply(*p, g, m, v);
                }
            });
        return (param, m, v);
    }
    let p = param.storage::<f32>();
    let mut updated: Vec<f32> = Vec::with_capacity(p.len());
    updated.spare_capacity_mut()[..p.len()]
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(p.par_chunks(TASK_ELEMENTS))
        .zip(moments)
        .for_each(|((out, p), ((m, v), g))| {
            for ((((out, &p), m), v), &g) in out.iter_mut().zip(p).zip(m).zip(v).zip(g) {
                out.write(rule.apply(p, g, m, v));
            }
        });
    // SAFETY: the pass above wrote every one of the `p.len()` elements (the chunks of `p`, the
    // moments and `g` have the same lengths as the output's).
    unsafe { updated.set_len(p.len()) };
    let updated = FlexTensor::from_data(TensorData::new(updated, shape));
    (updated, m, v)
}

#[cfg(test)]
mod tests {
    use burn::optim::Optimizer;
    use burn::tensor::{Device, Distribution};

    use super::super::TrainingAdamW;
    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    #[test]
    fn steps_equal_burns_adamw_and_leave_shared_tensors_alone() {
        let device = Device::flex();
        for weight_decay in [0.0, 0.1] {
            let fused = TrainingAdamW::new(weight_decay);
            // Burn's AdamW with the same constants: what the fused pass must reproduce.
            let composed = fused.composed.clone();
            // Larger than one parallel task, and a transposed view.
            let start = Tensor::<2>::random([300, 70], Distribution::Default, &device);
            let (mut ours, mut theirs) = (start.clone().transpose(), start.clone().transpose());
            let (mut our_state, mut their_state) = (None, None);
            for n in 0..4 {
                let grad = Tensor::<2>::random([70, 300], Distribution::Normal(0.0, 1.0), &device);
                let lr = 1e-2 / f64::from(n + 1);
                assert!(
                    step(fused.constants, lr, ours.clone(), grad.clone(), None).is_ok(),
                    "flex f32 tensors take the fused pass"
                );
                // Every other step another handle holds the parameter (as Burn's `Learner` does),
                // so that both the in-place and the new-buffer updates are compared.
                let kept = (n % 2 == 0).then(|| (ours.clone(), values(ours.clone())));
                let (next, state) = fused.step(lr, ours, grad.clone(), our_state);
                let (their_next, their_next_state) = composed.step(lr, theirs, grad, their_state);
                let (state, their_next_state) = (state.unwrap(), their_next_state.unwrap());
                if let Some((kept, before)) = kept {
                    assert_eq!(
                        values(kept),
                        before,
                        "a shared parameter is not overwritten"
                    );
                }
                assert_eq!(
                    values(next.clone()),
                    values(their_next.clone()),
                    "parameter at step {n}"
                );
                let (mine, burns) = (&state.momentum, &their_next_state.momentum);
                assert_eq!(mine.time, burns.time);
                assert_eq!(
                    values(mine.moment_1.clone()),
                    values(burns.moment_1.clone())
                );
                assert_eq!(
                    values(mine.moment_2.clone()),
                    values(burns.moment_2.clone())
                );
                (ours, theirs) = (next, their_next);
                (our_state, their_state) = (Some(state), Some(their_next_state));
            }
        }
    }
}
