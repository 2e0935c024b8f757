//! `peft-cli merge`: fold an adapter into the base weights and write a plain Hugging Face folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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
    /// Write into `--out` even when it already holds files (theirs are replaced where the
    /// merged model has a file of the same name). The model's and the adapter's own folders
    /// are refused even so.
    #[arg(long)]
    force: bool,
}

/// Loads model and adapter, merges (refusing NaN/Inf results) and writes the folder.
pub fn run(args: Args) -> Result<()> {
    let Some(adapter) = args.model.single_adapter("merge")? else {
        bail!("merge needs --adapter DIR: the adapter to fold into the model");
    };
    check_out(&args.out, &args.model.model, &adapter.dir, args.force)?;
    let (mut loaded, _device) = args.model.load(false)?;
    peft_core::merge_and_unload(&mut loaded.model, true).context("merging the adapter failed")?;
    peft_models::save_hf_folder(&loaded, &args.out)
        .with_context(|| format!("cannot write the merged model to {}", args.out.display()))?;
    eprintln!("wrote merged model to {}", args.out.display());
    Ok(())
}

/// Refuses an output folder that would overwrite what the user has: the model's folder (its
/// weights would be replaced by the merged ones), the adapter's, or any other folder that
/// already holds files unless `force`.
fn check_out(out: &Path, model: &Path, adapter: &Path, force: bool) -> Result<()> {
    let Ok(out_real) = out.canonicalize() else {
        return Ok(()); // not there yet: nothing to overwrite
    };
    let same = |other: &Path| other.canonicalize().is_ok_and(|o| o == out_real);
    if model.is_dir() && same(model) {
        bail!(
            "--out {} is the model's own folder: the merge would replace its weights; choose \
             another folder",
            out.display()
        );
    }
    if same(adapter) {
        bail!(
            "--out {} is the adapter's folder; choose another folder",
            out.display()
        );
    }
    let mut entries = std::fs::read_dir(out)
        .with_context(|| format!("--out {} is not a readable folder", out.display()))?;
    if entries.next().is_some() && !force {
        bail!(
            "--out {} already holds files; give --force to write into it anyway, or choose an \
             empty or new folder",
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_may_not_be_the_model_the_adapter_or_a_full_folder() {
        let root = tempfile::tempdir().unwrap();
        let (model, adapter, full) = (
            root.path().join("model"),
            root.path().join("adapter"),
            root.path().join("full"),
        );
        for dir in [&model, &adapter, &full] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("file"), b"x").unwrap();
        }
        let new = root.path().join("new");
        assert!(check_out(&new, &model, &adapter, false).is_ok());
        let err = check_out(&model.join("."), &model, &adapter, true).unwrap_err();
        assert!(err.to_string().contains("model's own folder"), "{err}");
        let err = check_out(&adapter, &model, &adapter, true).unwrap_err();
        assert!(err.to_string().contains("adapter's folder"), "{err}");
        let err = check_out(&full, &model, &adapter, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(check_out(&full, &model, &adapter, true).is_ok());
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(check_out(&empty, &model, &adapter, false).is_ok());
    }
}
