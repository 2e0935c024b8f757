//! The bottleneck adapter on one projection's output `h`:
//! `h + up(act(down(ln(h))))`, the layer norm optional.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{gelu, relu, silu, tanh};
use burn::tensor::{Device, Distribution, Gradients, Tensor};

use super::config::{BottleneckConfig, NonLinearity};
use crate::error::Result;
use crate::ids::replace_value;
use crate::method::api::{Merged, ProjectionLayer};
use crate::precision::to_dtype;
use crate::product::forward_linear;
use crate::tensors::{value_or_grad, HostTensor, TensorReader};

/// PyTorch's `nn.LayerNorm` epsilon.
const LN_EPSILON: f64 = 1e-5;

/// A trainable layer norm over the last dimension.
#[derive(Module, Debug)]
pub struct AdapterNorm {
    /// Scale `[d]`, starting at one.
    pub weight: Param<Tensor<1>>,
    /// Shift `[d]`, starting at zero.
    pub bias: Param<Tensor<1>>,
}

impl AdapterNorm {
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let last = D - 1;
        let mean = x.clone().mean_dim(last);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(last);
        centered / (var + LN_EPSILON).sqrt() * self.weight.val().unsqueeze::<D>()
            + self.bias.val().unsqueeze::<D>()
    }
}

/// Down-projection to the bottleneck, nonlinearity, up-projection, residual.
#[derive(Module, Debug)]
pub struct BottleneckLayer {
    /// Down-projection, weight `[d, b]`.
    pub down: Linear,
    /// Up-projection, weight `[b, d]`; zero at init.
    pub up: Linear,
    /// Optional layer norm on the input.
    pub norm: Option<AdapterNorm>,
    /// Nonlinearity.
    #[module(skip)]
    pub non_linearity: NonLinearity,
}

impl BottleneckLayer {
    /// An adapter on a projection with `width` outputs: the down-projection drawn as
    /// `nn.Linear` draws it, its bias zero, the up-projection zero (or random without `init`).
    pub fn init(
        width: usize,
        bottleneck: usize,
        non_linearity: NonLinearity,
        ln_before: bool,
        init: bool,
        device: &Device,
    ) -> Self {
        let uniform = |shape: [usize; 2], fan_in: usize| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Tensor::random(shape, Distribution::Uniform(-bound, bound), device)
        };
        let up_weight = if init {
            Tensor::zeros([bottleneck, width], device)
        } else {
            uniform([bottleneck, width], bottleneck)
        };
        Self {
            down: Linear {
                weight: Param::from_tensor(uniform([width, bottleneck], width)),
                bias: Some(Param::from_tensor(Tensor::zeros([bottleneck], device))),
            },
            up: Linear {
                weight: Param::from_tensor(up_weight),
                bias: Some(Param::from_tensor(Tensor::zeros([width], device))),
            },
            norm: ln_before.then(|| AdapterNorm {
                weight: Param::from_tensor(Tensor::ones([width], device)),
                bias: Param::from_tensor(Tensor::zeros([width], device)),
            }),
            non_linearity,
        }
    }
}

impl ProjectionLayer for BottleneckLayer {
    type Config = BottleneckConfig;

    fn new(config: &BottleneckConfig, _key: &str, base: &Linear) -> Result<Self> {
        let width = base.weight.dims()[1];
        Ok(Self::init(
            width,
            config.bottleneck_width(width),
            config.non_linearity,
            config.ln_before,
            config.init_weights,
            &base.weight.device(),
        ))
    }

    fn method_name(&self) -> &'static str {
        "bottleneck adapter"
    }

    fn describe(&self) -> String {
        format!(
            "bottleneck {} -> {} ({:?}{})",
            self.down.weight.dims()[0],
            self.down.weight.dims()[1],
            self.non_linearity,
            if self.norm.is_some() {
                ", layer norm"
            } else {
                ""
            }
        )
    }

    /// The adapter on the projection's output `h = base(x)`: `h` plus the adapter's output on it.
    fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D> {
        let h = forward_linear(base, x);
        // On a base of lower precision: computed in the adapter's type, cast back.
        let (dtype, own) = (h.dtype(), self.down.weight.val().dtype());
        let h = to_dtype(h, own);
        let input = match &self.norm {
            Some(norm) => norm.forward(h.clone()),
            None => h.clone(),
        };
        let down = self.down.forward(input);
        let act = match self.non_linearity {
            NonLinearity::Relu => relu(down),
            NonLinearity::Gelu => gelu(down),
            NonLinearity::Silu => silu(down),
            NonLinearity::Tanh => tanh(down),
        };
        to_dtype(h + self.up.forward(act), dtype)
    }

    /// A residual MLP on the output is not a linear map of the input: it cannot be merged.
    fn can_merge(&self) -> bool {
        false
    }

    fn merge(&self, _weight: Tensor<2>, _bias: Option<Tensor<1>>) -> Option<Merged> {
        None
    }

    /// Never merged, so there is nothing to take out.
    fn unmerge(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        _memo: Option<Tensor<1>>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        (weight, bias)
    }

    /// The tensors in PyTorch's layout: `adapter_down.weight` `[b, d]`, `adapter_down.bias`,
    /// `adapter_up.weight` `[d, b]`, `adapter_up.bias`, and `adapter_ln.weight`/`.bias` when
    /// there is a layer norm; with `grads`, their gradients.
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(&'static str, HostTensor)>> {
        let mut out = Vec::new();
        for (linear, weight_name, bias_name) in [
            (&self.down, "adapter_down.weight", "adapter_down.bias"),
            (&self.up, "adapter_up.weight", "adapter_up.bias"),
        ] {
            if let Some(w) = value_or_grad(&linear.weight, grads) {
                out.push((weight_name, HostTensor::read(w.transpose())?));
            }
            if let Some(b) = linear.bias.as_ref().and_then(|b| value_or_grad(b, grads)) {
                out.push((bias_name, HostTensor::read(b)?));
            }
        }
        if let Some(norm) = &self.norm {
            if let Some(w) = value_or_grad(&norm.weight, grads) {
                out.push(("adapter_ln.weight", HostTensor::read(w)?));
            }
            if let Some(b) = value_or_grad(&norm.bias, grads) {
                out.push(("adapter_ln.bias", HostTensor::read(b)?));
            }
        }
        Ok(out)
    }

    /// Replaces the tensors with those `read` returns for the names above.
    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        let [width, bottleneck] = self.down.weight.dims();
        let device = self.down.weight.device();
        let mut matrix = |name: &str, rows: usize, cols: usize| -> Result<Tensor<2>> {
            Ok(read(name, &[rows, cols])?.transposed().upload::<2>(&device))
        };
        let down_w = matrix("adapter_down.weight", bottleneck, width)?;
        let up_w = matrix("adapter_up.weight", width, bottleneck)?;
        self.down.weight = replace_value(&self.down.weight, down_w);
        self.up.weight = replace_value(&self.up.weight, up_w);
        let mut vector = |name: &str, len: usize| -> Result<Tensor<1>> {
            Ok(read(name, &[len])?.upload::<1>(&device))
        };
        for (linear, name, len) in [
            (&mut self.down, "adapter_down.bias", bottleneck),
            (&mut self.up, "adapter_up.bias", width),
        ] {
            if let Some(bias) = &linear.bias {
                linear.bias = Some(replace_value(bias, vector(name, len)?));
            }
        }
        if let Some(norm) = &mut self.norm {
            norm.weight = replace_value(&norm.weight, vector("adapter_ln.weight", width)?);
            norm.bias = replace_value(&norm.bias, vector("adapter_ln.bias", width)?);
        }
        Ok(())
    }
}
