//! Adapter layers for parameter-efficient fine-tuning, and the points where they attach to a model.
//!
//! A model built on this crate holds every linear projection as a [`Projection`] and lists them by
//! their Hugging Face module path through [`ProjectionHost`]. PEFT methods attach themselves to
//! those projections by name; the model code does not know which methods exist.

pub mod projection;
pub mod report;

pub use projection::{Projection, ProjectionHost};
pub use report::count_parameters;
