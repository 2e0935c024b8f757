//! The IA3 layer on one projection: `y = base(x) ⊙ l` for ordinary targets, `y = base(x ⊙ l)`
//! for feed-forward ones.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Distribution, Gradients, Tensor};

use crate::error::Result;
use crate::format::{value_or_grad, FileTensor, TensorReader};
use crate::ids::replace_value;

/// What PEFT adds to the scaling before dividing it out again when unmerging.
const UNMERGE_EPSILON: f64 = 1e-8;

/// A learned scaling vector: over the projection's outputs, or its inputs when `feedforward`.
#[derive(Module, Debug)]
pub struct Ia3Layer {
    /// The scaling, `[out]` (or `[in]` for a feed-forward target).
    pub scaling: Param<Tensor<1>>,
    /// Whether the input is scaled rather than the output.
    pub feedforward: bool,
}

impl Ia3Layer {
    /// A layer for `base`, its vector at one (`init`) or drawn from PEFT's non-default init.
    pub fn new(base: &Linear, feedforward: bool, init: bool) -> Self {
        let [d_in, d_out] = base.weight.dims();
        let width = if feedforward { d_in } else { d_out };
        let device = base.weight.device();
        let scaling = if init {
            Tensor::ones([width], &device)
        } else {
            // PEFT's `init_ia3_weights=False` leaves nn.Parameter's random values; any
            // non-trivial values serve (tests only).
            Tensor::random([width], Distribution::Uniform(0.5, 1.5), &device)
        };
        Self {
            scaling: Param::from_tensor(scaling),
            feedforward,
        }
    }

    /// The projection's output with this adapter.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D> {
        let scaling = self.scaling.val().unsqueeze::<D>();
        if self.feedforward {
            base.forward(x * scaling)
        } else {
            base.forward(x) * scaling
        }
    }

    /// The base weight `[in, out]` and bias with the scaling merged in (PEFT scales the bias of
    /// ordinary targets too).
    pub fn merged(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        let s = self.scaling.val();
        if self.feedforward {
            (weight * s.unsqueeze_dim::<2>(1), bias)
        } else {
            (weight * s.clone().unsqueeze::<2>(), bias.map(|b| b * s))
        }
    }

    /// The base weight and bias recovered from merged ones, dividing as PEFT divides.
    pub fn unmerged(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        let s = self.scaling.val() + UNMERGE_EPSILON;
        if self.feedforward {
            (weight / s.unsqueeze_dim::<2>(1), bias)
        } else {
            (weight / s.clone().unsqueeze::<2>(), bias.map(|b| b / s))
        }
    }

    /// `ia3_l` in PEFT's layout: `[out, 1]`, or `[1, in]` for a feed-forward target; with
    /// `grads`, its gradient.
    pub fn file_tensors(
        &self,
        grads: Option<&Gradients>,
    ) -> Result<Vec<(&'static str, FileTensor)>> {
        let Some(s) = value_or_grad(&self.scaling, grads) else {
            return Ok(Vec::new());
        };
        let s = if self.feedforward {
            s.unsqueeze_dim::<2>(0)
        } else {
            s.unsqueeze_dim::<2>(1)
        };
        Ok(vec![("ia3_l", FileTensor::read(s)?)])
    }

    /// Replaces the vector with `ia3_l` from a file.
    pub fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        let width = self.scaling.dims()[0];
        let shape = if self.feedforward {
            [1, width]
        } else {
            [width, 1]
        };
        let device = self.scaling.device();
        let s = read("ia3_l", &shape)?.upload::<2>(&device).reshape([width]);
        self.scaling = replace_value(&self.scaling, s);
        Ok(())
    }
}
