//! The results: the final adapter in PEFT's format (or the fully trained model as a Hugging
//! Face folder), `[test]` scored with it, the summary.

use burn::module::Module;

use super::fit::Fitted;
use super::inputs::RunNotes;
use super::summary::{TestScores, TrainSummary, FINAL_DIR};
use crate::checkpoint::{self, ModelToSave};
use crate::config::TrainConfig;
use crate::error::Result;

/// Saves the final adapter, scores `[test]` with it and sums the run up.
pub(super) fn finish(
    config: &TrainConfig,
    fitted: Fitted,
    notes: RunNotes,
) -> Result<TrainSummary> {
    let out = &config.training.out;
    let Fitted {
        model,
        folder_files,
        mut report,
        resumed_from,
    } = fitted;
    let final_adapter = out.join(FINAL_DIR);
    checkpoint::save_final(
        &final_adapter,
        &ModelToSave {
            model: &model,
            files: folder_files.as_deref(),
        },
    )?;
    let lm = model.to_save();
    let mut warnings = notes.warnings;
    warnings.append(&mut report.warnings);
    let test = match notes.test_before {
        Some(before) => {
            // Scored with the adapter folded into a copy of the weights where the method
            // merges: the same function up to float rounding, and generation runs as fast as
            // the base model's.
            let mut scored = lm.valid();
            let what = if model.adapter().is_none() {
                "fully trained model"
            } else if peft_core::active_adapter_merges(&scored) {
                peft_core::merge_and_unload(&mut scored, true)?;
                "trained adapter (merged into a copy of the weights)"
            } else {
                "trained adapter"
            };
            let after = notes.test.score(config, &scored, what)?;
            let scores = after.map(|after| TestScores { before, after });
            if let Some(scores) = &scores {
                let json = serde_json::to_string_pretty(scores).expect("scores serialise");
                peft_core::files::write_atomic(&out.join(TestScores::FILE), json.as_bytes())?;
            }
            scores
        }
        None => None,
    };
    Ok(TrainSummary {
        model: lm,
        steps: report.steps,
        final_adapter,
        last_loss: report.last_loss,
        last_eval_loss: report.last_eval_loss,
        parameters: notes.parameters,
        warnings,
        resumed_from,
        test,
    })
}
