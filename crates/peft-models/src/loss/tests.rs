//! The chunked loss against the plain one on a random trainable head: value and the gradients
//! of the hidden states, the weight and the bias, with several chunk sizes, ignored labels and
//! virtual tokens in front.

use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use peft_core::WeightLayout;

use super::*;

const WIDTH: usize = 6;
const VOCAB: usize = 11;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Largest difference relative to the largest magnitude of `want`.
fn relative_error(got: Vec<f32>, want: Vec<f32>) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let worst = got
        .iter()
        .zip(&want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / scale
}

/// A trainable head (unlike a loaded model's), with or without a bias.
fn trainable_head(with_bias: bool, device: &Device) -> Projection {
    let w = Tensor::<2>::random([WIDTH, VOCAB], Distribution::Normal(0.0, 1.0), device);
    let b = Tensor::<1>::random([VOCAB], Distribution::Normal(0.0, 1.0), device);
    let mut head = Projection::new(
        "lm_head",
        Param::from_tensor(w),
        with_bias.then(|| Param::from_tensor(b)),
        WeightLayout::Linear,
    );
    let base = head.base.as_dense_mut().expect("a dense head");
    base.weight = base.weight.clone().set_require_grad(true);
    base.bias = base.bias.clone().map(|b| b.set_require_grad(true));
    head
}

/// Loss and the gradients of hidden, weight and bias, from `loss_of`.
fn loss_and_grads(
    hidden: &Tensor<3>,
    head: &Projection,
    loss_of: impl Fn(Tensor<3>, &Projection) -> Tensor<1>,
) -> Vec<Vec<f32>> {
    let loss = loss_of(hidden.clone(), head);
    let grads = loss.backward();
    let mut out = vec![values(loss.detach()), values(hidden.grad(&grads).unwrap())];
    out.push(values(head.base.weight().grad(&grads).unwrap()));
    if let Some(bias) = head.base.bias() {
        out.push(values(bias.grad(&grads).unwrap()));
    }
    out
}

#[test]
fn chunked_loss_and_gradients_equal_the_plain_loss() {
    let device = Device::flex().autodiff();
    let (batch, seq) = (3, 5);
    // Ignored labels anywhere, a row's first label (never predicted without virtual tokens).
    let labels = HostLabels::new(
        vec![
            4, 7, -100, 2, 9, //
            -100, -100, 1, 10, 0, //
            3, -100, -100, -100, 5,
        ],
        seq,
    );
    for virtual_tokens in [0, 2] {
        for with_bias in [false, true] {
            let head = trainable_head(with_bias, &device);
            let hidden = Tensor::<3>::random(
                [batch, virtual_tokens + seq, WIDTH],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let plain = loss_and_grads(&hidden, &head, |h, head| {
                causal_lm_loss(head.forward(h), labels.to_tensor(&device))
            });
            // One row per chunk, three (the last chunk shorter), all rows at once.
            for chunk_rows in [1, 3, 64] {
                let chunked = loss_and_grads(&hidden, &head, |h, head| {
                    loss_of_hidden(h, head, &labels, chunk_rows * VOCAB)
                });
                for (i, (got, want)) in chunked.into_iter().zip(plain.clone()).enumerate() {
                    let err = relative_error(got, want);
                    assert!(
                        err <= 1e-5,
                        "virtual {virtual_tokens}, bias {with_bias}, chunk {chunk_rows}: \
                         output {i} (loss, d hidden, d weight, d bias) differs by {err:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn without_labels_the_loss_is_nan_as_in_transformers() {
    let device = Device::flex();
    let head = trainable_head(false, &device);
    let hidden = Tensor::<3>::random([1, 3, WIDTH], Distribution::Normal(0.0, 1.0), &device);
    let labels = HostLabels::new(vec![-100; 3], 3);
    let loss = values(loss_of_hidden(hidden, &head, &labels, VOCAB));
    assert!(loss[0].is_nan(), "{loss:?}");
}

#[test]
fn counted_positions_read_the_position_before_each_label() {
    let labels = HostLabels::new(vec![1, -100, 2, 3, 4, -100], 3);
    // Position t predicts the label at t + 1; rows are 3 positions apart.
    assert_eq!(labels.counted_positions(3), (vec![1, 3], vec![2, 4]));
    // Two virtual tokens in front: rows 5 apart, the first label predicted by position 1.
    assert_eq!(
        labels.counted_positions(5),
        (vec![1, 3, 6, 7], vec![1, 2, 3, 4])
    );
}

/// A packed head expanded a slice of vocabulary columns at a time gives the loss and the
/// hidden states' gradient of the plain loss through its expanded weight, whatever the slice
/// (one column, three, all of them).
#[test]
fn a_packed_head_gives_the_loss_and_gradients_of_its_expanded_weight() {
    use peft_core::{BlockCodes, PackFormat, PackedWeight};
    const PACKED_WIDTH: usize = 64;
    let device = Device::flex().autodiff();
    let stored: Vec<f32> = (0..VOCAB * PACKED_WIDTH)
        .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.3)
        .collect();
    let codes = BlockCodes::quantize(PackFormat::Q4, &stored, VOCAB, PACKED_WIDTH);
    let packed = PackedWeight::upload(&codes, "lm_head.weight", &device).unwrap();
    let dense_weight = packed.dequantize();
    let packed = Projection::packed("lm_head", packed, None, WeightLayout::Linear);
    let dense = Projection::new(
        "lm_head",
        Param::from_tensor(dense_weight),
        None,
        WeightLayout::Linear,
    );
    let (batch, seq) = (2, 4);
    let labels = HostLabels::new(vec![4, 7, -100, 2, -100, 10, 0, 3], seq);
    let hidden = Tensor::<3>::random(
        [batch, seq, PACKED_WIDTH],
        Distribution::Normal(0.0, 1.0),
        &device,
    )
    .require_grad();
    let of = |head: &Projection, chunk_elements: usize| {
        let loss = loss_of_hidden(hidden.clone(), head, &labels, chunk_elements);
        let grads = loss.backward();
        (values(loss.detach()), values(hidden.grad(&grads).unwrap()))
    };
    let (want_loss, want_grad) = {
        let loss = causal_lm_loss(dense.forward(hidden.clone()), labels.to_tensor(&device));
        let grads = loss.backward();
        (values(loss.detach()), values(hidden.grad(&grads).unwrap()))
    };
    let rows = 5; // the labelled positions
    for columns in [1, 3, VOCAB] {
        let (loss, grad) = of(&packed, rows * columns);
        let (loss_err, grad_err) = (
            relative_error(loss, want_loss.clone()),
            relative_error(grad, want_grad.clone()),
        );
        assert!(
            loss_err <= 1e-5,
            "{columns} columns: loss off by {loss_err:e}"
        );
        assert!(
            grad_err <= 1e-5,
            "{columns} columns: gradient off by {grad_err:e}"
        );
    }
}
