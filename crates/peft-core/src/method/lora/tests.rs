//! LoRA and DoRA against their dense definitions, on a random projection.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor};

use super::*;
use crate::method::api::ProjectionLayer;
use crate::testing::{assert_close, values};

const D_IN: usize = 6;
const D_OUT: usize = 5;

fn random_base(device: &Device) -> Linear {
    let w = Tensor::<2>::random([D_IN, D_OUT], Distribution::Uniform(-1.0, 1.0), device);
    let b = Tensor::<1>::random([D_OUT], Distribution::Uniform(-1.0, 1.0), device);
    Linear {
        weight: Param::from_tensor(w).set_require_grad(false),
        bias: Some(Param::from_tensor(b).set_require_grad(false)),
    }
}

fn lora(base: &Linear, dora: bool) -> LoraLayer {
    let shape = LoraShape {
        rank: 3,
        scale: 2.0,
    };
    LoraLayer::init(base, shape, 0.0, &LoraInit::Default(false), dora)
}

fn input(device: &Device) -> Tensor<3> {
    Tensor::random([2, 4, D_IN], Distribution::Uniform(-1.0, 1.0), device)
}

fn dense(base: &Linear, layer: &LoraLayer) -> Tensor<2> {
    base.weight.val() + layer.lora_a.val().matmul(layer.lora_b.val()) * 2.0
}

#[test]
fn lora_adds_the_scaled_factored_update() {
    let device = Device::flex();
    let base = random_base(&device);
    let layer = lora(&base, false);
    let x = input(&device);
    let bias = base.bias.as_ref().map(|b| b.val());
    let expected = burn::tensor::module::linear(x.clone(), dense(&base, &layer), bias);
    assert_close(values(layer.forward(x, &base)), values(expected), 1e-5);
}

#[test]
fn dora_starts_where_lora_does_and_rescales_columns_by_magnitude() {
    let device = Device::flex();
    let base = random_base(&device);
    let x = input(&device);
    let layer = lora(&base, true);
    // At init the magnitude is the column norm of W + sBA, so DoRA equals LoRA.
    let dense = dense(&base, &layer);
    let norm = dense
        .clone()
        .powi_scalar(2)
        .sum_dim(0)
        .sqrt()
        .squeeze_dim::<1>(0);
    assert_close(
        values(layer.weight_norm(base.weight.val())),
        values(norm.clone()),
        1e-5,
    );
    let mut doubled = layer;
    doubled.magnitude = Some(Param::from_tensor(norm * 2.0));
    // m = 2‖W+sBA‖: the adapted weight is 2(W + sBA), the bias untouched.
    let bias = base.bias.as_ref().map(|b| b.val());
    let expected = burn::tensor::module::linear(x.clone(), dense * 2.0, bias);
    assert_close(values(doubled.forward(x, &base)), values(expected), 1e-4);
}

#[test]
fn rslora_scales_by_the_square_root_of_the_rank() {
    let config = LoraConfig {
        r: 16,
        lora_alpha: 8.0,
        use_rslora: true,
        ..LoraConfig::default()
    };
    assert_eq!(config.shape_for("q_proj").unwrap().scale, 2.0);
    let plain = LoraConfig {
        use_rslora: false,
        ..config
    };
    assert_eq!(plain.shape_for("q_proj").unwrap().scale, 0.5);
}

#[test]
fn unset_targets_take_the_architectures_default_and_an_unknown_one_is_refused() {
    use crate::geometry::ModelGeometry;
    use crate::method::api::MethodConfig;
    use crate::target::TargetModules;
    let geometry = |model_type: &str| ModelGeometry {
        model_type: model_type.into(),
        num_layers: 1,
        hidden_size: 4,
        num_heads: 1,
        num_kv_heads: 1,
        head_dim: 4,
        vocab_size: 8,
        context_length: 16,
    };
    let mut config = LoraConfig::default();
    config.resolve(&geometry("gpt2")).unwrap();
    assert_eq!(
        config.targets.target_modules,
        Some(TargetModules::Names(vec!["c_attn".into()]))
    );
    let err = LoraConfig::default()
        .resolve(&geometry("mpt"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target_modules") && err.contains("mpt"),
        "{err}"
    );
}
