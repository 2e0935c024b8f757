//! A projection's frozen base layer: a dense `Linear`, or a weight kept packed
//! ([`PackedWeight`], QLoRA's base) and expanded for each product.

use std::borrow::Cow;

use crate::product::{forward_linear, linear};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::packed::PackedWeight;

/// A packed weight `[in, out]` with its bias.
#[derive(Module, Debug)]
pub struct PackedLinear {
    /// The weight.
    pub weight: PackedWeight,
    /// The bias `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

/// The frozen layer `y = x W + b` a projection computes beside its adapters.
// One per projection, so the packed variant's size does not matter; Burn's `Module` has no
// implementation for `Box` to shrink it with.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FrozenLinear {
    /// Weight in the device's float type.
    Dense(Linear),
    /// Weight in block codes, expanded per use.
    Packed(PackedLinear),
}

impl FrozenLinear {
    /// The weight's shape `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(layer) => layer.weight.dims(),
            Self::Packed(layer) => layer.weight.dims(),
        }
    }

    /// Where the weight lives.
    pub fn device(&self) -> Device {
        match self {
            Self::Dense(layer) => layer.weight.device(),
            Self::Packed(layer) => layer.weight.device(),
        }
    }

    /// The layer on the last dimension of `x`. A packed weight is expanded for this product
    /// only.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Dense(layer) => forward_linear(layer, x),
            Self::Packed(layer) => linear(
                x,
                layer.weight.dequantize(),
                layer.bias.as_ref().map(|b| b.val()),
            ),
        }
    }

    /// The weight `[in, out]` as a float tensor (a packed one expanded now).
    pub fn weight(&self) -> Tensor<2> {
        match self {
            Self::Dense(layer) => layer.weight.val(),
            Self::Packed(layer) => layer.weight.dequantize(),
        }
    }

    /// The bias.
    pub fn bias(&self) -> Option<Tensor<1>> {
        let bias = match self {
            Self::Dense(layer) => &layer.bias,
            Self::Packed(layer) => &layer.bias,
        };
        bias.as_ref().map(|b| b.val())
    }

    /// The dense layer, unless the weight is packed.
    pub fn as_dense(&self) -> Option<&Linear> {
        match self {
            Self::Dense(layer) => Some(layer),
            Self::Packed(_) => None,
        }
    }

    /// The same, mutable.
    pub fn as_dense_mut(&mut self) -> Option<&mut Linear> {
        match self {
            Self::Dense(layer) => Some(layer),
            Self::Packed(_) => None,
        }
    }

    /// Whether the weight is packed.
    pub fn is_packed(&self) -> bool {
        matches!(self, Self::Packed(_))
    }

    /// The layer as a `Linear`: the dense one itself, or a frozen one holding the expanded
    /// weight, made for one use (what adapters are given as their base).
    pub fn as_linear(&self) -> Cow<'_, Linear> {
        match self {
            Self::Dense(layer) => Cow::Borrowed(layer),
            Self::Packed(layer) => Cow::Owned(Linear {
                weight: Param::from_tensor(layer.weight.dequantize()).set_require_grad(false),
                bias: layer.bias.clone(),
            }),
        }
    }
}
