//! The MLP activations transformers' configs name (`activation_function`, `hidden_act`).

use burn::tensor::activation::{gelu, gelu_approximate, relu, silu};
use burn::tensor::Tensor;

/// An activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact erf form.
    Gelu,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// The activation transformers means by `name`, if this crate has it.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "gelu" => Some(Self::Gelu),
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    /// The activation applied element-wise: GELU's tanh approximation as one fused kernel in
    /// f32 on flex.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        #[cfg(feature = "flex")]
        if self == Self::GeluTanh {
            if let Some(out) = super::flex::gelu_tanh(&x) {
                return out;
            }
        }
        match self {
            Self::GeluTanh => gelu_approximate(x),
            Self::Gelu => gelu(x),
            Self::Relu => relu(x),
            Self::Silu => silu(x),
        }
    }

    /// A gated feed-forward's product `act(gate) · up` (SwiGLU with silu): one fused kernel
    /// for silu in f32 on flex, the composed operations otherwise.
    pub fn gated<const D: usize>(self, gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
        #[cfg(feature = "flex")]
        if self == Self::Silu {
            if let Some(product) = super::flex::swiglu(&gate, &up) {
                return product;
            }
        }
        self.apply(gate) * up
    }
}
