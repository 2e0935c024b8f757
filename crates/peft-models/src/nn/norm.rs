//! Normalisation layers as transformers computes them.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

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
        let variance = x.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x * (variance + self.eps).sqrt().recip();
        let gain = match self.offset {
            0.0 => self.weight.val(),
            offset => self.weight.val().add_scalar(offset),
        };
        normed * gain.unsqueeze()
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
        burn::tensor::module::layer_norm(x, self.weight.val(), Some(self.bias.val()), self.eps)
    }
}
