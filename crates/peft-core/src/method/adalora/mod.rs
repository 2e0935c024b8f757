//! AdaLoRA (Zhang et al. 2023): LoRA in SVD form, `ΔW = B (A ⊙ E)` with the singular values
//! `E` learned, scaled by `lora_alpha / (ranknum + 1e-5)`, and an orthogonality regulariser on
//! `A` and `B` added to the training loss, as Hugging Face PEFT computes them. PEFT's rank
//! allocation during training (`update_and_allocate`) is not here yet: adapters are read,
//! evaluated, differentiated, merged and saved, not trained.

mod config;
mod layer;

pub use config::AdaLoraConfig;
pub use layer::AdaLoraLayer;
