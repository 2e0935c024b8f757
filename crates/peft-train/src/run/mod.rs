//! A training run from configuration to final adapter, in phases: the output folder (or the
//! checkpoint to resume), the inputs (model, data, adapter, the `[test]` scores before), the fit
//! (Burn's Learner with the step-counted loop of [`crate::strategy`]), and the results (the final
//! adapter, the `[test]` scores after).

mod fit;
mod inputs;
mod output;
mod results;
mod summary;
mod test_set;

use burn::tensor::Device;

use crate::config::TrainConfig;
use crate::error::Result;

pub use inputs::tokenize_init_text;
pub use summary::{TestScores, TrainSummary, FINAL_DIR};

/// Trains the adapter `config` describes on `device`; with `resume`, continues from the last
/// complete checkpoint in the output folder.
pub fn train(config: &TrainConfig, device: &Device, resume: bool) -> Result<TrainSummary> {
    let files = config.validate()?;
    let resume_from = output::prepare(config, resume)?;
    let device = if device.is_autodiff() {
        device.clone()
    } else {
        device.clone().autodiff()
    };
    device.seed(config.training.seed);
    let (trainee, notes) = inputs::load(config, &files, &device, resume_from.as_ref())?;
    let fitted = fit::fit(config, trainee, &device, resume_from)?;
    results::finish(config, fitted, notes)
}
