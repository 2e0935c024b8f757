//! LayerNorm, `(x − mean) / sqrt(var + eps) · w + b` over the last dimension, as one node of the
//! autodiff graph with a one-pass forward and a one-pass backward. Composed (Burn's
//! `layer_norm`), it is a mean, a variance and five element-wise steps forward and more
//! backward, each on one thread.

use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use peft_core::flex_node::{ternary, FlexOp};
use rayon::prelude::*;

use super::math::{dot, lane_sum};
use super::simd::widest;
use super::storage::{contiguous, f32s, tensor_of};

/// Rows each parallel task takes.
const TASK_ROWS: usize = 16;

/// LayerNorm of `x` `[.., width]` with the gain `weight` and the bias `bias` `[width]`, all f32 on
/// flex, with or without autodiff; `None` elsewhere, and the caller composes it.
pub(crate) fn layer_norm<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    eps: f64,
) -> Option<Tensor<D>> {
    let width = weight.dims()[0];
    let all_f32 = [x.dtype(), weight.dtype(), bias.dtype()]
        .iter()
        .all(|&dtype| dtype == DType::F32);
    if !all_f32 || width == 0 || x.dims()[D - 1] != width || bias.dims() != [width] {
        return None;
    }
    ternary(LayerNorm { eps: eps as f32 }, x, weight, bias)
}

/// [`layer_norm`] as a node of the autodiff graph, which keeps the input and the gain.
#[derive(Debug, Clone, Copy)]
struct LayerNorm {
    eps: f32,
}

impl FlexOp<3> for LayerNorm {
    fn forward(&self, [x, weight, bias]: [&FlexTensor; 3]) -> FlexTensor {
        let shape = x.layout().shape().clone();
        let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
        let (x, weight, bias) = (f32s(&x), f32s(&weight), f32s(&bias));
        let width = weight.len();
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(TASK_ROWS * width)
            .zip(x.par_chunks(TASK_ROWS * width))
            .for_each(|(out, x)| {
                widest(|| {
                    let rows = out.chunks_exact_mut(width).zip(x.chunks_exact(width));
                    for (out, x) in rows {
                        let (mean, inverse) = self.statistics(x);
                        let columns = out.iter_mut().zip(x).zip(weight.iter().zip(bias));
                        for ((o, &x), (&w, &b)) in columns {
                            *o = (x - mean) * inverse * w + b;
                        }
                    }
                })
            });
        tensor_of(out, shape)
    }

    fn kept(&self, _tracked: [bool; 3]) -> [bool; 3] {
        // The input's gradient needs the gain, the gain's the input, and both the input's
        // statistics; the bias's gradient is the output's.
        [true, true, false]
    }

    fn gradients(
        &self,
        [x, weight, _]: [Option<FlexTensor>; 3],
        grad_output: &FlexTensor,
        [want_x, want_weight, want_bias]: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let (x, weight) = (x.expect("kept"), weight.expect("kept"));
        let (shape, weight_shape) = (x.layout().shape().clone(), weight.layout().shape().clone());
        let (x, weight, grad_output) =
            (contiguous(&x), contiguous(&weight), contiguous(grad_output));
        let (x, weight, d) = (f32s(&x), f32s(&weight), f32s(&grad_output));
        let width = weight.len();
        // The input's gradient is computed whether wanted or not, as RMSNorm's is.
        let mut grad_x = vec![0.0f32; x.len()];
        // With n = (x − mean) · r (r the inverse standard deviation) and dn = dy · w:
        // dx = r · (dn − mean(dn) − n · mean(dn · n)), d(weight) = Σ over rows of dy · n and
        // d(bias) = Σ over rows of dy.
        let task = TASK_ROWS * width;
        let (grad_weight, grad_bias) = grad_x
            .par_chunks_mut(task)
            .zip(x.par_chunks(task).zip(d.par_chunks(task)))
            .map(|(grad_x, (x, d))| {
                widest(|| {
                    let mut partial_weight = vec![0.0f32; width];
                    let mut partial_bias = vec![0.0f32; width];
                    let (mut n, mut dn) = (vec![0.0f32; width], vec![0.0f32; width]);
                    let rows = grad_x.chunks_exact_mut(width).zip(x.chunks_exact(width));
                    for ((grad_x, x), d) in rows.zip(d.chunks_exact(width)) {
                        let (mean, inverse) = self.statistics(x);
                        for ((n, &x), (dn, (&d, &w))) in n
                            .iter_mut()
                            .zip(x)
                            .zip(dn.iter_mut().zip(d.iter().zip(weight)))
                        {
                            *n = (x - mean) * inverse;
                            *dn = d * w;
                        }
                        let mean_dn = lane_sum(&dn, &dn, |dn, _| dn) / width as f32;
                        let mean_dn_n = dot(&dn, &n) / width as f32;
                        for ((o, &n), &dn) in grad_x.iter_mut().zip(&n).zip(&dn) {
                            *o = inverse * (dn - mean_dn - n * mean_dn_n);
                        }
                        let partials = partial_weight.iter_mut().zip(partial_bias.iter_mut());
                        for ((pw, pb), (&n, &d)) in partials.zip(n.iter().zip(d)) {
                            *pw += d * n;
                            *pb += d;
                        }
                    }
                    (partial_weight, partial_bias)
                })
            })
            .reduce(
                || (vec![0.0f32; width], vec![0.0f32; width]),
                |(mut weight_a, mut bias_a), (weight_b, bias_b)| {
                    weight_a
                        .iter_mut()
                        .zip(&weight_b)
                        .for_each(|(a, b)| *a += b);
                    bias_a.iter_mut().zip(&bias_b).for_each(|(a, b)| *a += b);
                    (weight_a, bias_a)
                },
            );
        [
            want_x.then(|| tensor_of(grad_x, shape)),
            want_weight.then(|| tensor_of(grad_weight, weight_shape.clone())),
            want_bias.then(|| tensor_of(grad_bias, weight_shape)),
        ]
    }
}

impl LayerNorm {
    /// One row's mean and `1 / sqrt(var + eps)`, the variance biased (divided by the width) as
    /// torch's is, and taken about the mean in a second pass.
    #[inline(always)]
    fn statistics(&self, x: &[f32]) -> (f32, f32) {
        let width = x.len() as f32;
        let mean = lane_sum(x, x, |x, _| x) / width;
        let variance = lane_sum(x, x, |x, _| (x - mean) * (x - mean)) / width;
        (mean, 1.0 / (variance + self.eps).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::nn::flex::test_support::{assert_close, values};

    /// Burn's composed form, as `LayerNorm::forward` computes it without this kernel.
    fn composed<const D: usize>(
        x: Tensor<D>,
        weight: Tensor<1>,
        bias: Tensor<1>,
        eps: f64,
    ) -> Tensor<D> {
        burn::tensor::module::layer_norm(x, weight, Some(bias), eps)
    }

    #[test]
    fn value_and_gradients_equal_the_composed_form() {
        let device = Device::flex().autodiff();
        // Rows past one task, a width past a multiple of the lanes, an offset mean.
        let x = Tensor::<3>::random([3, 11, 70], Distribution::Normal(1.5, 2.0), &device)
            .require_grad();
        let weight =
            Tensor::<1>::random([70], Distribution::Normal(1.0, 0.3), &device).require_grad();
        let bias =
            Tensor::<1>::random([70], Distribution::Normal(0.0, 0.3), &device).require_grad();
        let upstream = Tensor::<3>::random([3, 11, 70], Distribution::Default, &device);

        let fused = layer_norm(&x, &weight, &bias, 1e-5).expect("flex f32 under autodiff");
        let grads = (fused.clone() * upstream.clone()).sum().backward();
        let reference = composed(x.clone(), weight.clone(), bias.clone(), 1e-5);
        let ref_grads = (reference.clone() * upstream).sum().backward();

        assert_close(values(fused), values(reference), "value");
        let got = values(x.grad(&grads).expect("x's gradient"));
        assert_close(got, values(x.grad(&ref_grads).expect("x")), "x");
        for (name, t) in [("weight", &weight), ("bias", &bias)] {
            let got = values(t.grad(&grads).expect("a gradient"));
            assert_close(got, values(t.grad(&ref_grads).expect(name)), name);
        }
    }

    #[test]
    fn a_strided_view_and_inference_give_the_composed_value() {
        let device = Device::flex();
        let wide = Tensor::<2>::random([9, 40], Distribution::Normal(0.0, 3.0), &device);
        let x = wide.narrow(1, 5, 20);
        let weight = Tensor::<1>::random([20], Distribution::Default, &device);
        let bias = Tensor::<1>::random([20], Distribution::Default, &device);
        let fused = layer_norm(&x, &weight, &bias, 1e-5).expect("flex f32");
        let want = composed(x, weight, bias, 1e-5);
        assert_close(values(fused), values(want), "value");
    }

    #[test]
    fn declines_other_types_and_widths() {
        let device = Device::flex();
        let x = Tensor::<2>::zeros([2, 3], &device);
        let (three, four) = (
            Tensor::<1>::ones([3], &device),
            Tensor::<1>::ones([4], &device),
        );
        assert!(layer_norm(&x, &four, &four, 1e-5).is_none());
        assert!(layer_norm(&x, &three, &four, 1e-5).is_none());
        let half = x.cast(DType::BF16);
        assert!(layer_norm(&half, &three, &three, 1e-5).is_none());
        let empty = Tensor::<2>::zeros([2, 0], &device);
        let none = Tensor::<1>::ones([0], &device);
        assert!(layer_norm(&empty, &none, &none, 1e-5).is_none());
    }
}
