//! What a model offers the adapters: its projections by Hugging Face module path, its shape,
//! its token embeddings, and the slot for model-wide adapters.

use burn::tensor::Tensor;

use crate::geometry::ModelGeometry;
use crate::model_adapters::ModelAdapters;
use crate::projection::Projection;

/// A model whose projections can be found by their Hugging Face module paths, and which holds
/// a [`ModelAdapters`] slot that its forward pass consults.
pub trait ProjectionHost {
    /// Every projection with its full Hugging Face module path, in model order
    /// (e.g. `model.layers.0.self_attn.q_proj`, `transformer.h.0.attn.c_attn`, `lm_head`).
    fn projections(&self) -> Vec<(String, &Projection)>;

    /// The same, mutable, for attaching, activating and merging adapters.
    fn projections_mut(&mut self) -> Vec<(String, &mut Projection)>;

    /// The model's shape.
    fn geometry(&self) -> ModelGeometry;

    /// The model-wide adapters, which the forward pass consults.
    fn model_adapters(&self) -> &ModelAdapters;

    /// The same, mutable, for attaching and activating them.
    fn model_adapters_mut(&mut self) -> &mut ModelAdapters;

    /// The token embeddings of `ids`, `[ids.len(), hidden]`, detached (prompt-tuning init).
    fn embed_ids(&self, ids: &[u32]) -> Tensor<2>;
}
