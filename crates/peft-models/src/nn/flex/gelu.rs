//! GELU's tanh approximation (GPT-2's `gelu_new`) as one node of the autodiff graph with a
//! one-pass forward and a one-pass backward. Composed, it is a power, three products, two sums
//! and a `tanh` forward, each a scalar call per element on one thread, and their backward.

use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use peft_core::flex_node::{unary, FlexOp};
use rayon::prelude::*;

use super::math::sigmoid;
use super::simd::widest;
use super::storage::{contiguous, f32s, tensor_of};

/// Elements each parallel task takes: enough to pay for the task.
const TASK_ELEMENTS: usize = 1 << 14;

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// The cubic term's coefficient.
const CUBIC: f32 = 0.044_715;

/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` for an f32 tensor on flex, with or
/// without autodiff; `None` elsewhere, and the caller composes it.
pub(crate) fn gelu_tanh<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    unary(GeluTanh, x)
}

/// [`gelu_tanh`] as a node of the autodiff graph, which keeps the input.
#[derive(Debug, Clone, Copy)]
struct GeluTanh;

impl FlexOp<1> for GeluTanh {
    fn forward(&self, [x]: [&FlexTensor; 1]) -> FlexTensor {
        each_element(x, None, |x, _| x * sigmoid(twice_inner(x)))
    }

    fn kept(&self, _tracked: [bool; 1]) -> [bool; 1] {
        [true]
    }

    fn gradients(
        &self,
        [x]: [Option<FlexTensor>; 1],
        grad_output: &FlexTensor,
        _wanted: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        let x = x.expect("kept");
        // With s = σ(2u): d/dx [x · s] = s + x · s · (1 − s) · 2u'.
        let grad = each_element(&x, Some(grad_output), |x, d| {
            let s = sigmoid(twice_inner(x));
            let twice_inner_slope = 2.0 * SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * x * x);
            d * (s + x * s * (1.0 - s) * twice_inner_slope)
        });
        [Some(grad)]
    }
}

/// `2u = 2 · √(2/π) · (x + 0.044715 · x³)`: `0.5 · (1 + tanh(u))` is `σ(2u)`, which needs one
/// exponential that never overflows.
#[inline(always)]
fn twice_inner(x: f32) -> f32 {
    2.0 * SQRT_2_OVER_PI * (x + CUBIC * x * x * x)
}

/// A new tensor of `x`'s shape whose elements are `f(x, d)`, `d` the element of `other` (0
/// without it).
fn each_element(
    x: &FlexTensor,
    other: Option<&FlexTensor>,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let x = contiguous(x);
    let x = f32s(&x);
    let other = other.map(contiguous);
    let mut out = vec![0.0f32; x.len()];
    let outputs = out
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(x.par_chunks(TASK_ELEMENTS));
    match &other {
        Some(other) => {
            outputs
                .zip(f32s(other).par_chunks(TASK_ELEMENTS))
                .for_each(|((out, x), d)| {
                    widest(|| {
                        for ((o, &x), &d) in out.iter_mut().zip(x).zip(d) {
                            *o = f(x, d);
                        }
                    })
                })
        }
        None => outputs.for_each(|(out, x)| {
            widest(|| {
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = f(x, 0.0);
                }
            })
        }),
    }
    tensor_of(out, shape)
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu_approximate;
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::nn::flex::test_support::{assert_close, values};

    #[test]
    fn value_and_gradient_equal_the_composed_form() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::random([2, 5, 3000], Distribution::Normal(0.0, 4.0), &device)
            .require_grad();
        let weights = Tensor::<3>::random([2, 5, 3000], Distribution::Default, &device);

        let fused = gelu_tanh(&x).expect("flex f32 under autodiff");
        let fused_grads = (fused.clone() * weights.clone()).sum().backward();
        let composed = gelu_approximate(x.clone());
        let composed_grads = (composed.clone() * weights).sum().backward();

        assert_close(values(fused), values(composed), "value");
        let got = values(x.grad(&fused_grads).expect("a gradient"));
        let want = values(x.grad(&composed_grads).expect("a gradient"));
        assert_close(got, want, "gradient");
    }

    #[test]
    fn strided_views_and_inference_give_the_composed_value() {
        let device = Device::flex();
        let x = Tensor::<2>::random([40, 7], Distribution::Normal(0.0, 3.0), &device);
        let view = x.transpose();
        let fused = gelu_tanh(&view).expect("flex f32");
        assert_close(values(fused), values(gelu_approximate(view)), "value");
    }

    #[test]
    fn declines_other_types() {
        let half = Tensor::<2>::zeros([2, 3], &Device::flex()).cast(DType::BF16);
        assert!(gelu_tanh(&half).is_none());
    }
}
