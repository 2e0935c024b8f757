//! Hugging Face PEFT's adapter folder, both ways: `adapter_config.json` and
//! `adapter_model.safetensors` with keys `base_model.model.<module path>.<tensor name>`.
//! Files are written to a temporary file and renamed into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;

use crate::ids::replace_value;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::method::AdapterConfig;
use crate::projection::{ProjectionHost, WeightLayout};

/// The adapter config file name PEFT uses.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file name PEFT uses.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before module paths in adapter files.
pub const KEY_PREFIX: &str = "base_model.model.";

/// One tensor of an adapter file: PEFT's layout, f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct FileTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl FileTensor {
    /// Reads a tensor back from the device.
    pub fn read<const D: usize>(t: Tensor<D>) -> Result<Self> {
        let shape = t.dims().to_vec();
        let data = t
            .try_into_data()
            .map_err(|e| PeftError::Backend(format!("{e:?}")))?
            .try_into_vec_as::<f32>()
            .map_err(|e| PeftError::Backend(format!("{e:?}")))?;
        Ok(Self { shape, data })
    }

    /// Uploads the tensor to `device`.
    pub fn upload<const D: usize>(self, device: &Device) -> Tensor<D> {
        let shape: [usize; D] = self
            .shape
            .try_into()
            .expect("shape checked against the rank by the reader");
        Tensor::from_data(TensorData::new(self.data, shape), device)
    }
}

/// A parameter's value, or with `grads` its gradient (`None` when it has none).
pub fn value_or_grad<const D: usize>(
    p: &Param<Tensor<D>>,
    grads: Option<&Gradients>,
) -> Option<Tensor<D>> {
    match grads {
        None => Some(p.val()),
        Some(g) => p.val().grad(g),
    }
}

/// Gives a layer the tensor named `suffix` with shape `expected`, or an error naming its key.
pub type TensorReader<'a> = dyn FnMut(&str, &[usize]) -> Result<FileTensor> + 'a;

/// Every tensor of adapter `name` (or its gradients, with `grads`), keyed as PEFT keys them.
pub fn adapter_tensors(
    model: &impl ProjectionHost,
    name: &str,
    grads: Option<&Gradients>,
) -> Result<BTreeMap<String, FileTensor>> {
    let mut out = BTreeMap::new();
    if let Some(encoder) = model.virtual_tokens().get(name) {
        // PEFT keys prompt-learning tensors without the module prefix.
        out.extend(encoder.file_tensors(grads)?);
    }
    for (key, proj) in model.projections() {
        if let Some(adapter) = proj.adapter(name) {
            for (suffix, tensor) in adapter.file_tensors(grads)? {
                out.insert(format!("{KEY_PREFIX}{key}.{suffix}"), tensor);
            }
        }
        if let Some(copy) = proj.saved.iter().find(|c| c.name == name) {
            if let Some(w) = value_or_grad(&copy.layer.weight, grads) {
                let w = match proj.layout {
                    WeightLayout::Linear => w.transpose(),
                    WeightLayout::Conv1D => w,
                };
                out.insert(format!("{KEY_PREFIX}{key}.weight"), FileTensor::read(w)?);
            }
            if let Some(b) = copy
                .layer
                .bias
                .as_ref()
                .and_then(|b| value_or_grad(b, grads))
            {
                out.insert(format!("{KEY_PREFIX}{key}.bias"), FileTensor::read(b)?);
            }
        }
    }
    Ok(out)
}

/// Serialises named tensors as f32 safetensors with PEFT's metadata (`format: pt`).
pub fn to_safetensors(tensors: &BTreeMap<String, FileTensor>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (k.clone(), v))
                .map_err(|e| PeftError::Backend(format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize(views, metadata).map_err(|e| PeftError::Backend(e.to_string()))
}

/// Saves adapter `name` to `dir` as PEFT saves it.
pub fn save_adapter(
    model: &impl ProjectionHost,
    name: &str,
    config: &AdapterConfig,
    dir: &Path,
) -> Result<()> {
    let tensors = adapter_tensors(model, name, None)?;
    if tensors.is_empty() {
        return Err(PeftError::UnknownAdapter {
            name: name.to_string(),
            available: crate::adapters::adapter_names(model).join(", "),
        });
    }
    let mut json = config.to_json();
    // PEFT sets fan_in_fan_out from the targeted layers' type (true for GPT-2's Conv1D).
    let conv1d = model
        .projections()
        .iter()
        .any(|(_, p)| p.layout == WeightLayout::Conv1D && p.adapter(name).is_some());
    if json.get("fan_in_fan_out").is_some() {
        json["fan_in_fan_out"] = Value::Bool(conv1d);
    }
    std::fs::create_dir_all(dir).map_err(|source| PeftError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomic(&dir.join(WEIGHTS_FILE), &to_safetensors(&tensors)?)?;
    let text = serde_json::to_string_pretty(&json).expect("JSON value serialises");
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Reads `adapter_config.json` from `dir`.
pub fn load_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = read(&path, "adapter config")?;
    let value: Value = serde_json::from_slice(&text).map_err(|source| PeftError::Json {
        path: path.clone(),
        source,
    })?;
    AdapterConfig::from_json(&value).map_err(|e| in_file(e, &path))
}

/// A config error with the file it came from appended to its message.
fn in_file(e: PeftError, path: &Path) -> PeftError {
    match e {
        PeftError::Config { field, message } => PeftError::Config {
            field,
            message: format!("{message} (in {})", path.display()),
        },
        other => other,
    }
}

/// Loads the PEFT adapter in `dir` onto `model` under `name` (activated when no other adapter
/// is active) and returns its config.
pub fn load_adapter(
    model: &mut impl ProjectionHost,
    name: &str,
    dir: &Path,
) -> Result<AdapterConfig> {
    let config = load_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if !path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(PeftError::BadFile {
            path: dir.join("adapter_model.bin"),
            message: "PyTorch pickles are not read; save the adapter with safe_serialization=True"
                .into(),
        });
    }
    let bytes = read(&path, "adapter weights")?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| PeftError::BadFile {
        path: path.clone(),
        message: format!("unreadable safetensors: {e}"),
    })?;
    crate::adapters::attach(model, name, &config, true)
        .map_err(|e| in_file(e, &dir.join(CONFIG_FILE)))?;
    let result = fill_from_file(model, name, &file, &path);
    if result.is_err() {
        // Leave the model as it was before the failed load.
        crate::adapters::unload_adapter(model, name)?;
    }
    result.map(|()| config)
}

fn fill_from_file(
    model: &mut impl ProjectionHost,
    name: &str,
    file: &SafeTensors,
    path: &Path,
) -> Result<()> {
    let mut used = std::collections::BTreeSet::new();
    if let Some(encoder) = model.virtual_tokens_mut().get_mut(name) {
        let mut reader = |key: &str, expected: &[usize]| -> Result<FileTensor> {
            let t = read_tensor(file, path, key, expected)?;
            used.insert(key.to_string());
            Ok(t)
        };
        encoder.load_file_tensors(&mut reader)?;
    }
    for (key, proj) in model.projections_mut() {
        let prefix = format!("{KEY_PREFIX}{key}.");
        let mut reader = |suffix: &str, expected: &[usize]| -> Result<FileTensor> {
            let full = format!("{prefix}{suffix}");
            let t = read_tensor(file, path, &full, expected)?;
            used.insert(full);
            Ok(t)
        };
        if let Some(named) = proj.adapters.iter_mut().find(|a| a.name == name) {
            named.adapter.load_file_tensors(&mut reader)?;
        }
        let layout = proj.layout;
        if let Some(copy) = proj.saved.iter_mut().find(|c| c.name == name) {
            let [d_in, d_out] = copy.layer.weight.dims();
            let device = copy.layer.weight.device();
            let w = match layout {
                WeightLayout::Linear => reader("weight", &[d_out, d_in])?
                    .upload::<2>(&device)
                    .transpose(),
                WeightLayout::Conv1D => reader("weight", &[d_in, d_out])?.upload::<2>(&device),
            };
            copy.layer.weight = replace_value(&copy.layer.weight, w);
            if let Some(bias) = &copy.layer.bias {
                let b = reader("bias", &[d_out])?.upload::<1>(&device);
                copy.layer.bias = Some(replace_value(bias, b));
            }
        }
    }
    let mut names = file.names();
    names.sort();
    if let Some(key) = names.into_iter().find(|k| !used.contains(*k)) {
        return Err(PeftError::UnexpectedTensor {
            path: path.to_path_buf(),
            key: key.to_string(),
        });
    }
    Ok(())
}

fn read_tensor(
    file: &SafeTensors,
    path: &Path,
    key: &str,
    expected: &[usize],
) -> Result<FileTensor> {
    let view = file.tensor(key).map_err(|_| PeftError::MissingTensor {
        path: path.to_path_buf(),
        key: key.to_string(),
    })?;
    if view.shape() != expected {
        return Err(PeftError::Shape {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    let bytes = view.data();
    let halves = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    let data = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => halves().map(|h| half::f16::from_bits(h).to_f32()).collect(),
        Dtype::BF16 => halves()
            .map(|h| half::bf16::from_bits(h).to_f32())
            .collect(),
        other => {
            return Err(PeftError::Dtype {
                path: path.to_path_buf(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok(FileTensor {
        shape: expected.to_vec(),
        data,
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
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
