//! A zero that carries a gradient computed outside autodiff into backward: one node of the
//! autodiff graph whose backward hands `tensor` the gradient it was given. The composed
//! surrogate `Σ tensor ⊙ G` makes the product and the sum forward, and backward a tensor of
//! ones, two products and more, each on one thread: for a tied head of 151,936 × 896 (Qwen2.5),
//! five passes over 544 MB at every step.

use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use peft_core::flex_node::{binary, FlexOp};
use rayon::prelude::*;

use super::storage::{contiguous, f32s, tensor_of};

/// Elements each parallel task takes: enough to pay for the task.
const TASK_ELEMENTS: usize = 1 << 16;

/// A zero `[1]` whose backward gives `tensor` the gradient `scale · gradient` (times the
/// zero's own gradient), for f32 tensors of one shape on flex; `None` elsewhere, and the caller
/// composes `Σ tensor ⊙ (scale · gradient)`.
pub(crate) fn gradient_carrier<const D: usize>(
    tensor: &Tensor<D>,
    gradient: &Tensor<D>,
    scale: f32,
) -> Option<Tensor<1>> {
    let all_f32 = tensor.dtype() == DType::F32 && gradient.dtype() == DType::F32;
    if !all_f32 || tensor.dims() != gradient.dims() {
        return None;
    }
    binary(
        GradientCarrier { scale },
        tensor,
        &gradient.clone().detach(),
    )
}

/// [`gradient_carrier`] as a node of the autodiff graph, which keeps the gradient.
#[derive(Debug, Clone, Copy)]
struct GradientCarrier {
    scale: f32,
}

impl FlexOp<2> for GradientCarrier {
    fn forward(&self, _inputs: [&FlexTensor; 2]) -> FlexTensor {
        tensor_of(vec![0.0], Shape::new([1]))
    }

    fn kept(&self, [tensor_tracked, _]: [bool; 2]) -> [bool; 2] {
        [false, tensor_tracked]
    }

    fn gradients(
        &self,
        [_, gradient]: [Option<FlexTensor>; 2],
        grad_output: &FlexTensor,
        [want_tensor, _]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let grad_output = contiguous(grad_output);
        let factor = self.scale * f32s(&grad_output)[0];
        let carried = want_tensor.then(|| {
            let gradient = gradient.expect("kept");
            if factor == 1.0 {
                return gradient;
            }
            let shape = gradient.layout().shape().clone();
            let gradient = contiguous(&gradient);
            let values = f32s(&gradient);
            let mut out = vec![0.0f32; values.len()];
            out.par_chunks_mut(TASK_ELEMENTS)
                .zip(values.par_chunks(TASK_ELEMENTS))
                .for_each(|(out, values)| {
                    for (o, &v) in out.iter_mut().zip(values) {
                        *o = v * factor;
                    }
                });
            tensor_of(out, shape)
        });
        [carried, None]
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::nn::flex::test_support::{assert_close, values};

    #[test]
    fn backward_gives_the_scaled_gradient_as_the_composed_surrogate_does() {
        let device = Device::flex().autodiff();
        let tensor = Tensor::<2>::random([300, 70], Distribution::Default, &device).require_grad();
        let gradient = Tensor::<2>::random([300, 70], Distribution::Default, &device);
        let carrier = gradient_carrier(&tensor, &gradient, 0.25).expect("flex f32");
        assert_eq!(values(carrier.clone()), vec![0.0]);
        // Through a product, so that the zero's own gradient (3) scales the carried one.
        let grads = (carrier * 3.0).sum().backward();
        let surrogate = (tensor.clone() * gradient.mul_scalar(0.25)).sum() * 3.0;
        let want = surrogate.backward();
        let got = values(tensor.grad(&grads).expect("a gradient"));
        assert_close(
            got,
            values(tensor.grad(&want).expect("a gradient")),
            "gradient",
        );
    }

    #[test]
    fn declines_other_types_and_shapes() {
        let device = Device::flex();
        let a = Tensor::<2>::zeros([2, 3], &device);
        assert!(gradient_carrier(&a, &Tensor::<2>::zeros([3, 2], &device), 1.0).is_none());
        let half = a.cast(DType::BF16);
        assert!(gradient_carrier(&half, &half, 1.0).is_none());
    }
}
