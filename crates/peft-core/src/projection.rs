//! The linear projection every model uses, and the trait that lists a model's projections.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;

/// A linear projection `y = x W + b` with `W` stored `[in, out]`, the point where adapters attach.
#[derive(Module, Debug)]
pub struct Projection {
    /// The frozen base layer.
    pub base: Linear,
}

impl Projection {
    /// A projection from a weight stored `[in, out]` and an optional bias `[out]`.
    pub fn new(weight: Param<Tensor<2>>, bias: Option<Param<Tensor<1>>>) -> Self {
        Self {
            base: Linear { weight, bias },
        }
    }

    /// An output head that reuses an embedding `[vocab, hidden]` as its `[hidden, vocab]` weight
    /// (tied embeddings): the same parameter id, so it is counted once, and a transposed view of
    /// the same memory rather than a copy.
    pub fn tied_to(embedding: &Param<Tensor<2>>) -> Self {
        Self::new(
            Param::initialized(embedding.id, embedding.val().transpose()),
            None,
        )
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.base.weight.dims()[0]
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.base.weight.dims()[1]
    }

    /// Applies the projection to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.base.forward(x)
    }
}

/// A model whose projections can be found by their Hugging Face module paths.
pub trait ProjectionHost {
    /// Every projection with its full Hugging Face module path, in model order
    /// (e.g. `model.layers.0.self_attn.q_proj`, `transformer.h.0.attn.c_attn`, `lm_head`).
    fn projections(&self) -> Vec<(String, &Projection)>;
}
