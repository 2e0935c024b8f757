//! Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small residual MLP on the
//! output of a block's last projection. Hugging Face PEFT has no such method; the file format
//! (`peft_type` `BOTTLENECK`) is this project's and is documented in `docs/bottleneck-format.md`.

mod config;
mod layer;

pub use config::{
    BottleneckConfig, BottleneckVariant, NonLinearity, HOULSBY_TARGETS, PFEIFFER_TARGETS,
};
pub use layer::{AdapterNorm, BottleneckLayer};

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;
    use crate::method::api::ProjectionLayer;

    #[test]
    fn starts_as_the_identity_with_a_bottleneck_of_width_over_factor() {
        let device = Device::flex();
        let base = Linear {
            weight: Param::from_tensor(Tensor::random(
                [8, 32],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            )),
            bias: None,
        };
        let config = BottleneckConfig {
            reduction_factor: 4,
            ln_before: true,
            ..BottleneckConfig::default()
        };
        let layer = BottleneckLayer::new(&config, "mlp.down_proj", &base).unwrap();
        assert_eq!(layer.down.weight.dims(), [32, 8]);
        let x = Tensor::<2>::random([3, 8], Distribution::Uniform(-1.0, 1.0), &device);
        let expected: Vec<f32> = base.forward(x.clone()).into_data().iter().collect();
        let got: Vec<f32> = layer.forward(x, &base).into_data().iter().collect();
        assert_eq!(got, expected);
        assert!(!layer.can_merge());
    }
}
