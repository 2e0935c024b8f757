//! `peft-cli merge`: fold an adapter into the base weights and write a plain Hugging Face folder.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::ModelArgs;

/// Arguments of `merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Output folder for the merged model (config.json, model.safetensors, tokenizer files);
    /// transformers and peft-cli load it without the adapter.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Loads model and adapter, merges (refusing NaN/Inf results) and writes the folder.
pub fn run(args: Args) -> Result<()> {
    if args.model.adapter.is_none() {
        anyhow::bail!("merge needs --adapter DIR: the adapter to fold into the model");
    }
    let (mut loaded, _device) = args.model.load(false)?;
    peft_core::merge_and_unload(&mut loaded.model, true).context("merging the adapter failed")?;
    peft_models::save_hf_folder(&loaded, &args.out)
        .with_context(|| format!("cannot write the merged model to {}", args.out.display()))?;
    eprintln!("wrote merged model to {}", args.out.display());
    Ok(())
}
