//! The memory-efficient attention against Burn's own (keys and values repeated per query head):
//! output and the gradients of queries, keys and values, with grouped-query heads, causal and
//! padding masks, several block sizes and both autodiff checkpointing strategies.

use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::attention_in_blocks;
use crate::nn::attention::attention_mask;

/// Output, then the gradients of query, key and value, of `attend` against a fixed random
/// upstream gradient, flattened.
fn output_and_gradients(
    device: &Device,
    [b, h, g, s, d]: [usize; 5],
    attend: impl Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> [Vec<f32>; 4] {
    // Drawn here rather than from the device's generator, which tests running beside this one
    // draw from too: both calls of one comparison must see the same inputs.
    let mut rng = StdRng::seed_from_u64(7);
    let mut random = |shape: [usize; 4]| {
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        Tensor::<4>::from_data(TensorData::new(values, shape), device)
    };
    let (query, key, value) = (
        random([b, h, s, d]).require_grad(),
        random([b, g, s, d]).require_grad(),
        random([b, g, s, d]).require_grad(),
    );
    let upstream = random([b, h, s, d]);
    let output = attend(query.clone(), key.clone(), value.clone());
    let grads = (output.clone() * upstream).sum().backward();
    let flat = |t: Tensor<4>| t.into_data().iter::<f32>().collect::<Vec<_>>();
    [
        flat(output.detach()),
        flat(query.grad(&grads).expect("query gradient")),
        flat(key.grad(&grads).expect("key gradient")),
        flat(value.grad(&grads).expect("value gradient")),
    ]
}

/// Burn's decomposed attention on keys and values repeated per query head.
fn reference(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    mask: Tensor<4, burn::tensor::Bool>,
    scale: f64,
) -> Tensor<4> {
    let [b, h, s, _] = query.dims();
    let [_, g, t, d] = key.dims();
    let repeat = |x: Tensor<4>| {
        x.unsqueeze_dim::<5>(2)
            .expand([b, g, h / g, t, d])
            .reshape([b, h, t, d])
    };
    burn_attention(
        query,
        repeat(key),
        repeat(value),
        Some(mask.expand([b, h, s, t])),
        None,
        AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        },
    )
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 1e-5 * scale.max(1.0),
        "{what}: off by {worst} (scale {scale})"
    );
}

#[test]
fn equals_burns_attention_in_value_and_gradients() {
    let (b, s) = (2, 5);
    // Row 0 is left-padded by two tokens; row 1 is whole.
    let padding = [0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    for checkpointing in [false, true] {
        let device = Device::flex().autodiff();
        let device = if checkpointing {
            device.gradient_checkpointing()
        } else {
            device
        };
        let padding =
            Tensor::<2, Int>::from_data(TensorData::new(padding.to_vec(), [b, s]), &device);
        let mask = attention_mask(b, s, 0, Some(&padding), None, &device);
        for (heads, groups) in [(4, 2), (3, 3), (4, 1)] {
            let shape = [b, heads, groups, s, 8];
            let scale = 0.35;
            let want = output_and_gradients(&device, shape, |q, k, v| {
                reference(q, k, v, mask.clone(), scale)
            });
            // One row per block, a few rows, everything at once.
            for block_elements in [1, 3 * b * groups * s, usize::MAX] {
                let got = output_and_gradients(&device, shape, |q, k, v| {
                    attention_in_blocks(&q, &k, &v, &mask, scale, block_elements)
                        .expect("flex autodiff runs the efficient attention")
                });
                for (i, what) in ["output", "query", "key", "value"].iter().enumerate() {
                    let context = format!(
                        "{what}, {heads} heads / {groups} groups, block {block_elements}, \
                         checkpointing {checkpointing}"
                    );
                    assert_close(&got[i], &want[i], &context);
                }
            }
        }
    }
}

#[test]
fn leaves_inference_to_burns_attention() {
    let device = Device::flex();
    let x = Tensor::<4>::zeros([1, 2, 3, 4], &device);
    let mask = attention_mask(1, 3, 0, None, None, &device);
    assert!(attention_in_blocks(&x, &x, &x, &mask, 0.5, 1 << 20).is_none());
}
