//! Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small residual MLP on the
//! output of a block's last projection. Hugging Face PEFT has no such method; the file format
//! (`peft_type` `BOTTLENECK`) is this project's and is documented in `docs/bottleneck-format.md`.

mod config;
mod layer;

pub use config::{BottleneckConfig, BottleneckVariant, NonLinearity};
pub use layer::BottleneckLayer;
