//! Weight sources and model loading.

pub mod gguf;
mod hf;
mod named;
mod safetensors;
mod weights;

pub use self::safetensors::SafetensorsWeights;
pub use hf::{load_model, LoadedModel};
pub use named::{cache_dir, ensure_named_model, named_model, NamedModel, CACHE_ENV, NAMED_MODELS};
pub use weights::{HostTensor, WeightLoader, WeightSource};
