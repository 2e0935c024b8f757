//! Parts every architecture shares, below the architectures: MLP activations, attention pieces (masks,
//! grouped-query heads, the fused call, the key/value cache), the memory-efficient attention for
//! training, rotary position embeddings,
//! normalisation, token embeddings, the walk over a model's projections, the model-wide
//! adapters' virtual tokens in front of the input, and hand-written kernels for the flex CPU
//! backend.

pub mod activation;
pub mod attention;
pub mod efficient_attention;
pub mod embedding;
#[cfg(feature = "flex")]
pub(crate) mod flex;
pub mod norm;
pub mod projections;
pub mod rope;
pub mod virtual_input;
