//! IA3 (Liu et al. 2022): learned vectors that rescale the outputs of the targeted projections,
//! or the inputs of the feed-forward ones, as Hugging Face PEFT computes them.

mod config;
mod layer;

pub use config::{Ia3Config, DEFAULT_FEEDFORWARD, DEFAULT_TARGETS};
pub use layer::Ia3Layer;

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;
    use crate::method::api::ProjectionLayer;
    use crate::testing::values;

    fn max_diff(a: Vec<f32>, b: Vec<f32>) -> f32 {
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn merged_weights_compute_what_the_scaled_projection_computes_and_unmerge() {
        let device = Device::flex();
        let random = |shape: [usize; 2]| {
            Tensor::<2>::random(shape, Distribution::Uniform(-1.0, 1.0), &device)
        };
        let base = Linear {
            weight: Param::from_tensor(random([4, 3])),
            bias: Some(Param::from_tensor(random([1, 3]).reshape([3]))),
        };
        let x = random([5, 4]);
        for feedforward in [false, true] {
            let layer = Ia3Layer::init(&base, feedforward, false);
            let bias = base.bias.as_ref().map(|b| b.val());
            let merged = layer.merge(base.weight.val(), bias.clone()).unwrap();
            let plain =
                burn::tensor::module::linear(x.clone(), merged.weight.clone(), merged.bias.clone());
            assert!(max_diff(values(layer.forward(x.clone(), &base)), values(plain)) < 1e-5);
            let (weight, bias_back) = layer.unmerge(merged.weight, merged.bias, merged.memo);
            assert!(max_diff(values(weight), values(base.weight.val())) < 1e-5);
            assert!(max_diff(values(bias_back.unwrap()), values(bias.unwrap())) < 1e-5);
        }
    }
}
