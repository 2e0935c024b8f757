//! The AdaLoRA layer on one projection: `A`, the singular values `E`, `B`, and the rank count
//! the scale divides by.

use crate::product::{forward_linear, linear};
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Distribution, Gradients, Tensor};

use super::allocation::{self, Allocation, Triplet};
use super::config::AdaLoraConfig;
use crate::error::Result;
use crate::ids::replace_value;
use crate::method::api::{Merged, OptimizerStep, ProjectionLayer};
use crate::precision::to_dtype;
use crate::tensors::{value_or_grad, HostTensor, TensorReader};

/// What PEFT adds to `ranknum` before dividing by it.
const RANKNUM_EPSILON: f64 = 1e-5;

/// AdaLoRA on one projection `[in, out]`.
#[derive(Module, Debug)]
pub struct AdaLoraLayer {
    /// `A` transposed, `[in, r]` (PEFT's `lora_A` `[r, in]`).
    pub lora_a: Param<Tensor<2>>,
    /// The singular values `[r]` (PEFT's `lora_E` `[r, 1]`).
    pub lora_e: Param<Tensor<1>>,
    /// `B` transposed, `[r, out]` (PEFT's `lora_B` `[out, r]`).
    pub lora_b: Param<Tensor<2>>,
    /// The rank the scale divides by, `[1]`: a frozen parameter, as in PEFT (counted among
    /// all parameters, never trained, not saved).
    pub ranknum: Param<Tensor<1>>,
    /// `lora_alpha`.
    pub scaling: f64,
    /// Dropout on the branch's input.
    pub dropout: Dropout,
    /// The rank allocation's state while training.
    #[module(skip)]
    pub(super) allocation: Allocation,
}

impl AdaLoraLayer {
    /// The number of singular values the layer holds.
    pub fn rank(&self) -> usize {
        self.lora_e.dims()[0]
    }

    /// `value` with only the kept ranks along `axis` when the rank allocation has pruned
    /// some (PEFT saves a trained adapter at its allocated ranks).
    fn allocated(&self, value: HostTensor, axis: usize) -> HostTensor {
        match &self.allocation.kept {
            Some(kept) => value.keep_along(axis, kept),
            None => value,
        }
    }

    /// `scaling / (ranknum + 1e-5)`, `[1]`.
    fn scale(&self) -> Tensor<1> {
        (self.ranknum.val() + RANKNUM_EPSILON).recip() * self.scaling
    }

    /// `(A ⊙ E)ᵀ` `[in, r]`.
    fn scaled_a(&self) -> Tensor<2> {
        self.lora_a.val() * self.lora_e.val().unsqueeze::<2>()
    }

    /// The update `ΔW` `[in, out]`.
    fn delta_weight(&self) -> Tensor<2> {
        self.scaled_a().matmul(self.lora_b.val()) * self.scale().unsqueeze::<2>()
    }
}

impl ProjectionLayer for AdaLoraLayer {
    type Config = AdaLoraConfig;

    /// PEFT's initial values: `E` zero, `A` and `B` N(0, 0.02), `ranknum` = `init_r`; at the
    /// rank `rank_pattern` gives the target when the config has one (`ranknum` stays `init_r`,
    /// as PEFT's `resize_modules_by_rank_pattern` keeps it).
    fn new(config: &AdaLoraConfig, key: &str, base: &Linear) -> Result<Self> {
        let [d_in, d_out] = base.weight.dims();
        let r = config.rank_of(key);
        let device = base.weight.device();
        let normal = Distribution::Normal(0.0, 0.02);
        let e = if config.init_lora_weights {
            Tensor::zeros([r], &device)
        } else {
            Tensor::random([r], Distribution::Normal(0.0, 1.0), &device)
        };
        Ok(Self {
            lora_a: Param::from_tensor(Tensor::random([d_in, r], normal, &device)),
            lora_e: Param::from_tensor(e),
            lora_b: Param::from_tensor(Tensor::random([r, d_out], normal, &device)),
            ranknum: Param::from_tensor(Tensor::full([1], config.init_r as f64, &device))
                .set_require_grad(false),
            scaling: config.lora_alpha,
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            allocation: Allocation::default(),
        })
    }

    fn method_name(&self) -> &'static str {
        "AdaLoRA"
    }

    fn frozen_parameters(&self) -> usize {
        self.ranknum.dims()[0]
    }

    fn describe(&self) -> String {
        format!("adalora r={} alpha={}", self.rank(), self.scaling)
    }

    fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D> {
        let base_out = forward_linear(base, x.clone());
        if self.rank() == 0 {
            // Every singular value was pruned: PEFT's empty product adds nothing.
            return base_out;
        }
        // On a base of lower precision: computed in the adapter's type, cast back.
        let (dtype, own) = (base_out.dtype(), self.lora_b.val().dtype());
        let x = self.dropout.forward(to_dtype(x, own));
        let update = linear(linear(x, self.scaled_a(), None), self.lora_b.val(), None);
        to_dtype(
            to_dtype(base_out, own) + update * self.scale().unsqueeze::<D>(),
            dtype,
        )
    }

    fn merge(&self, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Option<Merged> {
        if self.rank() == 0 {
            return Some(Merged {
                weight,
                bias,
                memo: None,
            });
        }
        Some(Merged {
            weight: weight + self.delta_weight(),
            bias,
            memo: None,
        })
    }

    fn unmerge(
        &self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        _memo: Option<Tensor<1>>,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        if self.rank() == 0 {
            return (weight, bias);
        }
        (weight - self.delta_weight(), bias)
    }

    /// `lora_A` `[r, in]`, `lora_B` `[out, r]`, `lora_E` `[r, 1]` (no `.weight` suffix), or
    /// their gradients; only the ranks the allocation kept once it has run.
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(&'static str, HostTensor)>> {
        let ([d_in, r], d_out) = (self.lora_a.dims(), self.lora_b.dims()[1]);
        if r == 0 {
            let empty = |shape: Vec<usize>| HostTensor {
                shape,
                data: Vec::new(),
            };
            return Ok(vec![
                ("lora_A", empty(vec![0, d_in])),
                ("lora_B", empty(vec![d_out, 0])),
                ("lora_E", empty(vec![0, 1])),
            ]);
        }
        let mut out = Vec::new();
        if let Some(a) = value_or_grad(&self.lora_a, grads) {
            out.push((
                "lora_A",
                self.allocated(HostTensor::read(a.transpose())?, 0),
            ));
        }
        if let Some(b) = value_or_grad(&self.lora_b, grads) {
            out.push((
                "lora_B",
                self.allocated(HostTensor::read(b.transpose())?, 1),
            ));
        }
        if let Some(e) = value_or_grad(&self.lora_e, grads) {
            out.push((
                "lora_E",
                self.allocated(HostTensor::read(e.unsqueeze_dim::<2>(1))?, 0),
            ));
        }
        Ok(out)
    }

    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        let device = self.lora_a.device();
        let ([d_in, r], d_out) = (self.lora_a.dims(), self.lora_b.dims()[1]);
        if r == 0 {
            for (name, shape) in [
                ("lora_A", [0, d_in]),
                ("lora_B", [d_out, 0]),
                ("lora_E", [0, 1]),
            ] {
                read(name, &shape)?;
            }
            return Ok(());
        }
        let a = read("lora_A", &[r, d_in])?
            .transposed()
            .upload::<2>(&device);
        let b = read("lora_B", &[d_out, r])?
            .transposed()
            .upload::<2>(&device);
        let e = read("lora_E", &[r, 1])?.upload::<2>(&device).reshape([r]);
        self.lora_a = replace_value(&self.lora_a, a);
        self.lora_b = replace_value(&self.lora_b, b);
        self.lora_e = replace_value(&self.lora_e, e);
        Ok(())
    }

    /// `orth_reg_weight` × the mean over every `A` and `B` of `‖P Pᵀ − I‖_F` (`A Aᵀ` for
    /// `A` `[r, in]`, `Bᵀ B` for `B` `[out, r]`), as `AdaLoraModel.forward` adds it.
    fn extra_loss(config: &AdaLoraConfig, layers: &[&Self]) -> Option<Tensor<1>> {
        let first = layers.first()?;
        let (r, device) = (first.rank(), first.lora_a.device());
        let eye = Tensor::<2>::eye(r, &device);
        let deviation = |cov: Tensor<2>| (cov - eye.clone()).powi_scalar(2).sum().sqrt();
        let terms: Vec<Tensor<1>> = layers
            .iter()
            .flat_map(|l| {
                let (a, b) = (l.lora_a.val(), l.lora_b.val());
                [
                    deviation(a.clone().transpose().matmul(a)),
                    deviation(b.clone().matmul(b.transpose())),
                ]
            })
            .collect();
        Some(Tensor::cat(terms, 0).mean() * config.orth_reg_weight)
    }

    /// PEFT's `update_and_allocate`: see [`allocation`].
    fn after_optimizer_step(
        config: &mut AdaLoraConfig,
        layers: &mut [(&str, &mut Self)],
        step: &OptimizerStep<'_>,
    ) -> Result<()> {
        let mut triplets: Vec<Triplet<'_>> = layers
            .iter_mut()
            .map(|(key, layer)| Triplet {
                key,
                a: &layer.lora_a,
                e: &mut layer.lora_e,
                b: &layer.lora_b,
                state: &mut layer.allocation,
            })
            .collect();
        allocation::update_and_allocate(config, &mut triplets, step)
    }
}
