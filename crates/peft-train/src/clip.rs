//! Averaging accumulated gradients and clipping them by their global norm, as
//! `torch.nn.utils.clip_grad_norm_` does; Burn's own clipping works per tensor.

use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Divides `grads` (a sum over `micro_batches`) by `micro_batches`, then scales them by
/// `min(1, max_norm / (norm + 1e-6))` where `norm` is the global L2 norm of the averaged
/// gradients (no clipping when `max_norm` is 0). Returns the gradients and `norm` `[1]`; all on
/// the device, nothing is read back.
pub fn average_and_clip<M: Module>(
    model: &M,
    grads: GradientsParams,
    micro_batches: usize,
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
    let inverse = 1.0 / micro_batches as f64;
    let norm = Tensor::cat(squares.parts, 0).sum().sqrt() * inverse;
    let factor = if max_norm > 0.0 {
        (norm.clone().add_scalar(1e-6).recip() * max_norm).clamp_max(1.0) * inverse
    } else if micro_batches == 1 {
        // Nothing to scale: skip a pass over every gradient.
        return (grads, Some(norm));
    } else {
        norm.zeros_like().add_scalar(inverse)
    };
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
