//! The slot in a model for adapters that belong to the model as a whole rather than to one
//! projection: prompt learning's virtual tokens today (prefix tuning's per-layer keys and
//! values, prompt tuning's embeddings), shared state such as VeRA's projections next. The
//! model's forward pass asks the slot for the active adapter's virtual tokens; it does not know
//! the methods.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::registry::ModelAdapter;

/// A model-wide adapter under its name.
#[derive(Module, Debug)]
pub struct NamedModelAdapter {
    /// The adapter's name.
    #[module(skip)]
    pub name: String,
    /// The adapter.
    pub adapter: ModelAdapter,
}

/// The model-wide adapters attached to a model, and which one runs.
#[derive(Module, Debug, Default)]
pub struct ModelAdapters {
    /// Attached adapters.
    pub adapters: Vec<NamedModelAdapter>,
    /// The model's active adapter (which may be one with no model-wide part; then none runs
    /// here).
    #[module(skip)]
    pub active: Option<String>,
}

impl ModelAdapters {
    /// The adapter attached under `name`.
    pub fn get(&self, name: &str) -> Option<&ModelAdapter> {
        self.adapters
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.adapter)
    }

    /// The same, mutable.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut ModelAdapter> {
        self.adapters
            .iter_mut()
            .find(|e| e.name == name)
            .map(|e| &mut e.adapter)
    }

    /// The active model-wide adapter, if the active adapter has one.
    pub fn active(&self) -> Option<&ModelAdapter> {
        self.active.as_deref().and_then(|name| self.get(name))
    }

    /// Whether the active adapter puts keys and values before every layer's (prefix tuning),
    /// which generation keeps in the key/value cache.
    pub fn prefix_active(&self) -> bool {
        self.active().is_some_and(ModelAdapter::has_prefix)
    }

    /// Keys and values `[batch, kv_heads, virtual, head_dim]` per layer to put before the
    /// input's, when the active adapter has them.
    pub fn prefix(&self, batch: usize) -> Option<Vec<(Tensor<4>, Tensor<4>)>> {
        self.active().and_then(|a| a.prefix(batch))
    }

    /// Embeddings `[batch, virtual, hidden]` to put before the input's, when the active
    /// adapter has them.
    pub fn prompt(&self, batch: usize) -> Option<Tensor<3>> {
        self.active().and_then(|a| a.prompt(batch))
    }

    /// Virtual positions the active adapter puts before the input (prefix or prompt).
    pub fn active_len(&self) -> usize {
        self.active().map_or(0, ModelAdapter::virtual_tokens)
    }
}
