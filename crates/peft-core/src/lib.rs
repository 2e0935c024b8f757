//! Adapters for parameter-efficient fine-tuning, the points where they attach to a model, and
//! Hugging Face PEFT's adapter files.
//!
//! A model built on this crate holds every linear projection as a [`Projection`] and lists them
//! by their Hugging Face module path through [`ProjectionHost`]. PEFT methods ([`method`], one
//! folder each, registered once in [`registry`]) attach themselves to those projections by name
//! ([`target`]); the model code does not know which methods exist. Methods with an adapter on
//! the model as a whole (prefix and prompt tuning) live in the model's [`ModelAdapters`] slot,
//! which the model's forward pass consults.
//!
//! Layers, bottom up (a module only uses modules of its own layer or below):
//! - leaves: [`error`], [`json`], [`tensors`], [`files`], [`geometry`], [`target`], `ids`, `mode`,
//!   `flex_node` (hand-written flex kernels as operations and autodiff nodes),
//!   [`packed`] (block-quantized weights), [`precision`] (casts between a low-precision base
//!   and f32 adapters), [`product`] (a linear layer's product; on flex by `flex_matmul`'s own
//!   kernel), then [`frozen`] (a projection's frozen base);
//! - [`method`]: the contract ([`method::api`]) and one folder per method;
//! - [`registry`]: the enums that hold every method;
//! - [`projection`], [`model_adapters`], then [`host`]: where adapters live on a model;
//! - [`adapters`] (attach, activate, merge, unload), then [`adapter_folder`] (PEFT's files) and
//!   [`report`].

pub mod adapter_folder;
pub mod adapters;
pub mod error;
pub mod files;
#[cfg(feature = "flex")]
mod flex_lora;
#[cfg(feature = "flex")]
mod flex_matmul;
#[cfg(feature = "flex")]
pub mod flex_node;
pub mod frozen;
pub mod geometry;
pub mod host;
mod ids;
pub mod json;
pub mod method;
mod mode;
pub mod model_adapters;
pub mod packed;
pub mod precision;
pub mod product;
pub mod projection;
pub mod registry;
pub mod report;
pub mod target;
pub mod tensors;
#[cfg(test)]
mod testing;

pub use adapter_folder::{load_adapter, save_adapter};
pub use adapters::{
    active_adapter, active_adapter_merges, adapter_names, attach_adapter, clear_adapter_per_row,
    disable_adapters, merge_adapter, merge_and_unload, set_adapter, set_adapter_per_row,
    unload_adapter, unmerge_adapter, AttachReport, BASE_ROW,
};
pub use error::{PeftError, Result};
pub use frozen::FrozenLinear;
pub use geometry::ModelGeometry;
pub use host::ProjectionHost;
pub use ids::with_stable_ids;
pub use mode::eval_mode;
pub use model_adapters::ModelAdapters;
pub use packed::{BlockCodes, PackFormat, PackedWeight};
pub use projection::{Projection, WeightLayout};
pub use registry::{Adapter, AdapterConfig, ModelAdapter};
pub use report::{count_model_parameters, count_parameters, ParameterReport};
pub use tensors::HostTensor;

/// The name an adapter gets when nobody names it (PEFT's `default`).
pub const DEFAULT_ADAPTER: &str = "default";
