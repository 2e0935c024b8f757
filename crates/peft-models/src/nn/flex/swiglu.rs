//! SwiGLU's gate, `silu(gate) · up`, as one node of the autodiff graph with a one-pass forward
//! and a one-pass backward. Composed, it is a sigmoid, two products and their autodiff records
//! forward, and five element-wise passes backward, each on one thread.

use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use peft_core::flex_node::{binary, FlexOp};
use rayon::prelude::*;

use super::math::sigmoid;
use super::simd::widest;
use super::storage::{contiguous, f32s, tensor_of};

/// Elements each parallel task takes: enough to pay for the task.
const TASK_ELEMENTS: usize = 1 << 14;

/// `silu(gate) · up` for f32 tensors of one shape on flex, with or without autodiff; `None`
/// elsewhere, and the caller composes it.
pub(crate) fn swiglu<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 || gate.dims() != up.dims() {
        return None;
    }
    binary(SwiGlu, gate, up)
}

/// [`swiglu`] as a node of the autodiff graph, which keeps the gate and the up projection.
#[derive(Debug, Clone, Copy)]
struct SwiGlu;

impl FlexOp<2> for SwiGlu {
    fn forward(&self, [gate, up]: [&FlexTensor; 2]) -> FlexTensor {
        forward(gate, up)
    }

    fn kept(&self, _tracked: [bool; 2]) -> [bool; 2] {
        // Each gradient needs both inputs.
        [true, true]
    }

    fn gradients(
        &self,
        [gate, up]: [Option<FlexTensor>; 2],
        grad_output: &FlexTensor,
        _wanted: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let (gate, up) = (gate.expect("kept"), up.expect("kept"));
        // One pass gives both; an unwanted one is dropped by the caller.
        let (grad_gate, grad_up) = backward(&gate, &up, grad_output);
        [Some(grad_gate), Some(grad_up)]
    }
}

/// `g · σ(g) · u`, element by element.
fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let shape = gate.layout().shape().clone();
    let (gate, up) = (contiguous(gate), contiguous(up));
    let (g, u) = (f32s(&gate), f32s(&up));
    let mut out = vec![0.0f32; g.len()];
    out.par_chunks_mut(TASK_ELEMENTS)
        .zip(g.par_chunks(TASK_ELEMENTS).zip(u.par_chunks(TASK_ELEMENTS)))
        .for_each(|(out, (g, u))| {
            widest(|| {
                for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                    *o = g * sigmoid(g) * u;
                }
            })
        });
    tensor_of(out, shape)
}

/// The gradients of the gate and the up projection from the output's, `dO`: with `s = σ(g)`,
/// `d(up) = dO · g · s` and `d(gate) = dO · u · s · (1 + g · (1 − s))`.
fn backward(
    gate: &FlexTensor,
    up: &FlexTensor,
    grad_output: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let shape = gate.layout().shape().clone();
    let (gate, up, grad_output) = (contiguous(gate), contiguous(up), contiguous(grad_output));
    let (g, u, d) = (f32s(&gate), f32s(&up), f32s(&grad_output));
    let mut grad_gate = vec![0.0f32; g.len()];
    let mut grad_up = vec![0.0f32; g.len()];
    grad_gate
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(grad_up.par_chunks_mut(TASK_ELEMENTS))
        .zip(g.par_chunks(TASK_ELEMENTS))
        .zip(u.par_chunks(TASK_ELEMENTS).zip(d.par_chunks(TASK_ELEMENTS)))
        .for_each(|(((grad_gate, grad_up), g), (u, d))| {
            widest(|| {
                let outputs = grad_gate.iter_mut().zip(grad_up.iter_mut());
                for ((dg, du), ((&g, &u), &d)) in outputs.zip(g.iter().zip(u).zip(d)) {
                    let s = sigmoid(g);
                    *du = d * g * s;
                    *dg = d * u * s * (1.0 + g * (1.0 - s));
                }
            })
        });
    (
        tensor_of(grad_gate, shape.clone()),
        tensor_of(grad_up, shape),
    )
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::nn::flex::test_support::{assert_close, values};

    #[test]
    fn value_and_gradients_equal_the_composed_form() {
        let device = Device::flex().autodiff();
        let random = || {
            Tensor::<3>::random([2, 5, 3000], Distribution::Normal(0.0, 4.0), &device)
                .require_grad()
        };
        let (gate, up) = (random(), random());
        let weights = Tensor::<3>::random([2, 5, 3000], Distribution::Default, &device);

        let fused = swiglu(&gate, &up).expect("flex f32 under autodiff");
        let fused_grads = (fused.clone() * weights.clone()).sum().backward();
        let composed = silu(gate.clone()) * up.clone();
        let composed_grads = (composed.clone() * weights).sum().backward();

        assert_close(values(fused), values(composed), "value");
        for (name, t) in [("gate", &gate), ("up", &up)] {
            let got = values(t.grad(&fused_grads).expect("a gradient"));
            let want = values(t.grad(&composed_grads).expect("a gradient"));
            assert_close(got, want, name);
        }
    }

    #[test]
    fn strided_views_and_inference_give_the_composed_value() {
        let device = Device::flex();
        let both = Tensor::<2>::random([7, 40], Distribution::Normal(0.0, 3.0), &device);
        let (gate, up) = (both.clone().narrow(1, 0, 20), both.narrow(1, 20, 20));
        let fused = swiglu(&gate, &up).expect("flex f32");
        assert_close(values(fused), values(silu(gate) * up), "value");
    }

    #[test]
    fn declines_other_types_and_shapes() {
        let device = Device::flex();
        let a = Tensor::<2>::zeros([2, 3], &device);
        assert!(swiglu(&a, &Tensor::<2>::zeros([3, 2], &device)).is_none());
        let half = a.clone().cast(DType::BF16);
        assert!(swiglu(&half, &half).is_none());
    }
}
