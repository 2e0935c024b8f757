//! A training run from configuration to final adapter, in phases: the output folder (or the
//! checkpoint to resume), the inputs (model, data, adapter, the `[test]` scores before), the fit
//! (Burn's Learner with the step-counted loop of [`crate::strategy`]), and the results (the final
//! adapter, the `[test]` scores after).

mod fit;
mod inputs;

pub use inputs::tokenize_init_text;
mod output;
mod results;
mod test_set;

use std::path::PathBuf;

use burn::tensor::Device;
use peft_core::ParameterReport;
use peft_models::CausalLm;

use crate::config::TrainConfig;
use crate::error::Result;
use crate::eval::EvalReport;

/// Folder of the final adapter inside the output folder.
pub const FINAL_DIR: &str = "final";

/// What a finished run produced.
#[derive(Debug)]
pub struct TrainSummary {
    /// The trained model (adapter attached, out of autodiff).
    pub model: CausalLm,
    /// Optimizer steps completed, counting those before a resume.
    pub steps: usize,
    /// Where the final adapter was saved.
    pub final_adapter: PathBuf,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Last validation loss.
    pub last_eval_loss: Option<f64>,
    /// Trainable and total parameters.
    pub parameters: ParameterReport,
    /// Warnings about the run (also printed when they happen without a dashboard).
    pub warnings: Vec<String>,
    /// The step a resumed run started from.
    pub resumed_from: Option<usize>,
    /// `[test]` scored with the base model before training and the adapter after it.
    pub test: Option<TestScores>,
}

/// The `[test]` file scored before and after training.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestScores {
    /// The base model.
    pub before: EvalReport,
    /// The base model with the trained adapter.
    pub after: EvalReport,
}

impl TestScores {
    /// Where [`train`] writes them, under the output folder.
    pub const FILE: &'static str = "test_scores.json";
}

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
