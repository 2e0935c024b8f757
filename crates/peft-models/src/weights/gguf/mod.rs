//! GGUF files (llama.cpp's format): the container, dequantization, the tensors seen under
//! Hugging Face names (each architecture says how llama.cpp names its tensors), and the
//! tokenizer in the metadata.

mod dequant;
mod file;
mod vocab;
mod weights;

use std::path::Path;

pub use dequant::GgmlType;
pub use file::{GgufFile, MetaValue, TensorEntry};
pub use vocab::tokenizer;
pub use weights::{GgufWeights, HfName};

/// Whether `path` is a GGUF file (by its first four bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == b"GGUF")
}
