//! The loss training uses (logits only at labelled positions, in chunks, each chunk's gradient
//! taken at once) against the plain loss over every logit, on the PEFT fixtures: the same loss
//! and the same adapter gradients to 1e-5, with chunks small enough that there are several,
//! on ndarray, flex and wgpu. Prompt tuning covers virtual tokens in front of the labels.

mod common;

use std::collections::BTreeMap;

use burn::tensor::Device;
use common::*;
use peft_core::adapter_folder::adapter_tensors;
use peft_core::HostTensor;
use peft_models::loss::{causal_lm_loss, lm_loss_in_chunks, HostLabels};
use peft_models::LoadedModel;

/// The equality the chunked loss promises (relative, loss and gradients alike).
const CHUNKED_TOLERANCE: f32 = 1e-5;

/// Rows of logits per chunk: the fixtures label more than this many positions.
const CHUNK_ROWS: usize = 3;

/// The loss and the adapter's gradients by key.
fn loss_and_grads(
    loaded: &LoadedModel,
    loss: burn::tensor::Tensor<1>,
) -> (f32, BTreeMap<String, HostTensor>) {
    let grads = loss.backward();
    let grads = adapter_tensors(&loaded.model, "default", Some(&grads)).unwrap();
    (to_vec(loss.detach())[0], grads)
}

fn check(case: &Case, device: &Device) {
    let name = case.name();
    let device = device.clone().autodiff();
    let loaded = case.load(&device);
    let expected = Expected::load(name);
    let (ids, mask, labels) = (
        expected.i64("input_ids"),
        expected.i64("attention_mask"),
        expected.i64("labels"),
    );
    let run = |chunked: bool| {
        let (ids, mask) = (int_tensor(&ids, &device), int_tensor(&mask, &device));
        let loss = if chunked {
            let host = HostLabels::new(labels.values.clone(), labels.shape[1]);
            let vocab = loaded.model.lm_head().out_features();
            lm_loss_in_chunks(&loaded.model, ids, Some(&mask), &host, CHUNK_ROWS * vocab)
        } else {
            let logits = loaded.model.forward(ids, Some(&mask), None);
            causal_lm_loss(logits, int_tensor(&labels, &device))
        };
        loss_and_grads(&loaded, loss)
    };
    let counted = labels.values.iter().filter(|&&l| l != -100).count();
    assert!(counted > 2 * CHUNK_ROWS, "{name}: too few labels to chunk");
    let (plain_loss, plain_grads) = run(false);
    let (chunked_loss, chunked_grads) = run(true);
    let rel = (chunked_loss - plain_loss).abs() / plain_loss.abs();
    assert!(
        rel <= CHUNKED_TOLERANCE,
        "{name} on {device:?}: chunked loss {chunked_loss} vs {plain_loss} (relative {rel:e})"
    );
    assert!(!plain_grads.is_empty(), "{name}: no adapter gradients");
    assert_eq!(
        chunked_grads.keys().collect::<Vec<_>>(),
        plain_grads.keys().collect::<Vec<_>>(),
        "{name}: gradient keys"
    );
    for (key, want) in &plain_grads {
        let got = &chunked_grads[key];
        let err = relative_l2(&got.data, &want.data);
        assert!(
            err <= CHUNKED_TOLERANCE,
            "{name} on {device:?}: chunked gradient of {key} relative L2 {err:e}"
        );
    }
}

#[test]
fn ndarray() {
    ADAPTER_CASES
        .iter()
        .for_each(|case| check(case, &ndarray_device()));
}

#[test]
fn flex() {
    ADAPTER_CASES
        .iter()
        .for_each(|case| check(case, &Device::flex()));
}

/// WGPU on the CPU is slow: one PEFT adapter and virtual tokens (a minute for all six cases).
#[test]
fn wgpu() {
    [&ADAPTER_CASES[1], &ADAPTER_CASES[4]]
        .into_iter()
        .for_each(|case| check(case, &wgpu_device()));
}
