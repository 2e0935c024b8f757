//! Hugging Face PEFT's adapter folder, both ways: `adapter_config.json` and
//! `adapter_model.safetensors` with keys `base_model.model.<module path>.<tensor name>`.
//! Files are written to a temporary file and renamed into place.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Gradients;
use safetensors::SafeTensors;
use serde_json::Value;

use crate::adapters::{adapter_names, attach, unload_adapter};
use crate::error::{PeftError, Result};
use crate::files::{read, write_atomic};
use crate::host::ProjectionHost;
use crate::ids::replace_value;
use crate::projection::WeightLayout;
use crate::registry::{Adapter, AdapterConfig};
use crate::tensors::{decode_floats, to_safetensors, value_or_grad, HostTensor};

/// The adapter config file name PEFT uses.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file name PEFT uses.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before module paths in adapter files.
pub const KEY_PREFIX: &str = "base_model.model.";

/// Every tensor of adapter `name` (or its gradients, with `grads`), keyed as PEFT keys them.
pub fn adapter_tensors(
    model: &impl ProjectionHost,
    name: &str,
    grads: Option<&Gradients>,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    if let Some(adapter) = model.model_adapters().get(name) {
        // PEFT keys prompt-learning tensors without the module prefix.
        out.extend(adapter.file_tensors(grads)?);
    }
    let layers: Vec<&Adapter> = model
        .projections()
        .into_iter()
        .filter_map(|(_, proj)| proj.adapter(name))
        .collect();
    out.extend(Adapter::shared_file_tensors(&layers, grads)?);
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
                out.insert(format!("{KEY_PREFIX}{key}.weight"), HostTensor::read(w)?);
            }
            if let Some(b) = copy
                .layer
                .bias
                .as_ref()
                .and_then(|b| value_or_grad(b, grads))
            {
                out.insert(format!("{KEY_PREFIX}{key}.bias"), HostTensor::read(b)?);
            }
        }
    }
    Ok(out)
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
            available: adapter_names(model).join(", "),
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
    attach(model, name, &config, true).map_err(|e| in_file(e, &dir.join(CONFIG_FILE)))?;
    let result = fill_from_file(model, name, &file, &path);
    if result.is_err() {
        // Leave the model as it was before the failed load.
        unload_adapter(model, name)?;
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
    // Reads a tensor by its full key and marks it used.
    let mut read_key = |key: &str, expected: &[usize]| -> Result<HostTensor> {
        let t = read_tensor(file, path, key, expected)?;
        used.insert(key.to_string());
        Ok(t)
    };
    if let Some(adapter) = model.model_adapters_mut().get_mut(name) {
        adapter.load_file_tensors(&mut read_key)?;
    }
    let layers: Vec<&mut Adapter> = model
        .projections_mut()
        .into_iter()
        .filter_map(|(_, proj)| {
            let named = proj.adapters.iter_mut().find(|a| a.name == name)?;
            Some(&mut named.adapter)
        })
        .collect();
    Adapter::load_shared_file_tensors(layers, &mut read_key)?;
    for (key, proj) in model.projections_mut() {
        let prefix = format!("{KEY_PREFIX}{key}.");
        let mut reader = |suffix: &str, expected: &[usize]| -> Result<HostTensor> {
            read_key(&format!("{prefix}{suffix}"), expected)
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
                    .transposed()
                    .upload::<2>(&device),
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
) -> Result<HostTensor> {
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
    let data = decode_floats(view.data(), view.dtype()).ok_or_else(|| PeftError::Dtype {
        path: path.to_path_buf(),
        key: key.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })?;
    let tensor = HostTensor {
        shape: expected.to_vec(),
        data,
    };
    if let Some((index, value)) = tensor.first_non_finite() {
        return Err(PeftError::NonFinite {
            path: path.to_path_buf(),
            key: key.to_string(),
            value,
            index,
        });
    }
    Ok(tensor)
}
