//! Safetensors checkpoints, single-file or sharded (`model.safetensors.index.json`), memory-mapped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::SafeTensors;

use peft_core::tensors::decode_floats;
use peft_core::HostTensor;

use super::source::{map_file, WeightSource};
use crate::error::{ModelError, Result};

/// One memory-mapped safetensors file and its parsed header.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let mmap = map_file(
            path,
            "weights file",
            "a shard listed in model.safetensors.index.json",
        )?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::BadWeightsFile {
                path: path.to_path_buf(),
                message: format!("unreadable safetensors header: {e}"),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }
}

/// Every tensor of a checkpoint, read lazily from memory-mapped files.
pub struct SafetensorsWeights {
    shards: Vec<Shard>,
    location: BTreeMap<String, usize>,
    description: String,
}

impl SafetensorsWeights {
    /// Opens one `.safetensors` file.
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::from_shards(vec![Shard::open(path)?], path.display().to_string())
    }

    /// Opens the shards named by a `model.safetensors.index.json`.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|source| ModelError::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let index: Index = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: index_path.to_path_buf(),
            source,
        })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<&String> = index.weight_map.values().collect();
        files.sort();
        files.dedup();
        // Shards are files of the model folder; a path elsewhere is a corrupt or hostile index.
        if let Some(bad) = files.iter().find(|f| {
            let mut parts = Path::new(f.as_str()).components();
            !matches!(
                (parts.next(), parts.next()),
                (Some(std::path::Component::Normal(_)), None)
            )
        }) {
            return Err(ModelError::ConfigValue {
                path: index_path.to_path_buf(),
                key: "weight_map".into(),
                message: format!("shard {bad:?} is not a file name in the model folder"),
            });
        }
        let shards = files
            .into_iter()
            .map(|f| Shard::open(&dir.join(f)))
            .collect::<Result<Vec<_>>>()?;
        let weights = Self::from_shards(shards, index_path.display().to_string())?;
        if let Some(name) = index
            .weight_map
            .keys()
            .find(|n| !weights.location.contains_key(*n))
        {
            return Err(ModelError::MissingTensor {
                name: name.clone(),
                source_desc: format!(
                    "{} (listed in the index, absent from its shard)",
                    weights.description
                ),
            });
        }
        Ok(weights)
    }

    fn from_shards(shards: Vec<Shard>, description: String) -> Result<Self> {
        let mut location = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.metadata.tensors().keys() {
                location.insert(name.clone(), i);
            }
        }
        Ok(Self {
            shards,
            location,
            description,
        })
    }

    fn find(&self, name: &str) -> Option<(&Shard, &TensorInfo)> {
        let shard = &self.shards[*self.location.get(name)?];
        Some((shard, shard.info(name)?))
    }
}

impl WeightSource for SafetensorsWeights {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn names(&self) -> Vec<String> {
        self.location.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.find(name).map(|(_, info)| info.shape.clone())
    }

    fn stored_bytes(&self, name: &str) -> u64 {
        self.find(name).map_or(0, |(_, info)| {
            (info.data_offsets.1 - info.data_offsets.0) as u64
        })
    }

    fn read_f32(&self, name: &str) -> Result<HostTensor> {
        let (shard, info) = self.find(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
            source_desc: self.description.clone(),
        })?;
        let (begin, end) = info.data_offsets;
        let bytes = shard
            .mmap
            .get(shard.data_start + begin..shard.data_start + end)
            .ok_or_else(|| ModelError::BadWeightsFile {
                path: shard.path.clone(),
                message: format!("tensor {name:?} lies beyond the end of the file"),
            })?;
        let data =
            decode_floats(bytes, info.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}", info.dtype),
                source_desc: shard.path.display().to_string(),
                expected: "F32, F16, BF16",
            })?;
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }
}
