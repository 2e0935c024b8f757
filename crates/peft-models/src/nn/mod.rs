//! Parts every architecture shares, below the architectures: MLP activations, attention pieces (masks,
//! grouped-query heads, the fused call, the key/value cache), the memory-efficient attention for
//! training, rotary position embeddings,
//! normalisation, token embeddings, the walk over a model's projections, and the model-wide
//! adapters' virtual tokens in front of the input.

pub mod activation;
pub mod attention;
pub mod efficient_attention;
pub mod embedding;
pub mod norm;
pub mod projections;
pub mod rope;
pub mod virtual_input;
