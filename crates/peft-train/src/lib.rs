//! Training adapters on a frozen base model with Burn's Learner.
//!
//! [`train`] runs a [`TrainConfig`] in phases (`run`): the output folder, the inputs (model,
//! data, adapter), the fit (Burn's `SupervisedTraining` with the step-counted loop of
//! [`strategy`], each step [`step::step_gradients`] then their application: only adapter tensors get
//! gradients and optimizer state, gradients are averaged over accumulation and clipped by their
//! global norm), and the results (`metrics.jsonl`, atomic checkpoints and the final adapter in
//! PEFT's format).

pub mod adamw;
pub mod batch;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod full;
pub mod metrics;
pub mod model;
pub mod plain;
mod run;
pub mod schedule;
pub mod step;
pub mod strategy;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use run::{tokenize_init_text, train, TestScores, TrainSummary, FINAL_DIR};
pub use step::{adamw, optimizer};
