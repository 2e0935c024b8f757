//! The PEFT methods, one folder each, and the contract they implement ([`api`]).
//!
//! A method folder holds its configuration (`adapter_config.json`'s fields, validation, default
//! targets per architecture), its layer (forward pass, merge and unmerge, tensors in and out of
//! adapter files) and unit tests that need no fixture. Registering it is one line in
//! `crate::registry`; models and the rest of the crate are not touched.

pub mod adalora;
pub mod api;
pub mod bottleneck;
pub mod common;
pub mod ia3;
pub mod lora;
pub mod prefix;
pub mod prompt;
pub mod vera;
