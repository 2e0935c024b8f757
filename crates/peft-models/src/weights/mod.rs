//! Where weights come from: files of named tensors (safetensors, GGUF) seen through one
//! [`WeightSource`] interface, and the scoped [`Weights`] loader that architectures build
//! their parameters with.

pub mod gguf;
mod loader;
mod safetensors;
mod source;

pub use self::safetensors::SafetensorsWeights;
pub use loader::{WeightLoader, Weights};
pub use source::{map_file, WeightSource};
