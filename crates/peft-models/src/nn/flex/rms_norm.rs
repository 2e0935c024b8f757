//! RMSNorm, `x / sqrt(mean(x²) + eps) · (w + offset)` over the last dimension, as one node of the
//! autodiff graph with a one-pass forward and a one-pass backward. Composed, it is six
//! element-wise steps forward and more backward, each on one thread.

use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use peft_core::flex_node::{binary, FlexOp};
use rayon::prelude::*;

use super::math::dot;
use super::simd::widest;
use super::storage::{contiguous, f32s, tensor_of};

/// Rows each parallel task takes.
const TASK_ROWS: usize = 16;

/// RMSNorm of `x` `[.., width]` with the gain `weight + offset` `[width]`, both f32 on flex,
/// with or without autodiff; `None` elsewhere, and the caller composes it.
pub(crate) fn rms_norm<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<1>,
    eps: f64,
    offset: f64,
) -> Option<Tensor<D>> {
    let width = weight.dims()[0];
    let all_f32 = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if !all_f32 || width == 0 || x.dims()[D - 1] != width {
        return None;
    }
    let op = RmsNorm {
        eps: eps as f32,
        offset: offset as f32,
    };
    binary(op, x, weight)
}

/// [`rms_norm`] as a node of the autodiff graph, which keeps the input and the weight.
#[derive(Debug, Clone, Copy)]
struct RmsNorm {
    eps: f32,
    offset: f32,
}

impl FlexOp<2> for RmsNorm {
    fn forward(&self, [x, weight]: [&FlexTensor; 2]) -> FlexTensor {
        let shape = x.layout().shape().clone();
        let (x, weight) = (contiguous(x), contiguous(weight));
        let gain = self.gain(f32s(&weight));
        let x = f32s(&x);
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(TASK_ROWS * gain.len())
            .zip(x.par_chunks(TASK_ROWS * gain.len()))
            .for_each(|(out, x)| {
                widest(|| {
                    for (out, x) in out
                        .chunks_exact_mut(gain.len())
                        .zip(x.chunks_exact(gain.len()))
                    {
                        let inverse = self.inverse_rms(x);
                        for ((o, &x), &g) in out.iter_mut().zip(x).zip(&gain) {
                            *o = x * inverse * g;
                        }
                    }
                })
            });
        tensor_of(out, shape)
    }

    fn kept(&self, _tracked: [bool; 2]) -> [bool; 2] {
        // The input's gradient needs the weight, the weight's the input, and both the input's
        // norm.
        [true, true]
    }

    fn gradients(
        &self,
        [x, weight]: [Option<FlexTensor>; 2],
        grad_output: &FlexTensor,
        [want_x, want_weight]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let (x, weight) = (x.expect("kept"), weight.expect("kept"));
        let (shape, weight_shape) = (x.layout().shape().clone(), weight.layout().shape().clone());
        let (x, weight, grad_output) =
            (contiguous(&x), contiguous(&weight), contiguous(grad_output));
        let gain = self.gain(f32s(&weight));
        let width = gain.len();
        let (x, d) = (f32s(&x), f32s(&grad_output));
        // The input's gradient is computed whether wanted or not: it is unwanted only where the
        // input is frozen (the first layer's, after a frozen embedding), and one code path is
        // simpler than two.
        let mut grad_x = vec![0.0f32; x.len()];
        // With n = x · r (r the inverse root mean square) and dn = dy · gain:
        // dx = r · (dn − n · mean(dn · n)), and d(weight) = Σ over rows of dy · n.
        let task = TASK_ROWS * width;
        let grad_weight = grad_x
            .par_chunks_mut(task)
            .zip(x.par_chunks(task).zip(d.par_chunks(task)))
            .map(|(grad_x, (x, d))| {
                widest(|| {
                    let (mut partial, mut dn) = (vec![0.0f32; width], vec![0.0f32; width]);
                    let rows = grad_x.chunks_exact_mut(width).zip(x.chunks_exact(width));
                    for ((grad_x, x), d) in rows.zip(d.chunks_exact(width)) {
                        let inverse = self.inverse_rms(x);
                        for ((dn, &d), &g) in dn.iter_mut().zip(d).zip(&gain) {
                            *dn = d * g;
                        }
                        let mean = dot(&dn, x) * inverse / width as f32;
                        for ((o, &x), &dn) in grad_x.iter_mut().zip(x).zip(&dn) {
                            *o = inverse * (dn - x * inverse * mean);
                        }
                        for ((p, &x), &d) in partial.iter_mut().zip(x).zip(d) {
                            *p += d * x * inverse;
                        }
                    }
                    partial
                })
            })
            .reduce(
                || vec![0.0f32; width],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        [
            want_x.then(|| tensor_of(grad_x, shape)),
            want_weight.then(|| tensor_of(grad_weight, weight_shape)),
        ]
    }
}

impl RmsNorm {
    /// `weight + offset`.
    fn gain(&self, weight: &[f32]) -> Vec<f32> {
        weight.iter().map(|w| w + self.offset).collect()
    }

    /// `1 / sqrt(mean(x²) + eps)` of one row.
    #[inline(always)]
    fn inverse_rms(&self, x: &[f32]) -> f32 {
        1.0 / (dot(x, x) / x.len() as f32 + self.eps).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::nn::flex::test_support::{assert_close, values};

    /// The composed form, as `RmsNorm::forward` computes it without this kernel.
    fn composed<const D: usize>(
        x: Tensor<D>,
        weight: Tensor<1>,
        eps: f64,
        offset: f64,
    ) -> Tensor<D> {
        let variance = x.clone().powi_scalar(2).mean_dim(D - 1);
        x * (variance + eps).sqrt().recip() * weight.add_scalar(offset).unsqueeze()
    }

    #[test]
    fn value_and_gradients_equal_the_composed_form() {
        let device = Device::flex().autodiff();
        // Rows past one task, a width past a multiple of the lanes; LLaMA's and Gemma's gain.
        for offset in [0.0, 1.0] {
            let x = Tensor::<3>::random([3, 11, 70], Distribution::Normal(0.0, 2.0), &device)
                .require_grad();
            let weight =
                Tensor::<1>::random([70], Distribution::Normal(1.0, 0.3), &device).require_grad();
            let upstream = Tensor::<3>::random([3, 11, 70], Distribution::Default, &device);

            let fused = rms_norm(&x, &weight, 1e-5, offset).expect("flex f32 under autodiff");
            let grads = (fused.clone() * upstream.clone()).sum().backward();
            let reference = composed(x.clone(), weight.clone(), 1e-5, offset);
            let ref_grads = (reference.clone() * upstream).sum().backward();

            assert_close(values(fused), values(reference), "value");
            let got = values(x.grad(&grads).expect("x's gradient"));
            assert_close(got, values(x.grad(&ref_grads).expect("x")), "x");
            let got = values(weight.grad(&grads).expect("the weight's gradient"));
            let want = values(weight.grad(&ref_grads).expect("weight"));
            assert_close(got, want, "weight");
        }
    }

    #[test]
    fn a_strided_view_and_inference_give_the_composed_value() {
        let device = Device::flex();
        let wide = Tensor::<2>::random([9, 40], Distribution::Normal(0.0, 3.0), &device);
        let x = wide.narrow(1, 5, 20);
        let weight = Tensor::<1>::random([20], Distribution::Default, &device);
        let fused = rms_norm(&x, &weight, 1e-6, 0.0).expect("flex f32");
        assert_close(
            values(fused),
            values(composed(x, weight, 1e-6, 0.0)),
            "value",
        );
    }

    #[test]
    fn declines_other_types_and_widths() {
        let device = Device::flex();
        let x = Tensor::<2>::zeros([2, 3], &device);
        assert!(rms_norm(&x, &Tensor::<1>::ones([4], &device), 1e-6, 0.0).is_none());
        let half = x.cast(DType::BF16);
        assert!(rms_norm(&half, &Tensor::<1>::ones([3], &device), 1e-6, 0.0).is_none());
        let empty = Tensor::<2>::zeros([2, 0], &device);
        assert!(rms_norm(&empty, &Tensor::<1>::ones([0], &device), 1e-6, 0.0).is_none());
    }
}
