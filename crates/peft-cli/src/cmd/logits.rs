//! `peft-cli logits`: the parity tool. Reads `input_ids` and `attention_mask` (i64,
//! `[batch, seq]`) from a safetensors file and writes `logits` (f32, `[batch, seq, vocab]`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::ModelArgs;
use crate::output::write_atomic;

/// Arguments of `logits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors file with `input_ids` and optionally `attention_mask` (both i64 `[batch,
    /// seq]`, right-padded; without a mask every position counts as a token).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Where to write the safetensors file with `logits` (f32 `[batch, seq, vocab]`).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
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
        if mask.shape != ids.shape {
            bail!(
                "input file {}: `attention_mask` has shape {:?} but `input_ids` has {:?}; they must match",
                args.input.display(),
                mask.shape,
                ids.shape
            );
        }
        if let Some(v) = mask.values.iter().find(|&&v| v != 0 && v != 1) {
            bail!(
                "input file {}: `attention_mask` holds {v}; expected only 0 and 1",
                args.input.display()
            );
        }
    }
    let (loaded, device) = args.model.load()?;
    loaded
        .model
        .check_input(ids.values.iter().copied(), ids.shape[1])
        .with_context(|| format!("input file {}", args.input.display()))?;
    let logits = loaded.model.forward(
        upload(&ids, &device),
        mask.as_ref().map(|m| upload(m, &device)).as_ref(),
        None,
    );
    let shape = logits.dims();
    let data = logits
        .try_into_data()
        .map_err(|e| anyhow::anyhow!("reading logits from the device failed: {e:?}"))?
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("logits are not f32: {e:?}"))?;
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape.to_vec(), &raw)?;
    let serialized = safetensors::serialize([("logits", view)], None)?;
    write_atomic(&args.out, &serialized)?;
    eprintln!("wrote logits {:?} to {}", shape, args.out.display());
    Ok(())
}

fn upload(m: &IdMatrix, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(m.values.clone(), m.shape), device)
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
