//! Adapters for parameter-efficient fine-tuning, the points where they attach to a model, and
//! Hugging Face PEFT's adapter files.
//!
//! A model built on this crate holds every linear projection as a [`Projection`] and lists them
//! by their Hugging Face module path through [`ProjectionHost`]. PEFT methods ([`method`]) attach
//! themselves to those projections by name ([`target`]); the model code does not know which
//! methods exist. Prompt-learning methods (prefix and prompt tuning) live in the model's
//! [`VirtualTokens`] slot instead, which the model's forward pass consults.

pub mod adapters;
pub mod error;
pub mod format;
mod ids;
pub mod method;
mod mode;
pub mod projection;
pub mod report;
pub mod target;
pub mod virtual_tokens;

pub use adapters::{
    active_adapter, active_adapter_merges, adapter_names, attach_adapter, disable_adapters,
    merge_adapter, merge_and_unload, set_adapter, unload_adapter, unmerge_adapter, AttachReport,
};
pub use error::{PeftError, Result};
pub use format::{load_adapter, save_adapter};
pub use method::{Adapter, AdapterConfig};
pub use mode::eval_mode;
pub use projection::{ModelGeometry, Projection, ProjectionHost, WeightLayout};
pub use report::{count_parameters, ParameterReport};
pub use virtual_tokens::{PromptEncoder, VirtualTokens};
