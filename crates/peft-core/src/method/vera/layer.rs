//! The VeRA layer on one projection: its slices of the shared projections (frozen) and its two
//! trained vectors.

use crate::product::{forward_linear, linear};
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Gradients, Tensor, TensorData};

use super::config::VeraConfig;
use crate::error::{PeftError, Result};
use crate::ids::replace_value;
use crate::method::api::{Merged, ProjectionLayer};
use crate::precision::to_dtype;
use crate::tensors::{value_or_grad, HostTensor, TensorReader};

/// Keys of the shared projections in PEFT's files (outside any module path).
const VERA_A: &str = "base_model.vera_A";
const VERA_B: &str = "base_model.vera_B";

/// VeRA on one projection `[in, out]`.
#[derive(Module, Debug)]
pub struct VeraLayer {
    /// `λ_d` `[r]`, scaling the rank dimension.
    pub lambda_d: Param<Tensor<1>>,
    /// `λ_b` `[out]`, scaling the output.
    pub lambda_b: Param<Tensor<1>>,
    /// `vera_A`'s first `in` columns, transposed: `[in, r]` (frozen, shared).
    pub projection_a: Tensor<2>,
    /// `vera_B`'s first `out` rows, transposed: `[r, out]` (frozen, shared).
    pub projection_b: Tensor<2>,
    /// Dropout on the branch's input.
    pub dropout: Dropout,
}

/// Element `(row, col)` of shared projection `matrix` (0: A, 1: B) drawn uniform in
/// `[-bound, bound)` from `seed`. Each element depends on its own coordinates only, so every
/// target's slice agrees with the others' without the whole matrix existing anywhere; written
/// here because no generator crate draws by coordinate (SplitMix64's finaliser).
fn shared_value(seed: u64, matrix: u64, row: usize, col: usize, bound: f64) -> f32 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((matrix << 62) ^ ((row as u64) << 31) ^ col as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    (bound * (2.0 * unit - 1.0)) as f32
}

impl VeraLayer {
    fn rank(&self) -> usize {
        self.lambda_d.dims()[0]
    }

    /// The update `ΔW` `[in, out]` the branch adds to the weight.
    fn delta_weight(&self) -> Tensor<2> {
        let a = self.projection_a.clone() * self.lambda_d.val().unsqueeze::<2>();
        let b = self.projection_b.clone() * self.lambda_b.val().unsqueeze::<2>();
        a.matmul(b)
    }
}

impl ProjectionLayer for VeraLayer {
    type Config = VeraConfig;

    /// PEFT's initial values: `λ_b` zero and `λ_d` `d_initial`, the projections
    /// Kaiming-uniform as PyTorch draws them for `[r, widest in]` and `[widest out, r]`
    /// (bounds `1/√(widest in)` and `1/√r`), from this crate's generator.
    fn new(config: &VeraConfig, _key: &str, base: &Linear) -> Result<Self> {
        let [d_in, d_out] = base.weight.dims();
        let [widest_in, widest_out] = config.widest.unwrap_or([d_in, d_out]);
        if d_in > widest_in || d_out > widest_out {
            return Err(PeftError::State(format!(
                "a VeRA target of [{d_in}, {d_out}] is wider than the shared projections \
                 [{widest_in}, {widest_out}]"
            )));
        }
        let r = config.r;
        let device = base.weight.device();
        let seed = config.projection_prng_key;
        let (bound_a, bound_b) = (1.0 / (widest_in as f64).sqrt(), 1.0 / (r as f64).sqrt());
        // [in, r]: element (j, i) is vera_A[i, j].
        let a: Vec<f32> = (0..d_in)
            .flat_map(|j| (0..r).map(move |i| shared_value(seed, 0, i, j, bound_a)))
            .collect();
        // [r, out]: element (i, o) is vera_B[o, i].
        let b: Vec<f32> = (0..r)
            .flat_map(|i| (0..d_out).map(move |o| shared_value(seed, 1, o, i, bound_b)))
            .collect();
        let lambda_b = if config.init_weights { 0.0 } else { 1.0 };
        Ok(Self {
            lambda_d: Param::from_tensor(Tensor::full([r], config.d_initial, &device)),
            lambda_b: Param::from_tensor(Tensor::full([d_out], lambda_b, &device)),
            projection_a: Tensor::from_data(TensorData::new(a, [d_in, r]), &device),
            projection_b: Tensor::from_data(TensorData::new(b, [r, d_out]), &device),
            dropout: DropoutConfig::new(config.vera_dropout).init(),
        })
    }

    fn mixes_in_batches(&self) -> bool {
        true
    }

    fn method_name(&self) -> &'static str {
        "VeRA"
    }

    fn describe(&self) -> String {
        format!("vera r={}", self.rank())
    }

    fn forward<const D: usize>(&self, x: Tensor<D>, base: &Linear) -> Tensor<D> {
        let base_out = forward_linear(base, x.clone());
        // On a base of lower precision: computed in the adapter's type, cast back.
        let (dtype, own) = (base_out.dtype(), self.lambda_d.val().dtype());
        let x = self.dropout.forward(to_dtype(x, own));
        let h = linear(x, self.projection_a.clone(), None) * self.lambda_d.val().unsqueeze::<D>();
        let update =
            linear(h, self.projection_b.clone(), None) * self.lambda_b.val().unsqueeze::<D>();
        to_dtype(to_dtype(base_out, own) + update, dtype)
    }

    fn merge(&self, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Option<Merged> {
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
        (weight - self.delta_weight(), bias)
    }

    /// `vera_lambda_b` `[out]` and `vera_lambda_d` `[r]` (or their gradients).
    fn file_tensors(&self, grads: Option<&Gradients>) -> Result<Vec<(&'static str, HostTensor)>> {
        let mut out = Vec::new();
        for (name, param) in [
            ("vera_lambda_b", &self.lambda_b),
            ("vera_lambda_d", &self.lambda_d),
        ] {
            if let Some(t) = value_or_grad(param, grads) {
                out.push((name, HostTensor::read(t)?));
            }
        }
        Ok(out)
    }

    fn load_file_tensors(&mut self, read: &mut TensorReader<'_>) -> Result<()> {
        let device = self.lambda_b.device();
        let out = self.lambda_b.dims()[0];
        let b = read("vera_lambda_b", &[out])?.upload::<1>(&device);
        let d = read("vera_lambda_d", &[self.rank()])?.upload::<1>(&device);
        self.lambda_b = replace_value(&self.lambda_b, b);
        self.lambda_d = replace_value(&self.lambda_d, d);
        Ok(())
    }

    /// `vera_A` `[r, widest in]` and `vera_B` `[widest out, r]`: the slices of the widest
    /// targets are the whole projections. Frozen, so nothing with `grads`.
    fn shared_file_tensors(
        layers: &[&Self],
        grads: Option<&Gradients>,
    ) -> Result<Vec<(String, HostTensor)>> {
        if grads.is_some() {
            return Ok(Vec::new());
        }
        let widest_in = layers.iter().max_by_key(|l| l.projection_a.dims()[0]);
        let widest_out = layers.iter().max_by_key(|l| l.lambda_b.dims()[0]);
        let (Some(widest_in), Some(widest_out)) = (widest_in, widest_out) else {
            return Ok(Vec::new());
        };
        Ok(vec![
            (
                VERA_A.to_string(),
                HostTensor::read(widest_in.projection_a.clone())?.transposed(),
            ),
            (
                VERA_B.to_string(),
                HostTensor::read(widest_out.projection_b.clone())?.transposed(),
            ),
        ])
    }

    /// Reads `vera_A` and `vera_B` and gives every layer its slices.
    fn load_shared_file_tensors(
        layers: &mut [&mut Self],
        read: &mut TensorReader<'_>,
    ) -> Result<()> {
        let Some(first) = layers.first() else {
            return Ok(());
        };
        let r = first.rank();
        let device = first.projection_a.device();
        let widest_in = layers
            .iter()
            .map(|l| l.projection_a.dims()[0])
            .max()
            .unwrap_or(0);
        let widest_out = layers
            .iter()
            .map(|l| l.lambda_b.dims()[0])
            .max()
            .unwrap_or(0);
        // [widest in, r] and [r, widest out], sliced per layer below.
        let a = read(VERA_A, &[r, widest_in])?
            .transposed()
            .upload::<2>(&device);
        let b = read(VERA_B, &[widest_out, r])?
            .transposed()
            .upload::<2>(&device);
        for layer in layers.iter_mut() {
            let [d_in, _] = layer.projection_a.dims();
            let d_out = layer.lambda_b.dims()[0];
            layer.projection_a = a.clone().narrow(0, 0, d_in);
            layer.projection_b = b.clone().narrow(1, 0, d_out);
        }
        Ok(())
    }
}
