//! Checkpoints: `<out>/checkpoint-<step>/` holds the adapter in PEFT's format (loadable with
//! `--adapter`; in full fine-tuning, the whole model as a Hugging Face folder), the optimizer
//! state (`optimizer.bpk`) and `trainer_state.json` (step, data
//! position, seed). A checkpoint is written in a hidden `.checkpoint-<step>.partial` folder and
//! renamed when complete, so a crash at any moment leaves the previous checkpoint usable.

use std::fs;
use std::path::{Path, PathBuf};

use burn::optim::OptimizerRecord;
use peft_models::FolderFiles;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::model::TrainableLm;

/// Optimizer state file inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// Trainer state file inside a checkpoint; its presence marks a complete checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The run's configuration, saved in the output folder when training starts.
pub const CONFIG_FILE: &str = "train_config.toml";
/// Environment variable: milliseconds to pause in the middle of each checkpoint write and of
/// the final save, so that tests and `cargo xtask soak` can kill a run while one is half
/// written.
pub const WRITE_DELAY_ENV: &str = "PEFT_CHECKPOINT_WRITE_DELAY_MS";

/// Where training stood when a checkpoint was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Micro-batches consumed (the data position).
    pub micro_batches: usize,
    /// Seed of shuffling and dropout (dropout is reseeded from it at every step, so the
    /// random state is a function of `seed` and `step`).
    pub seed: u64,
}

/// The folder of the checkpoint at `step`.
pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// The complete checkpoint with the highest step in `out`, if any.
pub fn latest(out: &Path) -> Result<Option<(TrainerState, PathBuf)>> {
    let entries = match fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TrainError::Io {
                path: out.to_path_buf(),
                source,
            })
        }
    };
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if dir.join(STATE_FILE).is_file() && best.as_ref().is_none_or(|(s, _)| step > *s) {
            best = Some((step, dir));
        }
    }
    best.map(|(step, dir)| Ok((read_state(&dir, step)?, dir)))
        .transpose()
}

/// The state in `dir`, which must be the checkpoint of `step` (its folder's name).
fn read_state(dir: &Path, step: usize) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Resume {
        path: path.clone(),
        message: format!("unreadable trainer state: {e}"),
    })?;
    if state.step != step {
        return Err(TrainError::Resume {
            path,
            message: format!(
                "`step` is {}, but the folder is the checkpoint of step {step}",
                state.step
            ),
        });
    }
    Ok(state)
}

/// Reads the optimizer state of the checkpoint in `dir`.
pub fn read_optimizer(dir: &Path) -> Result<OptimizerRecord> {
    let path = dir.join(OPTIMIZER_FILE);
    OptimizerRecord::load(&path).map_err(|e| TrainError::Resume {
        path,
        message: format!("unreadable optimizer state: {e}"),
    })
}

/// What a checkpoint saves of the model.
pub struct ModelToSave<'a> {
    /// The model in training.
    pub model: &'a TrainableLm,
    /// What a fully trained model's folder holds besides the weights (config, tokenizer).
    pub files: Option<&'a FolderFiles>,
}

impl ModelToSave<'_> {
    /// Writes the adapter in PEFT's format, or (full fine-tuning) the whole model as a
    /// Hugging Face folder, into `dir`.
    fn write(&self, dir: &Path) -> Result<()> {
        match self.model.adapter() {
            Some((name, config)) => peft_core::save_adapter(&self.model.lm, name, config, dir)?,
            None => {
                let files = self.files.ok_or_else(|| {
                    TrainError::Learner(
                        "a fully trained model cannot be saved without its config and \
                         tokenizer files"
                            .into(),
                    )
                })?;
                peft_models::save_model_folder(&self.model.to_save(), files, dir)?;
            }
        }
        Ok(())
    }
}

/// Writes a complete checkpoint for `state` atomically.
pub fn save(
    out: &Path,
    model: &ModelToSave<'_>,
    optimizer: OptimizerRecord,
    state: &TrainerState,
) -> Result<PathBuf> {
    let target = checkpoint_dir(out, state.step);
    write_folder(&target, |dir| {
        model.write(dir)?;
        pause_for_crash_tests();
        let optimizer_path = dir.join(OPTIMIZER_FILE);
        optimizer
            .save(&optimizer_path)
            .map_err(|e| TrainError::Backend(format!("{}: {e}", optimizer_path.display())))?;
        sync_file(&optimizer_path)?;
        let json = serde_json::to_string_pretty(state).expect("trainer state serialises");
        peft_core::files::write_atomic(&dir.join(STATE_FILE), json.as_bytes())?;
        Ok(())
    })?;
    Ok(target)
}

/// Saves the trained adapter (or model) alone, the final result, to `dir`, atomically as a
/// whole folder.
pub fn save_final(dir: &Path, model: &ModelToSave<'_>) -> Result<()> {
    write_folder(dir, |tmp| {
        model.write(tmp)?;
        pause_for_crash_tests();
        Ok(())
    })
}

/// Fills a hidden temporary folder beside `target` with `fill`, then puts it in `target`'s
/// place (replacing an older folder of that name only once the new one is complete).
fn write_folder(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("folder");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    let tmp = parent.join(format!(".{name}.partial"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    let old = parent.join(format!(".{name}.old"));
    if target.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        fs::rename(target, &old).map_err(io(target))?;
    }
    fs::rename(&tmp, target).map_err(io(target))?;
    sync_dir(parent);
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Makes a rename durable where the platform allows syncing a directory (best effort: not
/// every platform can open a directory for syncing, and the rename itself is what matters).
fn sync_dir(path: &Path) {
    if let Ok(dir) = fs::File::open(path) {
        let _ = dir.sync_all();
    }
}

fn pause_for_crash_tests() {
    if let Some(ms) = std::env::var(WRITE_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Drops lines of `<out>/metrics.jsonl` logged after `step` (by a run that crashed after its
/// last checkpoint), so that a resumed run does not log those steps twice.
pub fn truncate_metrics(out: &Path, step: usize) -> Result<()> {
    let path = out.join(crate::metrics::MetricsLog::FILE);
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    peft_core::files::write_atomic(&path, kept.as_bytes())?;
    Ok(())
}
