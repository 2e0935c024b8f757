//! GGUF files (llama.cpp's format): the container, dequantization, the LLaMA mapping onto
//! transformers names and the tokenizer in the metadata.

mod dequant;
mod file;
mod llama;
mod vocab;

use std::path::Path;

use burn::tensor::Device;

pub use dequant::GgmlType;
pub use file::{GgufFile, MetaValue, TensorEntry};
pub use llama::GgufWeights;

use super::hf::{build, LoadedModel};
use crate::config::ModelConfig;
use crate::error::Result;

/// Loads a LLaMA-architecture GGUF onto `device`: weights dequantized to f32, the tokenizer and
/// chat template from its metadata.
pub fn load_gguf(path: &Path, device: &Device) -> Result<LoadedModel> {
    let file = GgufFile::open(path)?;
    let llama_config = llama::config(&file)?;
    let tokenizer = vocab::tokenizer(&file)?;
    let weights = GgufWeights::new(file, &llama_config);
    let config = ModelConfig::Llama(llama_config);
    let model = build(&config, &weights, device)?;
    let eos_token_ids = config.eos_token_ids();
    Ok(LoadedModel {
        model,
        config,
        tokenizer,
        eos_token_ids,
        source: path.to_path_buf(),
    })
}

/// Whether `path` is a GGUF file (by its first four bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == b"GGUF")
}
