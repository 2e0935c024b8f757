//! Output without a terminal: Burn's plain renderer prints raw progress structures, so when
//! stdout is not a terminal the dashboard is replaced by this silent renderer and the training
//! loop prints one readable line per logged step and per evaluation (see [`step_line`]).

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::MetricDefinition;
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

use crate::model::StepStats;

/// One log line for a training step.
pub fn step_line(step: usize, max_steps: usize, stats: &StepStats, lr: f64) -> String {
    format!(
        "step {step}/{max_steps}  loss {:.4}  ppl {:.2}  lr {lr:.3e}  grad_norm {:.4}  tokens/s {:.0}",
        stats.loss,
        stats.loss.exp(),
        stats.grad_norm,
        stats.tokens_per_s
    )
}

/// One log line for an evaluation.
pub fn eval_line(step: usize, eval_loss: f64) -> String {
    format!(
        "eval at step {step}  eval_loss {eval_loss:.4}  eval_ppl {:.2}",
        eval_loss.exp()
    )
}

/// A renderer that draws nothing.
pub struct QuietRenderer;

impl MetricsRendererTraining for QuietRenderer {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
}

impl MetricsRendererEvaluation for QuietRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl TrainingProgressLogger for QuietRenderer {
    fn start(
        &mut self,
        _total_epochs: usize,
        _starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
    }
    fn update_epoch(&mut self, _epoch: usize) {}
    fn start_split(&mut self, _split: &str, _total_items: usize) {}
    fn update_split(&mut self, _items_processed: usize) {}
    fn end_split(&mut self) {}
    fn end(&mut self) {}
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for QuietRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for QuietRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}
