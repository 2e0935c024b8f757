//! Weight sources and model loading.

mod hf;
mod safetensors;
mod weights;

pub use self::safetensors::SafetensorsWeights;
pub use hf::{load_model, LoadedModel};
pub use weights::{HostTensor, WeightLoader, WeightSource};
