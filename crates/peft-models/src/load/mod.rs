//! Weight sources and model loading.

pub mod gguf;
mod hf;
mod named;
mod safetensors;
mod weights;

pub use self::safetensors::SafetensorsWeights;
pub use hf::{load_model, random_model, LoadedModel};
/// Opens `path` and maps it read-only; "not found" becomes [`ModelError::MissingFile`] with
/// `what` and `expected`.
pub(crate) fn map_file(
    path: &std::path::Path,
    what: &'static str,
    expected: &'static str,
) -> crate::error::Result<memmap2::Mmap> {
    use crate::error::ModelError;
    let file = std::fs::File::open(path)
        .map_err(|source| ModelError::opening(path, what, expected, source))?;
    // SAFETY: the map is read-only; a file modified while it is loaded is outside what any
    // loader can guard against (safetensors and llama.cpp map their files the same way).
    unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub use named::{cache_dir, ensure_named_model, named_model, NamedModel, CACHE_ENV, NAMED_MODELS};
pub use weights::{HostTensor, WeightLoader, WeightSource};
