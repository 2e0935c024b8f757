//! `--dtype`: the float type of the frozen base (and of the activations); adapters, their
//! gradients and the optimizer's state stay f32.

use burn::tensor::FloatDType;
use peft_train::config::BaseDtype;
use serde::Serialize;

/// `--dtype`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit floats.
    #[default]
    F32,
    /// IEEE half precision (flex, cuda; wgpu where the device has f16 shaders).
    F16,
    /// bfloat16 (flex, cuda).
    Bf16,
}

impl Dtype {
    /// The tensor type.
    pub fn float_dtype(self) -> FloatDType {
        self.config().float_dtype()
    }

    /// The training configuration's value.
    pub fn config(self) -> BaseDtype {
        match self {
            Self::F32 => BaseDtype::F32,
            Self::F16 => BaseDtype::F16,
            Self::Bf16 => BaseDtype::Bf16,
        }
    }
}
