//! Clipping gradients by their global norm, as `torch.nn.utils.clip_grad_norm_` does; Burn's
//! own clipping works per tensor.

use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Scales `grads` by `min(1, max_norm / (norm + 1e-6))` where `norm` is their global L2 norm
/// (no clipping when `max_norm` is 0). Returns the gradients and `norm` `[1]`, or no norm when
/// no parameter of `model` has a gradient; all on the device, nothing is read back.
pub fn clip_by_global_norm<M: Module>(
    model: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, Option<Tensor<1>>) {
    let mut squares = SquaredNorms {
        grads: &grads,
        parts: Vec::new(),
        seen: HashSet::new(),
    };
    model.visit(&mut squares);
    if squares.parts.is_empty() {
        return (grads, None);
    }
    let norm = Tensor::cat(squares.parts, 0).sum().sqrt();
    if max_norm <= 0.0 {
        return (grads, Some(norm));
    }
    let factor = (norm.clone().add_scalar(1e-6).recip() * max_norm).clamp_max(1.0);
    let mut scale = Scale {
        grads,
        factor,
        seen: HashSet::new(),
    };
    model.visit(&mut scale);
    (scale.grads, Some(norm))
}

/// Parameters are keyed by id; a tied parameter is met more than once but counted once.
struct SquaredNorms<'a> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<1>>,
    seen: HashSet<ParamId>,
}

impl ModuleVisitor for SquaredNorms<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        if let Some(grad) = self.grads.get::<D>(param.id) {
            self.parts.push(grad.powi_scalar(2).sum());
        }
    }
}

struct Scale {
    grads: GradientsParams,
    factor: Tensor<1>,
    seen: HashSet<ParamId>,
}

impl ModuleVisitor for Scale {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let factor = self.factor.clone().reshape([1; D]);
            self.grads.register(param.id, grad * factor);
        }
    }
}
