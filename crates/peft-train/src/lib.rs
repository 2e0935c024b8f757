//! Training adapters on a frozen base model with Burn's Learner.
//!
//! Not implemented yet: this crate holds the place the workspace design gives it, and stays empty
//! until the trainer is built (frozen-parameter filtering, datasets, the dashboard, checkpoints).
