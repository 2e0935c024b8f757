//! The LoRA layer attached to one projection: `y = base(x) + s · B(A(dropout(x)))`, factored,
//! with DoRA's magnitude rescaling when enabled.

use crate::product::{forward_linear, linear, lora_linear, low_rank_update, on_rows};
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Distribution, Gradients, Tensor};

use super::config::{LoraConfig, LoraInit, LoraShape};
use crate::error::{PeftError, Result};
use crate::ids::replace_value;
use crate::method::api::{Merged, ProjectionLayer};
use crate::precision::to_dtype;
use crate::tensors::{value_or_grad, HostTensor, TensorReader};

/// Low-rank update of one projection, stored in Burn's `[in, out]` layout: `A` `[in, r]`,
/// `B` `[r, out]` (PEFT's files hold their transposes).
#[derive(Module, Debug)]
pub struct LoraLayer {
    /// Down-projection `A`, `[in, r]`.
    pub lora_a: Param<Tensor<2>>,
    /// Up-projection `B`, `[r, out]`.
    pub lora_b: Param<Tensor<2>>,
    /// DoRA's per-output magnitude `[out]`, when DoRA is on.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the branch's input.
    pub dropout: Dropout,
    /// Multiplier of the update (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA).
    pub scale: f64,
}

impl LoraLayer {
    /// A new layer for `base`, initialised as PEFT initialises it; with DoRA the magnitude
    /// starts at the column norms of the adapted weight, so that DoRA starts where LoRA does.
    pub fn init(
        base: &Linear,
        shape: LoraShape,
        dropout: f64,
        init: &LoraInit,
        use_dora: bool,
    ) -> Self {
        let [d_in, d_out] = base.weight.dims();
        let device = base.weight.device();
        let rank = shape.rank;
        let (a, b) = match init {
            // PEFT: kaiming_uniform_(A, a=sqrt(5)) on the [r, in] weight: U(-1/sqrt(in), 1/sqrt(in)).
            LoraInit::Default(true) => (
                uniform([d_in, rank], 1.0 / (d_in as f64).sqrt(), &device),
                zeros([rank, d_out], &device),
            ),
            // PEFT: nn.init.normal_(A, std=1/r).
            LoraInit::Named(_) => (
                Tensor::random(
                    [d_in, rank],
                    Distribution::Normal(0.0, 1.0 / rank as f64),
                    &device,
                ),
                zeros([rank, d_out], &device),
            ),
            // PEFT leaves both at nn.Linear's default init (used to test non-trivial adapters).
            LoraInit::Default(false) => (
                uniform([d_in, rank], 1.0 / (d_in as f64).sqrt(), &device),
                uniform([rank, d_out], 1.0 / (rank as f64).sqrt(), &device),
            ),
        };
        let mut layer = Self {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(b),
            magnitude: None,
            dropout: DropoutConfig::new(dropout).init(),
            scale: shape.scale,
        };
        if use_dora {
            // In the adapter's type (f32), whatever the base's.
            let weight = to_dtype(base.weight.val(), layer.lora_a.val().dtype());
            let norm = layer.weight_norm(weight);
            layer.magnitude = Some(Param::from_tensor(norm.detach()));
        }
        layer
    }

    /// Whether the dropout on the branch's input drops anything for `x` (as Burn's `Dropout`
    /// decides: training, on an autodiff device, with a probability above 0).
    fn dropout_active<const D: usize>(&self, x: &Tensor<D>) -> bool {
        self.dropout.training.is_enabled() && x.device().is_autodiff() && self.dropout.prob > 0.0
    }

    /// Rank of the update.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// `s · A B`, `[in, out]`: what merging adds to the base weight.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scale
    }

    /// Column norms `‖W + s·A B‖` over the input dimension, `[out]`, without building the dense
    /// sum: `‖W‖² + 2s·colsum(B ∘ AᵀW) + s²·colsum(B ∘ (AᵀA)B)`, all rank-r products.
    pub fn weight_norm(&self, weight: Tensor<2>) -> Tensor<1> {
        let a = self.lora_a.val().detach();
        let b = self.lora_b.val().detach();
        let s = self.scale;
        let w_sq = weight.clone().powi_scalar(2).sum_dim(0);
        let cross = (b.clone() * a.clone().transpose().matmul(weight)).sum_dim(0) * (2.0 * s);
        let lora_sq = (b.clone() * a.clone().transpose().matmul(a).matmul(b)).sum_dim(0) * (s * s);
        // Rounding can take a zero norm slightly below 0.
        (w_sq + cross + lora_sq)
            .clamp_min(0.0)
            .sqrt()
            .squeeze_dim::<1>(0)
    }
}

impl ProjectionLayer for LoraLayer {
    type Config = LoraConfig;

    fn new(config: &LoraConfig, key: &str, base: &Linear) -> Result<Self> {
        let shape = config.shape_for(key)?;
        let [d_in, d_out] = base.weight.dims();
        // PEFT accepts any rank, but one past the projection's widest side is a typo (or a
        // forged file) that would try to allocate r × (in + out) values.
        if shape.rank > d_in.max(d_out) {
            return Err(PeftError::Config {
                field: "r".into(),
                message: format!(
                    "{} is larger than {key} ([in, out] = [{d_in}, {d_out}]) allows: at most {}",
                    shape.rank,
                    d_in.max(d_out)
                ),
            });
        }
        Ok(Self::init(
            base,
            shape,
            config.lora_dropout,
            &config.init_lora_weights,
            config.use_dora,
        ))
    }

    fn mixes_in_batches(&self) -> bool {
        true
    }

    fn method_name(&self) -> &'static str {
        if self.magnitude.is_some() {
            "DoRA"
        } else {
            "LoRA"
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} r={} scale={}",
            self.method_name().to_lowercase(),
            self.rank(),
            self.scale
        )
    }

    fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D> {
        let own = self.lora_a.val().dtype();
        if self.magnitude.is_none() && x.dtype() == own && base.weight.val().dtype() == own {
            return on_rows(x, |x| {
                let branch = self
                    .dropout_active(&x)
                    .then(|| self.dropout.forward(x.clone()));
                let (a, b) = (self.lora_a.val(), self.lora_b.val());
                let bias = base.bias.as_ref().map(|b| b.val());
                lora_linear(x, base.weight.val(), bias, branch, [a, b], self.scale)
            });
        }
        let base_out = forward_linear(base, x.clone());
        // On a base of lower precision the adapter computes in its own type (f32) and its
        // result is cast back.
        let dtype = base_out.dtype();
        let base_out = to_dtype(base_out, own);
        let x = to_dtype(x, own);
        let dropout_active = self.dropout_active(&x);
        let x = self.dropout.forward(x);
        let update = low_rank_update(
            x.clone(),
            [self.lora_a.val(), self.lora_b.val()],
            self.scale,
        );
        let Some(magnitude) = &self.magnitude else {
            return to_dtype(base_out + update, dtype);
        };
        // DoRA, as PEFT's DoraLinearLayer: with the column norm of W + sBA detached,
        // out = base(x) + (m/‖W+sBA‖ - 1) · x W + (m/‖W+sBA‖) · s·B(A(x)).
        let weight = to_dtype(base.weight.val(), own);
        let norm = self.weight_norm(weight.clone()).detach();
        let factor = (magnitude.val() / norm).unsqueeze::<D>();
        // With dropout off the base output (minus bias) is x W already; with it on, PEFT
        // recomputes x W from the dropped-out input.
        let base_term = if dropout_active {
            linear(x, weight, None)
        } else {
            match &base.bias {
                Some(bias) => base_out.clone() - to_dtype(bias.val(), own).unsqueeze::<D>(),
                None => base_out.clone(),
            }
        };
        to_dtype(
            base_out + (factor.clone() - 1.0) * base_term + factor * update,
            dtype,
        )
    }

    fn merge(&self, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Option<Merged> {
        let merged = weight.clone() + self.delta_weight();
        let (weight, memo) = match &self.magnitude {
            None => (merged, None),
            Some(m) => {
                let norm = self.weight_norm(weight);
                let factor = (m.val() / norm.clone()).unsqueeze::<2>();
                (merged * factor, Some(norm))
            }
        };
        Some(Merged { weight, bias, memo })
    }

    fn unmerge(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        memo: Option<Tensor<1>>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        let unscaled = match (&self.magnitude, memo) {
            (Some(m), Some(norm)) => weight / (m.val() / norm).unsqueeze::<2>(),
            _ => weight,
        };
        (unscaled - self.delta_weight(), bias)
    }

    /// `lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`, `lora_magnitude_vector` `[out]`.
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(&'static str, HostTensor)>> {
        let mut out = Vec::new();
        if let Some(a) = value_or_grad(&self.lora_a, grads) {
            out.push(("lora_A.weight", HostTensor::read(a.transpose())?));
        }
        if let Some(b) = value_or_grad(&self.lora_b, grads) {
            out.push(("lora_B.weight", HostTensor::read(b.transpose())?));
        }
        if let Some(m) = self
            .magnitude
            .as_ref()
            .and_then(|m| value_or_grad(m, grads))
        {
            out.push(("lora_magnitude_vector", HostTensor::read(m)?));
        }
        Ok(out)
    }

    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        let [d_in, rank] = self.lora_a.dims();
        let d_out = self.lora_b.dims()[1];
        let device = self.lora_a.device();
        let a = read("lora_A.weight", &[rank, d_in])?
            .transposed()
            .upload::<2>(&device);
        let b = read("lora_B.weight", &[d_out, rank])?
            .transposed()
            .upload::<2>(&device);
        self.lora_a = replace_value(&self.lora_a, a);
        self.lora_b = replace_value(&self.lora_b, b);
        if let Some(magnitude) = &self.magnitude {
            let m = read("lora_magnitude_vector", &[d_out])?.upload::<1>(&device);
            self.magnitude = Some(replace_value(magnitude, m));
        }
        Ok(())
    }
}

fn uniform(shape: [usize; 2], bound: f64, device: &Device) -> Tensor<2> {
    Tensor::random(shape, Distribution::Uniform(-bound, bound), device)
}

fn zeros(shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::zeros(shape, device)
}
