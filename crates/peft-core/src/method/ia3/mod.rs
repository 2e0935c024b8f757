//! IA3 (Liu et al. 2022): learned vectors that rescale the outputs of the targeted projections,
//! or the inputs of the feed-forward ones, as Hugging Face PEFT computes them.

mod config;
mod layer;

pub use config::Ia3Config;
pub use layer::Ia3Layer;
