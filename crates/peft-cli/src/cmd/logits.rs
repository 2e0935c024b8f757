//! `peft-cli logits`: the parity tool. Reads `input_ids` and `attention_mask` (i64,
//! `[batch, seq]`) from a safetensors file and writes `logits` (f32, `[batch, seq, vocab]`; with
//! a prompt-tuning adapter `[batch, virtual + seq, vocab]`, the virtual tokens first, as PEFT
//! returns them); with `--grads`, also `loss` and the gradient of every adapter tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::{Device, Int, Tensor, TensorData};
use peft_core::adapter_folder::adapter_tensors;
use peft_core::files::write_atomic;
use peft_core::tensors::to_safetensors;
use peft_core::{HostTensor, DEFAULT_ADAPTER};
use peft_models::loss::{causal_lm_loss, IGNORE_INDEX};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use super::ModelArgs;

/// Arguments of `logits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors file with `input_ids` and optionally `attention_mask` (both i64 `[batch,
    /// seq]`, right-padded; without a mask every position counts as a token).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Where to write the safetensors file with `logits` (f32 `[batch, seq, vocab]`; with a
    /// prompt-tuning adapter `[batch, virtual + seq, vocab]`, the virtual tokens first).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also compute the causal-LM loss against `labels` (i64 `[batch, seq]` in the input file,
    /// -100 = no loss; shifted left by one inside, as transformers does) and write `loss` (f32
    /// `[1]`) and `grad.<key>` for every adapter tensor, keyed as in adapter_model.safetensors.
    /// Needs one --adapter.
    #[arg(long)]
    grads: bool,
    /// A mixed batch, as PEFT's `adapter_names`: row i of `input_ids` runs through adapter
    /// NAMES[i] (a name given with --adapter NAME=DIR, or __base__ for the model without
    /// adapter), all rows in one forward pass; one name per row, comma-separated. LoRA, DoRA,
    /// IA3 and VeRA adapters mix.
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        conflicts_with = "grads"
    )]
    adapter_per_row: Option<Vec<String>>,
}

/// A `[batch, seq]` matrix of i64 read from the input file.
struct IdMatrix {
    values: Vec<i64>,
    shape: [usize; 2],
}

/// Runs the model on the input ids and writes its logits.
pub fn run(args: Args) -> Result<()> {
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read input file {}", args.input.display()))?;
    let file = SafeTensors::deserialize(&bytes).with_context(|| {
        format!(
            "input file {} is not a readable safetensors file",
            args.input.display()
        )
    })?;
    let ids = read_ids(&file, &args.input, "input_ids")?.with_context(|| {
        format!(
            "input file {} has no tensor `input_ids` (i64 [batch, seq])",
            args.input.display()
        )
    })?;
    let mask = read_ids(&file, &args.input, "attention_mask")?;
    if let Some(mask) = &mask {
        check_same_shape(mask, &ids, "attention_mask", &args.input)?;
        if let Some(v) = mask.values.iter().find(|&&v| v != 0 && v != 1) {
            bail!(
                "input file {}: `attention_mask` holds {v}; expected only 0 and 1",
                args.input.display()
            );
        }
    }
    if let Some(rows) = &args.adapter_per_row {
        if rows.len() != ids.shape[0] {
            bail!(
                "--adapter-per-row names {} adapters, but `input_ids` in {} has {} rows; give \
                 one name per row",
                rows.len(),
                args.input.display(),
                ids.shape[0]
            );
        }
    }
    let labels = if args.grads {
        if args.model.single_adapter("logits --grads")?.is_none() {
            bail!("--grads needs --adapter DIR: gradients are computed for adapter tensors");
        }
        let labels = read_ids(&file, &args.input, "labels")?.with_context(|| {
            format!(
                "--grads: input file {} has no tensor `labels` (i64 [batch, seq])",
                args.input.display()
            )
        })?;
        check_same_shape(&labels, &ids, "labels", &args.input)?;
        if !labels
            .values
            .chunks(ids.shape[1])
            .any(|row| row[1..].iter().any(|&l| l != IGNORE_INDEX))
        {
            bail!(
                "input file {}: `labels` has no position with a loss (all -100 after the shift)",
                args.input.display()
            );
        }
        Some(labels)
    } else {
        None
    };
    let (loaded, device) = args.model.load(args.grads)?;
    // Dropout off, as PEFT's reference gradients are taken in eval mode.
    let mut model = peft_core::eval_mode(loaded.model);
    if let Some(rows) = &args.adapter_per_row {
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        peft_core::adapters::set_adapter_per_row(&mut model, &rows).context("--adapter-per-row")?;
    }
    model
        .check_input(ids.values.iter().copied(), ids.shape[1])
        .with_context(|| format!("input file {}", args.input.display()))?;
    let vocab = model.vocab_size() as i64;
    if let Some(bad) = labels.as_ref().and_then(|l| {
        l.values
            .iter()
            .find(|&&l| l != IGNORE_INDEX && !(0..vocab).contains(&l))
    }) {
        bail!(
            "input file {}: label {bad} is outside the vocabulary (0..{vocab}) and is not -100 \
             (ignored)",
            args.input.display()
        );
    }
    let logits = model.forward(
        upload(&ids, &device),
        mask.as_ref().map(|m| upload(m, &device)).as_ref(),
        None,
    );
    let mut outputs = BTreeMap::new();
    if let Some(labels) = &labels {
        let loss = causal_lm_loss(logits.clone(), upload(labels, &device));
        let grads = loss.backward();
        outputs.insert("loss".to_string(), HostTensor::read(loss.detach())?);
        let name = args
            .model
            .single_adapter("logits --grads")?
            .map_or(DEFAULT_ADAPTER, |a| a.name.as_str());
        for (key, grad) in adapter_tensors(&model, name, Some(&grads))? {
            outputs.insert(format!("grad.{key}"), grad);
        }
    }
    let shape = logits.dims();
    outputs.insert("logits".to_string(), HostTensor::read(logits.detach())?);
    write_atomic(&args.out, &to_safetensors(&outputs)?)?;
    eprintln!("wrote logits {:?} to {}", shape, args.out.display());
    Ok(())
}

fn upload(m: &IdMatrix, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(m.values.clone(), m.shape), device)
}

/// Refuses a companion tensor (`attention_mask`, `labels`) whose shape differs from `input_ids`.
fn check_same_shape(other: &IdMatrix, ids: &IdMatrix, name: &str, path: &Path) -> Result<()> {
    if other.shape != ids.shape {
        bail!(
            "input file {}: `{name}` has shape {:?} but `input_ids` has {:?}; they must match",
            path.display(),
            other.shape,
            ids.shape
        );
    }
    Ok(())
}

/// Reads tensor `name` as i64 `[batch, seq]`; `None` if absent.
fn read_ids(file: &SafeTensors, path: &Path, name: &str) -> Result<Option<IdMatrix>> {
    let Ok(view) = file.tensor(name) else {
        return Ok(None);
    };
    let shape: [usize; 2] = view.shape().try_into().map_err(|_| {
        anyhow::anyhow!(
            "input file {}: `{name}` has shape {:?}; expected [batch, seq]",
            path.display(),
            view.shape()
        )
    })?;
    if shape[0] == 0 || shape[1] == 0 {
        bail!(
            "input file {}: `{name}` is empty (shape {shape:?})",
            path.display()
        );
    }
    if view.dtype() != Dtype::I64 {
        bail!(
            "input file {}: `{name}` has dtype {:?}; expected I64",
            path.display(),
            view.dtype()
        );
    }
    let values = view
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("chunks_exact yields 8 bytes")))
        .collect();
    Ok(Some(IdMatrix { values, shape }))
}
