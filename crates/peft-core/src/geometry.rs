//! The shape of a model, as methods need it to size what they attach.

/// The shape of a model: what prompt-learning methods size their virtual tokens by, and what
/// picks a method's default targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelGeometry {
    /// transformers' `model_type` (`llama`, `gpt2`), which picks default targets.
    pub model_type: String,
    /// Decoder layers.
    pub num_layers: usize,
    /// Width of the residual stream (token embeddings).
    pub hidden_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (the query heads without grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Positions the model was trained for (`n_positions`, `max_position_embeddings`): the
    /// room virtual tokens and generation share with the input.
    pub context_length: usize,
}
