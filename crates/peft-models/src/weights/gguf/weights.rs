//! A GGUF file's tensors under their Hugging Face names, with llama.cpp's q/k row permutation
//! undone where the architecture's naming says it was applied.

use std::collections::BTreeMap;

use peft_core::{BlockCodes, HostTensor};

use super::file::GgufFile;
use crate::error::{ModelError, Result};
use crate::weights::source::WeightSource;

/// Where a llama.cpp tensor lives in a transformers checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfName {
    /// The transformers name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Heads whose rows llama.cpp's converter interleaved for its RoPE kernel (q and k).
    pub permuted_heads: Option<usize>,
    /// Whether llama.cpp's converter stored the values plus one (Gemma's RMSNorm gains, which
    /// transformers stores minus one).
    pub plus_one: bool,
}

/// The tensors of a GGUF file under their transformers names.
pub struct GgufWeights {
    file: GgufFile,
    /// Transformers name → GGUF name and how it was stored.
    by_hf_name: BTreeMap<String, (String, HfName)>,
}

impl GgufWeights {
    /// Maps every tensor of `file` through the architecture's `naming`; a tensor it does not
    /// name keeps its GGUF name, so that the loader reports it as unexpected.
    pub fn new(file: GgufFile, naming: impl Fn(&str) -> Option<HfName>) -> Self {
        let by_hf_name = file
            .tensors
            .keys()
            .map(|gguf| {
                let hf = naming(gguf).unwrap_or_else(|| HfName {
                    name: gguf.clone(),
                    permuted_heads: None,
                    plus_one: false,
                });
                (hf.name.clone(), (gguf.clone(), hf))
            })
            .collect();
        Self { file, by_hf_name }
    }

    /// The underlying file (for its tokenizer metadata).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

/// Undoes `convert_hf_to_gguf.py`'s `permute`: within each head, llama.cpp stores row
/// `2j + i` what transformers stores at row `i * head_dim/2 + j` (i in {0, 1}). Entry `r` is
/// the stored row that holds transformers' row `r`.
fn unpermuted_order(rows: usize, heads: usize) -> Vec<usize> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                order[h * head_dim + i * half + j] = h * head_dim + 2 * j + i;
            }
        }
    }
    order
}

fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for r in unpermuted_order(rows, heads) {
        out.extend_from_slice(&data[r * cols..(r + 1) * cols]);
    }
    out
}

impl GgufWeights {
    /// The GGUF entry behind transformers name `name`, with how it was stored.
    fn entry(&self, name: &str) -> Result<(&str, &HfName)> {
        let (gguf, stored) =
            self.by_hf_name
                .get(name)
                .ok_or_else(|| ModelError::MissingTensor {
                    name: name.to_string(),
                    source_desc: self.describe(),
                })?;
        Ok((gguf, stored))
    }

    /// The heads whose rows were interleaved, checked against the row count.
    fn permuted_heads(&self, gguf: &str, stored: &HfName, rows: usize) -> Result<Option<usize>> {
        match stored.permuted_heads {
            Some(heads) if heads == 0 || rows % (2 * heads) != 0 => {
                Err(ModelError::BadWeightsFile {
                    path: self.file.path().to_path_buf(),
                    message: format!(
                        "tensor {gguf:?} has {rows} rows, not a whole number of {heads} heads with an even width",
                    ),
                })
            }
            heads => Ok(heads),
        }
    }
}

impl WeightSource for GgufWeights {
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    fn names(&self) -> Vec<String> {
        self.by_hf_name.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (gguf, _) = self.by_hf_name.get(name)?;
        Some(self.file.tensors[gguf].shape.clone())
    }

    fn stored_bytes(&self, name: &str) -> u64 {
        self.by_hf_name
            .get(name)
            .map_or(0, |(gguf, _)| self.file.tensors[gguf].len as u64)
    }

    fn read_f32(&self, name: &str) -> Result<HostTensor> {
        let (gguf, stored) = self.entry(name)?;
        let entry = &self.file.tensors[gguf];
        let mut data = self.file.read_f32(gguf)?;
        if stored.plus_one {
            data.iter_mut().for_each(|v| *v -= 1.0);
        }
        let rows = entry.shape[0];
        if let Some(heads) = self.permuted_heads(gguf, stored, rows)? {
            let cols = entry.numel() / rows.max(1);
            data = unpermute_rows(&data, rows, cols, heads);
        }
        Ok(HostTensor {
            shape: entry.shape.clone(),
            data,
        })
    }

    fn read_codes(&self, name: &str) -> Result<Option<BlockCodes>> {
        let (gguf, stored) = self.entry(name)?;
        let entry = &self.file.tensors[gguf];
        let [rows, cols] = entry.shape[..] else {
            return Ok(None);
        };
        let codes = match entry
            .ggml_type
            .block_codes(self.file.tensor_bytes(entry), rows, cols)
        {
            Some(codes) if !stored.plus_one => codes,
            _ => return Ok(None),
        };
        Ok(Some(match self.permuted_heads(gguf, stored, rows)? {
            Some(heads) => codes.reorder_rows(&unpermuted_order(rows, heads)),
            None => codes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::unpermute_rows;

    /// `convert_hf_to_gguf.py`'s `permute`, written with its reshapes spelled out:
    /// `w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = Vec::with_capacity(w.len());
        for h in 0..heads {
            for j in 0..half {
                for i in 0..2 {
                    let src = (h * 2 + i) * half + j;
                    out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (rows, cols, heads) = (12, 3, 3);
        let w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let permuted = permute(&w, rows, cols, heads);
        assert_ne!(permuted, w);
        assert_eq!(unpermute_rows(&permuted, rows, cols, heads), w);
    }
}
