//! Prefix tuning (Li & Liang 2021), as Hugging Face PEFT runs it on decoder-only models:
//! learned keys and values before every layer's. It touches no projection: the model asks its
//! model-wide adapter for the keys and values (`crate::model_adapters`).

mod config;
mod encoder;

pub use config::PrefixTuningConfig;
pub use encoder::{PrefixEncoder, PrefixMlp};
