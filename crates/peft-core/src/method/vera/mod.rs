//! VeRA (Kopiczko et al. 2024): one pair of frozen random projections shared by every target,
//! `vera_A` `[r, widest in]` and `vera_B` `[widest out, r]`, sliced to each target's shape, and
//! two trained vectors per target: `y = base(x) + λ_b ⊙ (B (λ_d ⊙ (A x)))`, as Hugging Face
//! PEFT computes it.

mod config;
mod layer;

pub use config::VeraConfig;
pub use layer::VeraLayer;
