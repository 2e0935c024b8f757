//! The loss training uses (logits only at labelled positions, in chunks, each chunk's gradient
//! taken at once) against the plain loss over every logit, on the PEFT fixtures: the same loss
//! and the same adapter gradients to 1e-5, with chunks small enough that there are several,
//! on ndarray, flex and wgpu. Prompt tuning covers virtual tokens in front of the labels.

mod common;

use std::collections::BTreeMap;

use burn::tensor::Device;
use common::*;
use peft_core::adapter_folder::{adapter_tensors, load_adapter};
use peft_core::method::prompt::PromptTuningConfig;
use peft_core::{attach_adapter, AdapterConfig, HostTensor};
use peft_models::loss::{causal_lm_loss, lm_loss_in_chunks, HostLabels};
use peft_models::{load_model, LoadedModel};

/// The equality the chunked loss promises (relative, loss and gradients alike).
const CHUNKED_TOLERANCE: f32 = 1e-5;

/// Rows of logits per chunk: the fixtures label more than this many positions.
const CHUNK_ROWS: usize = 3;

/// A fixture case with its adapter: a PEFT file, or prompt tuning attached to a base.
enum Case {
    Peft(&'static str),
    PromptTuning(&'static str),
}

impl Case {
    fn name(&self) -> &'static str {
        match self {
            Case::Peft(name) | Case::PromptTuning(name) => name,
        }
    }

    fn load(&self, device: &Device) -> LoadedModel {
        let mut loaded = load_model(&case_dir(self.name()).join("base"), device).unwrap();
        match self {
            Case::Peft(name) => {
                load_adapter(
                    &mut loaded.model,
                    "default",
                    &case_dir(name).join("adapter"),
                )
                .unwrap();
            }
            Case::PromptTuning(_) => {
                let config = AdapterConfig::PromptTuning(PromptTuningConfig::new(4));
                attach_adapter(&mut loaded.model, "default", &config).unwrap();
            }
        }
        loaded
    }
}

const CASES: [Case; 6] = [
    Case::Peft("gpt2-lora"),
    Case::Peft("llama-lora"),
    Case::Peft("llama-ia3"),
    Case::Peft("llama-prefix"),
    Case::PromptTuning("gpt2-base"),
    Case::PromptTuning("llama-base"),
];

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
    CASES.iter().for_each(|case| check(case, &ndarray_device()));
}

#[test]
fn flex() {
    CASES.iter().for_each(|case| check(case, &Device::flex()));
}

/// WGPU on the CPU is slow: one PEFT adapter and virtual tokens (a minute for all six cases).
#[test]
fn wgpu() {
    [&CASES[1], &CASES[4]]
        .into_iter()
        .for_each(|case| check(case, &wgpu_device()));
}
