//! AdaLoRA (Zhang et al. 2023): LoRA in SVD form, `ΔW = B (A ⊙ E)` with the singular values
//! `E` learned, scaled by `lora_alpha / (ranknum + 1e-5)`, and an orthogonality regulariser on
//! `A` and `B` added to the training loss, and the rank allocation during training
//! (`update_and_allocate`), as Hugging Face PEFT computes them. A trained adapter is saved at
//! its allocated ranks with their `rank_pattern`, and read back at them.

mod allocation;
mod config;
mod layer;

pub use allocation::budget_schedule;
pub use config::AdaLoraConfig;
pub use layer::AdaLoraLayer;
