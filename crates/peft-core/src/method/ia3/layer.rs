//! The IA3 layer on one projection: `y = base(x) ⊙ l` for ordinary targets, `y = base(x ⊙ l)`
//! for feed-forward ones.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Distribution, Gradients, Tensor};

use super::config::Ia3Config;
use crate::error::Result;
use crate::ids::replace_value;
use crate::method::api::{Merged, ProjectionLayer};
use crate::precision::to_dtype;
use crate::product::forward_linear;
use crate::tensors::{value_or_grad, HostTensor, TensorReader};

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
    pub fn init(base: &Linear, feedforward: bool, init: bool) -> Self {
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
}

impl ProjectionLayer for Ia3Layer {
    type Config = Ia3Config;

    fn new(config: &Ia3Config, key: &str, base: &Linear) -> Result<Self> {
        Ok(Self::init(
            base,
            config.is_feedforward(key)?,
            config.init_ia3_weights,
        ))
    }

    fn mixes_in_batches(&self) -> bool {
        true
    }

    fn method_name(&self) -> &'static str {
        "IA3"
    }

    fn describe(&self) -> String {
        format!(
            "ia3 on the {}",
            if self.feedforward { "input" } else { "output" }
        )
    }

    fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D> {
        let scaling = self.scaling.val().unsqueeze::<D>();
        // On a base of lower precision the scaling applies in its own type (f32) and the
        // result is cast back, as PEFT's IA3 does.
        let own = scaling.dtype();
        if self.feedforward {
            let dtype = x.dtype();
            forward_linear(base, to_dtype(to_dtype(x, own) * scaling, dtype))
        } else {
            let out = forward_linear(base, x);
            let dtype = out.dtype();
            to_dtype(to_dtype(out, own) * scaling, dtype)
        }
    }

    /// The scaling merged into the weight's rows or columns (PEFT scales the bias of ordinary
    /// targets too).
    fn merge(&self, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Option<Merged> {
        let s = self.scaling.val();
        let (weight, bias) = if self.feedforward {
            (weight * s.unsqueeze_dim::<2>(1), bias)
        } else {
            (weight * s.clone().unsqueeze::<2>(), bias.map(|b| b * s))
        };
        Some(Merged {
            weight,
            bias,
            memo: None,
        })
    }

    /// Divides as PEFT divides.
    fn unmerge(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        _memo: Option<Tensor<1>>,
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
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(&'static str, HostTensor)>> {
        let Some(s) = value_or_grad(&self.scaling, grads) else {
            return Ok(Vec::new());
        };
        let s = if self.feedforward {
            s.unsqueeze_dim::<2>(0)
        } else {
            s.unsqueeze_dim::<2>(1)
        };
        Ok(vec![("ia3_l", HostTensor::read(s)?)])
    }

    /// Replaces the vector with `ia3_l` from a file.
    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
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
