//! What a finished run hands back, and where it leaves its results.

use std::path::PathBuf;

use peft_core::ParameterReport;
use peft_models::CausalLm;

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
    /// Where the final adapter (in full fine-tuning, the model) was saved.
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
    /// Where [`crate::train`] writes them, under the output folder.
    pub const FILE: &'static str = "test_scores.json";
}
