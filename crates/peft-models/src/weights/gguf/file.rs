//! The GGUF container (versions 2 and 3): header, metadata and tensor directory, read from a
//! memory map. Tensor bytes stay in the map until a tensor is asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequant::GgmlType;
use crate::error::{ModelError, Result};
use crate::weights::source::map_file;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays nest at most this deep (llama.cpp writes flat arrays); deeper is a corrupt or
/// hostile file that would otherwise exhaust the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// `FLOAT32` or `FLOAT64`; a `FLOAT32` is widened through its shortest decimal form, so
    /// `1e-5` stored as f32 reads back as exactly `1e-5`, as Python's GGUF reader prints it.
    Float(f64),
    /// `BOOL`.
    Bool(bool),
    /// `STRING` (UTF-8).
    Str(String),
    /// `ARRAY` of any of the above.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Uint(v) => Some(v),
            Self::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Float(v) => Some(v),
            Self::Uint(v) => Some(v as f64),
            Self::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file and how it is stored.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Row-major shape (GGUF lists dimensions innermost first; this is reversed).
    pub shape: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset in the file.
    pub start: usize,
    /// Stored size in bytes.
    pub len: usize,
}

impl TensorEntry {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Every metadata key and its value.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Every tensor, by GGUF name, in file order of names.
    pub tensors: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Maps `path` and parses its header, metadata and tensor directory.
    pub fn open(path: &Path) -> Result<Self> {
        let mmap = map_file(path, "GGUF file", "a .gguf model file")?;
        let bad = |message: String| ModelError::BadWeightsFile {
            path: path.to_path_buf(),
            message,
        };
        let mut cursor = Cursor {
            bytes: &mmap,
            pos: 0,
        };
        let header = parse_header(&mut cursor).map_err(bad)?;
        let (version, metadata, infos) = header;
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(bad(format!(
                        "general.alignment {v:?} is not a power of two"
                    )))
                }
            },
        };
        let data_start = (cursor.pos as u64)
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| bad(format!("general.alignment {alignment} is too large")))?;
        let mut tensors = BTreeMap::new();
        for (name, dims, type_id, offset) in infos {
            if tensors.contains_key(&name) {
                return Err(bad(format!("tensor {name:?} is listed twice")));
            }
            let ggml_type =
                GgmlType::from_id(type_id).map_err(|dtype| ModelError::UnsupportedDtype {
                    name: name.clone(),
                    dtype,
                    source_desc: path.display().to_string(),
                    expected: GgmlType::SUPPORTED,
                })?;
            let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
            let numel = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("tensor {name:?}: dimensions {dims:?} overflow")))?;
            let row = shape.last().copied().unwrap_or(1);
            if row % ggml_type.block_values() != 0 {
                return Err(bad(format!(
                    "tensor {name:?}: row length {row} is not a multiple of the {} block size {}",
                    ggml_type.name(),
                    ggml_type.block_values()
                )));
            }
            let len = (numel / ggml_type.block_values())
                .checked_mul(ggml_type.block_bytes())
                .ok_or_else(|| bad(format!("tensor {name:?}: size overflows")))?;
            // Offsets are checked, not wrapped: a wrapped one would read the header as weights.
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len as u64));
            let Some(start) =
                start.filter(|s| s % alignment == 0 && end.is_some_and(|e| e <= mmap.len() as u64))
            else {
                return Err(bad(format!(
                    "tensor {name:?} ({len} bytes at offset {offset}) lies outside the file or is misaligned; the file may be truncated"
                )));
            };
            tensors.insert(
                name,
                TensorEntry {
                    shape,
                    ggml_type,
                    start: start as usize,
                    len,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored bytes of a tensor.
    pub fn tensor_bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.mmap[entry.start..entry.start + entry.len]
    }

    /// Reads and dequantizes tensor `name` to row-major f32 values.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.path.display().to_string(),
            })?;
        Ok(entry.ggml_type.dequantize(self.tensor_bytes(entry)))
    }
}

impl GgufFile {
    /// An error about metadata key (or tensor) `key` of this file.
    pub fn config_error(&self, key: &str, message: String) -> ModelError {
        ModelError::ConfigValue {
            path: self.path.clone(),
            key: key.to_string(),
            message,
        }
    }

    /// The string at metadata key `key`, or an error naming it.
    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| self.config_error(key, "missing or not a string".into()))
    }

    /// The non-negative integer at metadata key `key`, or an error naming it.
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.metadata
            .get(key)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| self.config_error(key, "missing or not a non-negative integer".into()))
    }
}

type Header = (
    u32,
    BTreeMap<String, MetaValue>,
    Vec<(String, Vec<u64>, u32, u64)>,
);

fn parse_header(c: &mut Cursor) -> std::result::Result<Header, String> {
    if c.take(4)? != MAGIC {
        return Err("not a GGUF file (the first 4 bytes are not \"GGUF\")".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported; expected 2 or 3 (a big-endian file also shows up like this)"
        ));
    }
    let tensor_count = c.u64()?;
    let kv_count = c.u64()?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = c.string()?;
        let value_type = c.u32()?;
        let value = c
            .value(value_type, 0)
            .map_err(|e| format!("metadata {key:?}: {e}"))?;
        metadata.insert(key, value);
    }
    let mut infos = Vec::new();
    for _ in 0..tensor_count {
        let name = c.string()?;
        let n_dims = c.u32()?;
        if n_dims > 4 {
            return Err(format!(
                "tensor {name:?} has {n_dims} dimensions; GGUF allows at most 4"
            ));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let type_id = c.u32()?;
        let offset = c.u64()?;
        infos.push((name, dims, type_id, offset));
    }
    Ok((version, metadata, infos))
}

/// A bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "unexpected end of file at byte {} (the header is truncated or corrupt)",
                    self.pos
                )
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len =
            usize::try_from(self.u64()?).map_err(|_| "string length overflows".to_string())?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("string at byte {} is not UTF-8", self.pos - len))
    }

    /// One value of `value_type`, inside `depth` enclosing arrays.
    fn value(&mut self, value_type: u32, depth: usize) -> std::result::Result<MetaValue, String> {
        Ok(match value_type {
            0 => MetaValue::Uint(self.array::<1>()?[0] as u64),
            1 => MetaValue::Int(self.array::<1>()?[0] as i8 as i64),
            2 => MetaValue::Uint(u16::from_le_bytes(self.array()?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.array()?) as i64),
            4 => MetaValue::Uint(self.u32()? as u64),
            5 => MetaValue::Int(i32::from_le_bytes(self.array()?) as i64),
            6 => MetaValue::Float(shortest_f64(f32::from_le_bytes(self.array()?))),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "arrays nested more than {MAX_ARRAY_DEPTH} deep (the file is corrupt)"
                    ));
                }
                let item_type = self.u32()?;
                let count = self.u64()?;
                // A count whose items cannot fit in the rest of the file is corrupt; checking
                // it first keeps a forged count from reserving memory.
                let left = (self.bytes.len() - self.pos) as u64;
                if count.saturating_mul(min_value_bytes(item_type)?) > left {
                    return Err(format!("array of {count} items is longer than the file"));
                }
                let items = (0..count)
                    .map(|_| self.value(item_type, depth + 1))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                MetaValue::Array(items)
            }
            10 => MetaValue::Uint(self.u64()?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

/// The fewest bytes one value of `value_type` takes (a string or an array: its header).
fn min_value_bytes(value_type: u32) -> std::result::Result<u64, String> {
    Ok(match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        other => return Err(format!("unknown metadata value type {other}")),
    })
}

/// An f32 widened to the f64 of its shortest round-tripping decimal (`1e-5f32` → `1e-5`).
fn shortest_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}
