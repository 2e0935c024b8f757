//! One module per subcommand, and the options they share.

pub mod generate;
pub mod inspect;
pub mod logits;

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::Device;
use peft_models::LoadedModel;

use crate::backend::{self, BackendChoice};

/// Options of every command that loads a model and computes.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model to load: a Hugging Face folder (config.json, model.safetensors or sharded
    /// safetensors, tokenizer.json).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Compute backend. `auto` picks CUDA, then a real GPU through WGPU, then the CPU, and
    /// says which it picked.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

impl ModelArgs {
    /// Selects the device (telling the user on stderr) and loads the model onto it.
    pub fn load(&self) -> Result<(LoadedModel, Device)> {
        let selected = backend::select(self.backend)?;
        eprintln!("backend: {}", selected.description);
        let loaded = peft_models::load_model(&self.model, &selected.device)
            .with_context(|| format!("cannot load model {}", self.model.display()))?;
        Ok((loaded, selected.device))
    }
}
