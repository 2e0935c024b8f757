//! A file (or set of files) of named tensors, read as f32 on the host.

use std::path::Path;

use peft_core::{BlockCodes, HostTensor};

use crate::error::{ModelError, Result};

/// A file (or set of files) of named tensors, under their Hugging Face names.
pub trait WeightSource {
    /// The file(s), for error messages.
    fn describe(&self) -> String;
    /// Every tensor name, in a stable order.
    fn names(&self) -> Vec<String>;
    /// The stored shape of `name`, if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Size in bytes of `name` as stored (for progress).
    fn stored_bytes(&self, name: &str) -> u64;
    /// Reads `name` and converts it to f32.
    fn read_f32(&self, name: &str) -> Result<HostTensor>;
    /// Reads the 2-D `name` as the block codes it is stored in, when it is stored in a type
    /// [`BlockCodes`] holds exactly (GGUF's Q4_0, Q4_1, Q8_0); `None` otherwise.
    fn read_codes(&self, _name: &str) -> Result<Option<BlockCodes>> {
        Ok(None)
    }
}

/// Opens `path` and maps it read-only; "not found" becomes [`ModelError::MissingFile`] with
/// `what` and `expected`.
pub fn map_file(path: &Path, what: &'static str, expected: &'static str) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)
        .map_err(|source| ModelError::opening(path, what, expected, source))?;
    // SAFETY: the map is read-only; a file modified while it is loaded is outside what any
    // loader can guard against (safetensors and llama.cpp map their files the same way).
    unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}
