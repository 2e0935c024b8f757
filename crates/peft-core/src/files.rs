//! Files on disk: reading with a "not found" that says what the file is, and writing through a
//! temporary file so that a crash never leaves a partial file under the real name.

use std::path::{Path, PathBuf};

use crate::error::{PeftError, Result};

/// Reads `path` whole; a missing file is [`PeftError::MissingFile`] naming `what` it is.
pub fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => PeftError::MissingFile {
            what,
            path: path.to_path_buf(),
        },
        _ => PeftError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder, then renames it, so a
/// crash never leaves a partial file under the real name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |source| PeftError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
