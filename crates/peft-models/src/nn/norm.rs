//! Normalisation layers as transformers computes them.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use peft_core::precision::{to_dtype, to_f32};

use crate::error::Result;
use crate::weights::Weights;

/// RMSNorm: `x / sqrt(mean(x²) + eps) * (weight + offset)`: LLaMA's (offset 0), Gemma's
/// (offset 1: its weights are stored as the gain minus one).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-channel gain (minus `offset`).
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
    /// Added to the stored weight to give the gain.
    pub offset: f64,
}

impl RmsNorm {
    /// The norm of the module at `vb` over `width` channels.
    pub fn load(vb: &Weights, width: usize, eps: f64, offset: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.vector("weight", width)?,
            eps,
            offset,
        })
    }

    /// Normalises the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // On flex in f32, one node whose passes run on every thread.
        #[cfg(feature = "flex")]
        if let Some(out) = super::flex::rms_norm(&x, &self.weight.val(), self.eps, self.offset) {
            return out;
        }
        // The statistic in f32 whatever the activations' type, as transformers computes it;
        // LLaMA's gain multiplies after the cast back, Gemma's `1 + w` before it.
        let dtype = x.dtype();
        let x = to_f32(x);
        let variance = x.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x * (variance + self.eps).sqrt().recip();
        match self.offset {
            0.0 => to_dtype(normed, dtype) * self.weight.val().unsqueeze(),
            offset => {
                let gain = to_f32(self.weight.val()).add_scalar(offset);
                to_dtype(normed * gain.unsqueeze(), dtype)
            }
        }
    }
}

/// LayerNorm with gain and bias (GPT-2).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Per-channel gain.
    pub weight: Param<Tensor<1>>,
    /// Per-channel bias.
    pub bias: Param<Tensor<1>>,
    /// Added to the variance before the square root.
    pub eps: f64,
}

impl LayerNorm {
    /// The norm of the module at `vb` over `width` channels.
    pub fn load(vb: &Weights, width: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.vector("weight", width)?,
            bias: vb.vector("bias", width)?,
            eps,
        })
    }

    /// Normalises the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // On flex in f32, one node whose passes run on every thread.
        #[cfg(feature = "flex")]
        if let Some(out) =
            super::flex::layer_norm(&x, &self.weight.val(), &self.bias.val(), self.eps)
        {
            return out;
        }
        // In f32 whatever the activations' type, as torch's layer norm accumulates.
        let dtype = x.dtype();
        let (weight, bias) = (to_f32(self.weight.val()), to_f32(self.bias.val()));
        let out = burn::tensor::module::layer_norm(to_f32(x), weight, Some(bias), self.eps);
        to_dtype(out, dtype)
    }
}
