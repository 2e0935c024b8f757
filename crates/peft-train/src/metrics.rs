//! What the dashboard plots (loss, perplexity, tokens/s, gradient norm; Burn's own learning-rate
//! metric beside them) and `metrics.jsonl`, the record every run leaves.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::TensorReadError;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use serde_json::{json, Value};

use crate::error::{Result, TrainError};
use crate::model::{LmOutput, StepStats};

/// Which number of an [`LmOutput`] a metric shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmQuantity {
    /// Cross-entropy loss.
    Loss,
    /// `exp(loss)`.
    Perplexity,
    /// Training throughput.
    TokensPerSecond,
    /// Global gradient norm before clipping.
    GradNorm,
}

/// A numeric metric over [`LmOutput`]s.
#[derive(Clone)]
pub struct LmMetric {
    quantity: LmQuantity,
    name: MetricName,
    state: NumericMetricState,
}

impl LmMetric {
    /// The metric showing `quantity`.
    pub fn new(quantity: LmQuantity) -> Self {
        let name = match quantity {
            LmQuantity::Loss => "Loss",
            LmQuantity::Perplexity => "Perplexity",
            LmQuantity::TokensPerSecond => "Tokens per second",
            LmQuantity::GradNorm => "Grad norm",
        };
        Self {
            quantity,
            name: Arc::new(name.to_string()),
            state: NumericMetricState::default(),
        }
    }

    fn format(&self) -> FormatOptions {
        let precision = match self.quantity {
            LmQuantity::TokensPerSecond => 0,
            _ => 4,
        };
        FormatOptions::new(self.name.clone()).precision(precision)
    }
}

impl Metric for LmMetric {
    type Input = LmOutput;

    fn update(
        &mut self,
        item: &LmOutput,
        _metadata: &MetricMetadata,
    ) -> std::result::Result<SerializedEntry, TensorReadError> {
        let loss = match item.stats {
            Some(stats) => stats.loss,
            None => item.loss.clone().mean().try_into_scalar::<f64>()?,
        };
        let value = match self.quantity {
            LmQuantity::Loss => Some(loss),
            LmQuantity::Perplexity => Some(loss.exp()),
            LmQuantity::TokensPerSecond => item.stats.map(|s| s.tokens_per_s),
            LmQuantity::GradNorm => item.stats.map(|s| s.grad_norm),
        };
        if let Some(value) = value {
            self.state.update(value, item.learned_tokens.max(1));
        }
        Ok(self.state.compute_update(self.format()))
    }

    fn compute(&mut self) -> std::result::Result<SerializedEntry, TensorReadError> {
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: self.quantity == LmQuantity::TokensPerSecond,
        }
        .into()
    }
}

impl Numeric for LmMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

/// Appends one JSON object per line to `<out>/metrics.jsonl`, flushed after each line so that
/// a crash loses nothing already logged.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// File name inside the output folder.
    pub const FILE: &'static str = "metrics.jsonl";

    /// Opens (appending: a resumed run continues the same file) `<out>/metrics.jsonl`.
    pub fn open(out: &Path) -> Result<Self> {
        let path = out.join(Self::FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, file })
    }

    /// Logs a training step.
    pub fn step(&mut self, step: usize, stats: &StepStats, lr: f64) -> Result<()> {
        self.write(json!({
            "step": step,
            "loss": stats.loss,
            "lr": lr,
            "tokens_per_s": stats.tokens_per_s,
            "step_ms": stats.step_ms,
            "grad_norm": stats.grad_norm,
        }))
    }

    /// Logs an evaluation.
    pub fn eval(&mut self, step: usize, eval_loss: f64) -> Result<()> {
        self.write(json!({
            "step": step,
            "eval_loss": eval_loss,
            "eval_ppl": eval_loss.exp(),
        }))
    }

    fn write(&mut self, value: Value) -> Result<()> {
        writeln!(self.file, "{value}")
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }
}
