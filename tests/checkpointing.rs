//! Per-layer activation checkpointing against the plain step, on the fixtures: the same loss
//! and gradients without dropout (ndarray), dropout masks replayed in the recomputed layers
//! (flex: this binary's only test drawing from flex's random generator, which tests running in
//! parallel threads share), prefix tuning refused.

mod common;

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use burn::train::Learner;
use common::*;
use peft_core::adapter_folder::adapter_tensors;
use peft_core::load_adapter;
use peft_models::arch::{Architecture, ArchitectureVisitor};
use peft_models::checkpointing::layer_seed;
use peft_models::load_model;
use peft_models::loss::HostLabels;
use peft_train::adamw;
use peft_train::config::Schedule;
use peft_train::model::{TrainableLm, Trained};
use peft_train::schedule::{learning_rates, WarmupSchedule};
use peft_train::step::step_gradients;

/// `case`'s base with what trains: the fixture's PEFT adapter, prompt tuning (4 virtual
/// tokens), or every weight.
fn trainable_fixture(case: &str, trained: &str, device: &burn::tensor::Device) -> TrainableLm {
    let mut loaded = load_model(&case_dir(case).join("base"), device).unwrap();
    let adapter = |config| Trained::Adapter {
        name: "default".into(),
        config: Box::new(config),
    };
    match trained {
        "full" => {
            let (lm, tied) = peft_train::full::prepare(loaded.model);
            TrainableLm::new(lm, Trained::Full(tied))
        }
        "prompt" => {
            let config = peft_core::AdapterConfig::PromptTuning(
                peft_core::method::prompt::PromptTuningConfig::new(4),
            );
            peft_core::attach_adapter(&mut loaded.model, "default", &config).unwrap();
            TrainableLm::new(loaded.model, adapter(config))
        }
        _ => {
            let dir = case_dir(case).join("adapter");
            let config = load_adapter(&mut loaded.model, "default", &dir).unwrap();
            TrainableLm::new(loaded.model, adapter(config))
        }
    }
}

/// Per-layer activation checkpointing gives the loss and the gradients of the plain step (to
/// 1e-5, relative L2 per tensor): LoRA on GPT-2 and LLaMA, IA3, VeRA, AdaLoRA (its
/// orthogonality term taken in a backward pass of its own), prompt tuning (virtual tokens in
/// the first layer's input), and full fine-tuning of both (embeddings, GPT-2's learned
/// positions, a tied head).
#[test]
fn gradient_checkpointing_gives_the_loss_and_gradients_of_the_plain_step() {
    let device = ndarray_device().autodiff();
    let cases = [
        ("gpt2-lora", "adapter"),
        ("llama-lora", "adapter"),
        ("llama-ia3", "adapter"),
        ("llama-vera", "adapter"),
        ("llama-adalora", "adapter"),
        ("llama-base", "prompt"),
        ("gpt2-base", "full"),
        ("llama-base", "full"),
    ];
    for (case, trained) in cases {
        let batch = fixture_batch(case, &device);
        let model = trainable_fixture(case, trained, &device);
        let step = |checkpointing: bool| {
            let model = model
                .clone()
                .with_gradient_checkpointing(checkpointing, 0)
                .unwrap();
            let schedule = WarmupSchedule::new(1e-3, 0, 1, Schedule::Constant, 0);
            let rates = learning_rates(schedule, None);
            let mut learner = Learner::new(model, adamw(0.0).init(), rates);
            let step = step_gradients(&mut learner, [batch.clone()], 0.0).unwrap();
            let loss = to_vec(step.loss.clone())[0];
            (loss, gradients_by_id(&learner.model(), step.gradients()))
        };
        let (plain_loss, plain) = step(false);
        let (loss, checkpointed) = step(true);
        let name = format!("{case} ({trained})");
        assert!(
            (loss - plain_loss).abs() <= 1e-5 * plain_loss.abs(),
            "{name}: loss {loss} vs {plain_loss}"
        );
        assert!(!plain.is_empty(), "{name}: no gradients");
        assert_eq!(
            checkpointed.keys().collect::<Vec<_>>(),
            plain.keys().collect::<Vec<_>>(),
            "{name}: which tensors have gradients"
        );
        let worst = plain
            .iter()
            .map(|(id, want)| relative_l2(&checkpointed[id].1, &want.1))
            .fold(0.0f32, f32::max);
        eprintln!("{name}: worst relative L2 of a gradient {worst:e}");
        assert!(worst <= 1e-5, "{name}: a gradient differs by {worst:e}");
    }
}

/// Checkpointing is refused, naming the setting, for prefix tuning (keys and values in every
/// layer).
#[test]
fn gradient_checkpointing_refuses_prefix_tuning() {
    let device = ndarray_device().autodiff();
    let prefix = trainable_fixture("llama-prefix", "adapter", &device);
    let message = prefix
        .with_gradient_checkpointing(true, 0)
        .expect_err("prefix tuning is refused")
        .to_string();
    assert!(
        message.contains("gradient_checkpointing") && message.contains("prefix tuning"),
        "{message}"
    );
}

/// The plain loss of `input_ids` with decoder layer `i` run after seeding the generator with
/// `layer_seed(seed, i)`: what checkpointing's forward pass and recomputations draw.
struct SeededLoss {
    input_ids: Tensor<2, burn::tensor::Int>,
    mask: Tensor<2, burn::tensor::Int>,
    labels: Tensor<2, burn::tensor::Int>,
    seed: u64,
}

impl ArchitectureVisitor for SeededLoss {
    type Output = Tensor<1>;

    fn visit<A: Architecture>(self, model: &A) -> Tensor<1> {
        let device = self.input_ids.device();
        let embeddings = model.token_embedding().forward(self.input_ids);
        let (mut x, inputs) = model.decoder_input(embeddings, Some(&self.mask), None);
        for i in 0..model.num_layers() {
            device.seed(layer_seed(self.seed, i));
            x = model.decoder_layer(i, x, &inputs, None);
        }
        let logits = model.lm_head().forward(model.final_norm(x));
        peft_models::loss::causal_lm_loss(logits, self.labels)
    }
}

/// With dropout, checkpointing replays each layer's masks in its recomputation: the loss and
/// the gradients equal (to 1e-5) those of a plain forward and backward whose layers draw from
/// the same seeds, and another seed gives other gradients (the masks are really drawn).
#[test]
fn gradient_checkpointing_replays_dropout_masks() {
    let device = burn::tensor::Device::flex().autodiff();
    let mut loaded = load_model(&case_dir("llama-base").join("base"), &device).unwrap();
    let mut lora = peft_core::method::lora::LoraConfig {
        lora_dropout: 0.3,
        // Both factors random, so that every gradient depends on the masks.
        init_lora_weights: peft_core::method::lora::LoraInit::Default(false),
        ..Default::default()
    };
    let targets = ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec();
    lora.targets.target_modules = Some(peft_core::target::TargetModules::Names(targets));
    let config = peft_core::AdapterConfig::Lora(lora);
    peft_core::attach_adapter(&mut loaded.model, "default", &config).unwrap();
    let model = loaded.model;

    let expected = Expected::load("llama-base");
    let labels = expected.i64("labels");
    let (ids, mask) = (
        int_tensor(&expected.i64("input_ids"), &device),
        int_tensor(&expected.i64("attention_mask"), &device),
    );
    let host_labels = HostLabels::new(labels.values.clone(), labels.shape[1]);
    let summed = |passes: Vec<burn::tensor::Gradients>| {
        let mut sum: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for pass in passes {
            for (key, grad) in adapter_tensors(&model, "default", Some(&pass)).unwrap() {
                let acc = sum.entry(key).or_insert_with(|| vec![0.0; grad.data.len()]);
                acc.iter_mut().zip(&grad.data).for_each(|(a, g)| *a += g);
            }
        }
        sum
    };
    let checkpointed = |seed: u64| {
        let layerwise = model.layerwise_backward(ids.clone(), Some(&mask), &host_labels, 1.0, seed);
        (to_vec(layerwise.loss)[0], summed(layerwise.passes))
    };
    let seed = 7;
    let reference_loss = model.visit_architecture(SeededLoss {
        input_ids: ids.clone(),
        mask: mask.clone(),
        labels: int_tensor(&labels, &device),
        seed,
    });
    let reference = summed(vec![reference_loss.backward()]);
    let reference_loss = to_vec(reference_loss.detach())[0];

    let (loss, grads) = checkpointed(seed);
    assert!(
        (loss - reference_loss).abs() <= 1e-5 * reference_loss.abs(),
        "loss {loss} vs {reference_loss}"
    );
    assert_eq!(
        grads.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    for (key, want) in &reference {
        let err = relative_l2(&grads[key], want);
        assert!(err <= 1e-5, "{key}: relative L2 {err:e}");
    }
    let (_, other) = checkpointed(seed + 1);
    let moved = reference
        .iter()
        .map(|(key, want)| relative_l2(&other[key], want))
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-3,
        "another seed gave the same gradients ({moved:e})"
    );
}
