//! The output folder: created with the run's configuration saved in it, refused when it holds an
//! earlier run, or searched for the checkpoint to resume from.

use std::path::PathBuf;

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::metrics::MetricsLog;

/// Creates the output folder and saves the run's configuration in it; refuses to overwrite an
/// earlier run's checkpoints unless resuming; when resuming, finds the checkpoint and checks
/// that the adapter settings are the run's.
pub(super) fn prepare(
    config: &TrainConfig,
    resume: bool,
) -> Result<Option<(TrainerState, PathBuf)>> {
    let out = &config.training.out;
    let latest = checkpoint::latest(out)?;
    if resume {
        let Some((state, dir)) = latest else {
            return Err(TrainError::Resume {
                path: out.to_path_buf(),
                message:
                    "it holds no complete checkpoint (checkpoint-<step>/ with trainer_state.json)"
                        .into(),
            });
        };
        let saved = TrainConfig::from_file(&out.join(checkpoint::CONFIG_FILE))?;
        if saved.method != config.method {
            return Err(TrainError::Resume {
                path: out.to_path_buf(),
                message: format!(
                    "the adapter settings cannot change on resume: {}",
                    method_changes(&saved, config)
                ),
            });
        }
        checkpoint::truncate_metrics(out, state.step)?;
        return Ok(Some((state, dir)));
    }
    if let Some((_, dir)) = latest {
        return Err(TrainError::InvalidValue {
            key: "training.out".into(),
            message: format!("{} already holds a run ({})", out.display(), dir.display()),
        });
    }
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_file(out.join(MetricsLog::FILE));
    peft_core::files::write_atomic(
        &out.join(checkpoint::CONFIG_FILE),
        config.to_toml().as_bytes(),
    )?;
    Ok(None)
}

/// What differs between the run's method section and this configuration's, key by key
/// (`method.rank` 8 in the run, 4 now).
fn method_changes(saved: &TrainConfig, now: &TrainConfig) -> String {
    if saved.method.method() != now.method.method() {
        return format!(
            "the run trains {}, this configuration {}",
            saved.method.method().name(),
            now.method.method().name()
        );
    }
    let (before, after) = (saved.method.to_table(), now.method.to_table());
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let show = |v: Option<&toml::Value>| v.map_or_else(|| "unset".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            format!(
                "`method.{k}` is {} in the run, {} now",
                show(before.get(k)),
                show(after.get(k))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
