//! Training on the fixtures (ndarray): the loss falls, only adapter tensors move and hold
//! optimizer state, one AdamW step equals PyTorch's formula applied to PEFT's gradients, and the
//! final adapter reloads to the logits training ended with. (Resuming is tested through the CLI
//! in `crates/peft-cli/tests/cli.rs`: runs in separate processes do not share the device's
//! random generator, as tests running in parallel threads do.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::train::Learner;
use common::*;
use peft_core::adapter_folder::adapter_tensors;
use peft_core::load_adapter;
use peft_models::loss::{HostLabels, IGNORE_INDEX};
use peft_models::{load_model, CausalLm};
use peft_train::batch::LmBatch;
use peft_train::config::{LoraOptions, MethodSection, Schedule};
use peft_train::data::Example;
use peft_train::model::{TrainableLm, Trained};
use peft_train::schedule::{learning_rates, WarmupSchedule};
use peft_train::step::{optimizer_step, step_gradients};
use peft_train::{adamw, train, TrainConfig};

/// Bits of every parameter outside the adapters, by module path.
fn base_parameters(model: &CausalLm) -> BTreeMap<String, Vec<u32>> {
    #[derive(Default)]
    struct Collect {
        path: Vec<String>,
        out: BTreeMap<String, Vec<u32>>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self
                .path
                .iter()
                .any(|p| p == "adapters" || p == "saved" || p == "virtual_tokens")
            {
                return;
            }
            let bits = to_vec(param.val()).iter().map(|v| v.to_bits()).collect();
            self.out.insert(self.path.join("."), bits);
        }
    }
    let mut collect = Collect::default();
    model.visit(&mut collect);
    collect.out
}

/// A temporary folder with the dataset, and the fixture configuration writing to `<dir>/run`.
fn setup() -> (tempfile::TempDir, TrainConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = reversal_config(dir.path());
    (dir, config)
}

#[test]
fn lora_training_lowers_the_loss_and_moves_only_the_adapter() {
    let device = ndarray_device();
    let (_dir, config) = setup();
    let out = config.training.out.clone();
    let summary = train(&config, &device, false).expect("training runs");

    let losses = logged_losses(&out);
    assert_eq!(losses.len(), 40, "one metrics line per step");
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        last <= 0.2 * first,
        "loss fell from {first} to {last}, less than 80%"
    );

    let fresh = load_model(&case_dir("llama-base").join("base"), &device).unwrap();
    let before = base_parameters(&fresh.model);
    let after = base_parameters(&summary.model);
    assert_eq!(before.len(), after.len());
    for (path, bits) in &before {
        assert!(after[path] == *bits, "base parameter {path} changed");
    }

    // Optimizer state: AdamW keeps two moments per trained tensor; the record holds exactly
    // two per adapter tensor, so no base parameter has state.
    let adapter = adapter_tensors(&summary.model, "default", None).unwrap();
    let record = peft_train::checkpoint::read_optimizer(&out.join("checkpoint-40")).unwrap();
    assert_eq!(record.len(), 2 * adapter.len());
}

#[test]
fn every_method_trains_on_gpt2_llama_qwen2_and_gemma_with_falling_loss() {
    use peft_train::config::{
        AdaLoraOptions, BottleneckOptions, Ia3Options, Method, PrefixOptions, PromptOptions,
        VeraOptions,
    };
    let device = burn::tensor::Device::flex();
    let methods = [
        Method::Lora,
        Method::Dora,
        Method::Prefix,
        Method::Prompt,
        Method::Ia3,
        Method::Houlsby,
        Method::Pfeiffer,
        Method::Vera,
        Method::Adalora,
    ];
    for case in ["gpt2-base", "llama-base", "qwen2-lora", "gemma-lora"] {
        for (method, projection) in methods
            .iter()
            .map(|&m| (m, false))
            .chain([(Method::Prefix, true)])
        {
            let what = format!(
                "{case} {method:?}{}",
                if projection { " (MLP)" } else { "" }
            );
            let (_dir, mut config) = setup();
            config.model.path = Some(case_dir(case).join("base"));
            let lora = LoraOptions {
                dropout: 0.0,
                ..LoraOptions::default()
            };
            let bottleneck = BottleneckOptions {
                reduction_factor: 4,
                ..BottleneckOptions::default()
            };
            config.method = match method {
                Method::Lora => MethodSection::Lora(lora),
                Method::Dora => MethodSection::Dora(lora),
                Method::Prefix => MethodSection::Prefix(PrefixOptions {
                    virtual_tokens: 4,
                    prefix_projection: projection,
                    ..PrefixOptions::default()
                }),
                Method::Prompt => MethodSection::Prompt(PromptOptions {
                    virtual_tokens: 4,
                    ..PromptOptions::default()
                }),
                Method::Ia3 => MethodSection::Ia3(Ia3Options::default()),
                Method::Houlsby => MethodSection::Houlsby(bottleneck),
                Method::Pfeiffer => MethodSection::Pfeiffer(bottleneck),
                Method::Vera => MethodSection::Vera(VeraOptions {
                    rank: 16,
                    ..VeraOptions::default()
                }),
                // The budget falls from 12 to 8 per target over the 12 steps, so the saved
                // adapter is pruned and the reload below checks its rank pattern.
                Method::Adalora => MethodSection::Adalora(AdaLoraOptions::default()),
                Method::Full => unreachable!("full fine-tuning has its own test below"),
            };
            // Virtual tokens start at N(0, 1), and VeRA's vectors scale small frozen random
            // projections: both need larger steps than weight deltas.
            config.training.lr = match method {
                Method::Prefix | Method::Prompt | Method::Vera => 1e-1,
                _ => 2e-2,
            };
            config.training.max_steps = Some(12);
            let out = config.training.out.clone();
            let summary = train(&config, &device, false).unwrap_or_else(|e| panic!("{what}: {e}"));
            let losses = logged_losses(&out);
            assert_eq!(losses.len(), 12, "{what}");
            let (first, last) = (losses[0], *losses.last().unwrap());
            eprintln!("{what}: loss {first:.4} -> {last:.4} in 12 steps");
            // Every step sees the same batch without dropout, so any change of the loss comes
            // from the adapter; prompt learning moves slowest on these tiny random models.
            // Gemma's tied head (its small random embedding) is near uniform: the loss starts
            // within 1% of ln(vocab), so there it must cover a tenth of the way down to it.
            let uniform = (summary.model.vocab_size() as f64).ln();
            let fell = if case.starts_with("gemma") {
                first - last > 0.1 * (first - uniform)
            } else {
                last < 0.985 * first
            };
            assert!(fell, "{what}: loss went from {first} to {last}");

            let fresh = load_model(&case_dir(case).join("base"), &device).unwrap();
            let base = base_parameters(&fresh.model);
            assert_eq!(
                base,
                base_parameters(&summary.model),
                "{what}: base changed"
            );

            // The saved adapter (prefix MLP folded away) reproduces the trained model.
            let diff = reloaded_adapter_diff(case, &summary, &device);
            assert!(
                diff <= 1e-5,
                "{what}: reloaded adapter's logits differ by {diff}"
            );
        }
    }
}

#[test]
fn the_final_adapter_reloads_to_the_logits_training_ended_with() {
    let device = ndarray_device();
    let (_dir, mut config) = setup();
    config.training.max_steps = Some(5);
    let summary = train(&config, &device, false).unwrap();

    let diff = reloaded_adapter_diff("llama-base", &summary, &device);
    assert!(diff <= 1e-6, "reloaded adapter's logits differ by {diff}");
}

/// AdaLoRA on the tiny LLaMA: the budget falls from 4 to 2 ranks per target between step 2
/// and step 7 (of 10, `tfinal` 3); the final adapter holds each target's kept ranks only, its
/// `rank_pattern` says which (2 per target on average, as PEFT's allocation keeps them), and it
/// reloads to the logits training ended with.
#[test]
fn adalora_allocates_its_rank_budget_and_saves_the_pattern() {
    use peft_train::config::AdaLoraOptions;
    let device = ndarray_device();
    let (_dir, mut config) = setup();
    config.method = MethodSection::Adalora(AdaLoraOptions {
        init_r: 4,
        target_r: 2,
        tinit: 2,
        tfinal: 3,
        target: vec!["q_proj".into(), "v_proj".into()],
        ..AdaLoraOptions::default()
    });
    config.training.max_steps = Some(10);
    let summary = train(&config, &device, false).unwrap();

    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(summary.final_adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["total_step"], 10);
    let pattern = saved["rank_pattern"].as_object().expect("a rank pattern");
    let tensors = adapter_tensors(&summary.model, "default", None).unwrap();
    let targets = tensors.keys().filter(|k| k.ends_with("lora_E")).count();
    assert_eq!(pattern.len(), targets, "{pattern:?}");
    let mut kept_total = 0;
    for (key, kept) in pattern {
        let kept: Vec<bool> = serde_json::from_value(kept.clone()).unwrap();
        assert_eq!(kept.len(), 4, "{key}");
        let rank = kept.iter().filter(|k| **k).count();
        kept_total += rank;
        let module = key.strip_suffix(".lora_E").unwrap();
        let a = &tensors[&format!("base_model.model.{module}.lora_A")];
        assert_eq!(a.shape[0], rank, "{key}: saved lora_A rows");
    }
    assert_eq!(
        kept_total,
        2 * targets,
        "the final budget is target_r per target"
    );
    eprintln!("AdaLoRA rank pattern: {pattern:?}");

    let diff = reloaded_adapter_diff("llama-base", &summary, &device);
    assert!(diff <= 1e-6, "the pruned adapter's logits differ by {diff}");
}

/// A training configuration for full fine-tuning of the fixture `case`, `steps` steps, a
/// checkpoint every 2.
fn full_config(config: &mut TrainConfig, case: &str, steps: usize) {
    use peft_train::config::FullOptions;
    config.model.path = Some(case_dir(case).join("base"));
    config.method = MethodSection::Full(FullOptions {});
    config.training.lr = 1e-3;
    config.training.max_steps = Some(steps);
    config.training.save_every = Some(2);
}

/// The logits of `model` on `case`'s fixture inputs.
fn fixture_logits(model: &CausalLm, case: &str, device: &burn::tensor::Device) -> Vec<f32> {
    let expected = Expected::load(case);
    let ids = int_tensor(&expected.i64("input_ids"), device);
    let mask = int_tensor(&expected.i64("attention_mask"), device);
    to_vec(model.forward(ids, Some(&mask), None))
}

/// How far the logits of `case`'s base model with the run's final adapter reloaded are from
/// those the run ended with, on the fixture's inputs.
fn reloaded_adapter_diff(
    case: &str,
    summary: &peft_train::TrainSummary,
    device: &burn::tensor::Device,
) -> f32 {
    let mut reloaded = load_model(&case_dir(case).join("base"), device).unwrap();
    load_adapter(&mut reloaded.model, "default", &summary.final_adapter).unwrap();
    max_diff(
        &fixture_logits(&summary.model, case, device),
        &fixture_logits(&reloaded.model, case, device),
    )
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

/// `--method full` on GPT-2 (tied head) and LLaMA (untied): the loss falls, every base weight
/// moves, the final folder is a model folder (a tied head written once, as transformers writes
/// it) that reloads to the logits training ended with, and a run stopped at a checkpoint and
/// resumed ends where the uninterrupted run ends.
#[test]
fn full_fine_tuning_trains_every_weight_saves_a_model_folder_and_resumes_exactly() {
    // ndarray steps with Burn's AdamW, flex with the fused pass (`peft_train::adamw`).
    for (device, (case, tied)) in [ndarray_device(), burn::tensor::Device::flex()]
        .into_iter()
        .flat_map(|device| {
            [("gpt2-base", true), ("llama-base", false)].map(|c| (device.clone(), c))
        })
    {
        let (_dir, mut config) = setup();
        full_config(&mut config, case, 4);
        let out = config.training.out.clone();
        let summary = train(&config, &device, false).unwrap_or_else(|e| panic!("{case}: {e}"));
        let losses = logged_losses(&out);
        let (first, last) = (losses[0], *losses.last().unwrap());
        eprintln!("{case} full: loss {first:.4} -> {last:.4} in 4 steps");
        assert!(last < first, "{case}: loss went from {first} to {last}");
        assert_eq!(
            summary.parameters.trainable, summary.parameters.total,
            "{case}"
        );

        let fresh = load_model(&case_dir(case).join("base"), &device).unwrap();
        let before = base_parameters(&fresh.model);
        let after = base_parameters(&summary.model);
        let unchanged: Vec<&String> = before.keys().filter(|k| before[*k] == after[*k]).collect();
        assert!(unchanged.is_empty(), "{case}: unchanged {unchanged:?}");

        let saved: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(summary.final_adapter.join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(saved["tie_word_embeddings"], tied, "{case}");
        let weights = std::fs::read(summary.final_adapter.join("model.safetensors")).unwrap();
        let names = safetensors::SafeTensors::deserialize(&weights)
            .unwrap()
            .names()
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        assert_eq!(
            names.iter().any(|n| n == "lm_head.weight"),
            !tied,
            "{case}: {names:?}"
        );
        let reloaded = load_model(&summary.final_adapter, &device).unwrap();
        let trained = fixture_logits(&summary.model, case, &device);
        let diff = max_diff(&trained, &fixture_logits(&reloaded.model, case, &device));
        assert!(
            diff <= 1e-5,
            "{case}: the saved model's logits differ by {diff}"
        );

        // Two steps, then resumed to four from the checkpoint at step 2.
        let (_dir2, mut config2) = setup();
        full_config(&mut config2, case, 2);
        train(&config2, &device, false).unwrap();
        config2.training.max_steps = Some(4);
        let resumed = train(&config2, &device, true).unwrap();
        assert_eq!(resumed.resumed_from, Some(2), "{case}");
        let diff = max_diff(&trained, &fixture_logits(&resumed.model, case, &device));
        assert!(diff <= 1e-6, "{case}: the resumed run ends {diff} away");
    }
}

/// A tied head trains as transformers trains it: one weight, whose gradient is the sum of
/// its uses as the embedding and as the head (here against autodiff of the tied loss), and
/// the head follows the embedding after each step.
#[test]
fn a_tied_head_trains_as_one_weight_with_the_embedding() {
    use peft_models::loss::causal_lm_loss;
    let device = ndarray_device().autodiff();
    let case = "gpt2-base";
    let expected = Expected::load(case);
    let labels = expected.i64("labels");
    let batch = LmBatch {
        input_ids: int_tensor(&expected.i64("input_ids"), &device),
        attention_mask: int_tensor(&expected.i64("attention_mask"), &device),
        labels: HostLabels::new(labels.values.clone(), labels.shape[1]),
        learned_tokens: 0,
        tokens: 0,
        loss_weight: 1.0,
    };
    let loaded = load_model(&case_dir(case).join("base"), &device).unwrap();

    // The reference: the tied loss with the head as the embedding's transpose, by autodiff.
    let lm = loaded.model.clone().unfreeze();
    let embedding = lm.token_embedding().dense().unwrap().val();
    let hidden = lm.hidden_states(batch.input_ids.clone(), Some(&batch.attention_mask), None);
    let logits = hidden.matmul(embedding.clone().transpose().unsqueeze::<3>());
    let grads = causal_lm_loss(logits, batch.labels.to_tensor(&device)).backward();
    let reference = to_vec(embedding.grad(&grads).unwrap());

    let (lm, tied) = peft_train::full::prepare(loaded.model);
    assert!(tied.is_some(), "GPT-2 ties its head");
    let (embedding_id, head_id) = (
        lm.token_embedding().dense().unwrap().id,
        lm.lm_head().base.as_dense().unwrap().weight.id,
    );
    let model = TrainableLm::new(lm, Trained::Full(tied));
    let schedule = WarmupSchedule::new(1e-3, 0, 1, Schedule::Constant, 0);
    let mut learner = Learner::new(model, adamw(0.0).init(), learning_rates(schedule, None));
    let step = step_gradients(&mut learner, [batch], 0.0).unwrap();
    assert!(step.gradients().get::<2>(head_id).is_none(), "folded away");
    let got = to_vec(step.gradients().get::<2>(embedding_id).unwrap());
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_diff(&got, &reference);
    eprintln!("tied gradient: max |diff| {diff:e} of max |g| {scale:e}");
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "tied gradient differs by {diff}"
    );

    step.apply(&mut learner).unwrap();
    let model = learner.model();
    let embedding = to_vec(
        model
            .lm
            .token_embedding()
            .dense()
            .unwrap()
            .val()
            .transpose(),
    );
    let head = to_vec(model.lm.lm_head().base.weight());
    assert_eq!(embedding, head, "the head follows the trained embedding");
}

/// PyTorch's AdamW (`torch.optim.AdamW`, defaults but `lr` and `weight_decay`), first step:
/// `p ← p(1 − lr·wd) − lr · m̂ / (√v̂ + ε)` with `m̂ = g`, `v̂ = g²`.
fn torch_adamw_first_step(p: &[f32], g: &[f32], lr: f64, wd: f64) -> Vec<f32> {
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    p.iter()
        .zip(g)
        .map(|(&p, &g)| {
            let (p, g) = (f64::from(p), f64::from(g));
            let m = (1.0 - beta1) * g;
            let v = (1.0 - beta2) * g * g;
            let m_hat = m / (1.0 - beta1);
            let v_hat = v / (1.0 - beta2);
            (p * (1.0 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)) as f32
        })
        .collect()
}

/// A learner over the llama-lora fixture with PEFT's adapter: AdamW with `weight_decay` at a
/// constant `lr`, LoRA+'s `loraplus` ratio for B when given; and the adapter's tensors.
fn fixture_learner(
    lr: f64,
    weight_decay: f64,
    loraplus: Option<f64>,
) -> (
    Learner<TrainableLm>,
    BTreeMap<String, peft_core::HostTensor>,
) {
    let device = ndarray_device().autodiff();
    let case = "llama-lora";
    let mut loaded = load_model(&case_dir(case).join("base"), &device).unwrap();
    let adapter = case_dir(case).join("adapter");
    let config = load_adapter(&mut loaded.model, "default", &adapter).unwrap();
    let before = adapter_tensors(&loaded.model, "default", None).unwrap();
    let trained = Trained::Adapter {
        name: "default".into(),
        config: Box::new(config),
    };
    let model = TrainableLm::new(loaded.model, trained);
    let schedule = WarmupSchedule::new(lr, 0, 1, Schedule::Constant, 0);
    let rates = learning_rates(schedule, loraplus);
    (
        Learner::new(model, adamw(weight_decay).init(), rates),
        before,
    )
}

#[test]
fn one_optimizer_step_matches_pytorch_adamw_on_peft_gradients() {
    let device = ndarray_device().autodiff();
    let expected = Expected::load("llama-lora");
    let (lr, wd) = (1e-3, 0.01);
    let (mut learner, before) = fixture_learner(lr, wd, None);
    let batch = fixture_batch("llama-lora", &device);
    let norm = optimizer_step(&mut learner, [batch], 0.0)
        .unwrap()
        .grad_norm;
    let after = adapter_tensors(&learner.model().lm, "default", None).unwrap();

    // The norm the loop logs is the global norm of PEFT's gradients.
    let fixture_norm: f64 = before
        .keys()
        .flat_map(|k| expected.f32(&format!("grad.{k}")).values)
        .map(|g| f64::from(g).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm = f64::from(to_vec(norm)[0]);
    assert!(
        (norm - fixture_norm).abs() <= 1e-4 * fixture_norm,
        "{norm} vs {fixture_norm}"
    );

    for (key, p0) in &before {
        let g = expected.f32(&format!("grad.{key}")).values;
        let want = torch_adamw_first_step(&p0.data, &g, lr, wd);
        let got = &after[key].data;
        // Where |g| is far above ε the step is ±lr; where a gradient rounds differently near 0
        // the sign may differ, so compare elementwise with a tolerance of a fraction of lr
        // and require nearly every element to match.
        let close = want
            .iter()
            .zip(got)
            .filter(|(w, g)| (*w - *g).abs() <= 1e-6 + 1e-3 * lr as f32)
            .count();
        assert!(
            close as f64 >= 0.999 * want.len() as f64,
            "{key}: {close} of {} elements match PyTorch's AdamW step",
            want.len()
        );
    }
}

/// An example of `len` tokens whose last `learned` positions carry a label.
fn example(len: usize, learned: usize, first_id: u32) -> Example {
    let ids: Vec<u32> = (0..len as u32).map(|i| (first_id + 7 * i) % 384).collect();
    let labels = ids
        .iter()
        .enumerate()
        .map(|(t, &id)| {
            if t + learned >= len {
                i64::from(id)
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    Example {
        ids,
        labels,
        lines: 1..=1,
    }
}

/// One optimizer step of the llama-lora fixture over `micro_batches`: the loss, the gradient
/// norm and the adapter after the step.
fn step_over(micro_batches: &[Vec<&Example>]) -> (f32, f32, BTreeMap<String, Vec<f32>>) {
    let device = ndarray_device().autodiff();
    let (mut learner, _) = fixture_learner(1e-3, 0.0, None);
    let batches = micro_batches.iter().map(|b| LmBatch::new(b, 0, &device));
    let gradients = step_gradients(&mut learner, batches, 0.0).unwrap();
    let (loss, norm) = (
        to_vec(gradients.loss.clone())[0],
        to_vec(gradients.grad_norm.clone())[0],
    );
    gradients.apply(&mut learner).unwrap();
    let after = adapter_tensors(&learner.model().lm, "default", None).unwrap();
    (
        loss,
        norm,
        after.into_iter().map(|(k, t)| (k, t.data)).collect(),
    )
}

/// Gradient accumulation as transformers' `Trainer` (≥ 4.46) has it: micro-batches of uneven
/// lengths and labelled-token counts give the loss, gradient and update of one batch holding
/// them all (the mean over the step's labelled tokens), not the mean of per-batch means.
#[test]
fn accumulated_micro_batches_of_uneven_lengths_equal_one_batch_of_them_all() {
    let (short, long, tiny) = (example(6, 3, 5), example(14, 11, 40), example(4, 1, 90));
    let (loss_one, norm_one, one) = step_over(&[vec![&short, &long, &tiny]]);
    let (loss_acc, norm_acc, accumulated) = step_over(&[vec![&short], vec![&long, &tiny]]);
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs();
    assert!(close(loss_acc, loss_one), "loss {loss_acc} vs {loss_one}");
    assert!(
        close(norm_acc, norm_one),
        "gradient norm {norm_acc} vs {norm_one}"
    );
    for (key, want) in &one {
        let worst = want
            .iter()
            .zip(&accumulated[key])
            .map(|(w, g)| (w - g).abs())
            .fold(0.0, f32::max);
        // AdamW's first step is about ±lr (1e-3) per element: rounding shows only where a
        // gradient is near epsilon.
        assert!(worst <= 1e-5, "{key}: the updates differ by {worst:e}");
    }
    // The mean of the two micro-batches' means is another loss: what the weighting fixes.
    let (loss_short, _, _) = step_over(&[vec![&short]]);
    let (loss_rest, _, _) = step_over(&[vec![&long, &tiny]]);
    let mean_of_means = (loss_short + loss_rest) / 2.0;
    assert!(
        !close(mean_of_means, loss_one),
        "{mean_of_means} vs {loss_one}"
    );
}

/// LoRA+ (`loraplus_lr_ratio` 16): one AdamW step (about ±lr per element on its first step)
/// moves the B matrices 16 times as far as the A matrices, which move by the learning rate.
#[test]
fn loraplus_steps_b_at_ratio_times_the_learning_rate_of_a() {
    let device = ndarray_device().autodiff();
    let (lr, ratio) = (1e-3, 16.0);
    let (mut learner, before) = fixture_learner(lr, 0.0, Some(ratio));
    let batch = fixture_batch("llama-lora", &device);
    optimizer_step(&mut learner, [batch], 0.0).unwrap();
    let after = adapter_tensors(&learner.model().lm, "default", None).unwrap();
    for (key, p0) in &before {
        let mut moves: Vec<f64> = p0
            .data
            .iter()
            .zip(&after[key].data)
            .map(|(a, b)| f64::from((a - b).abs()))
            .collect();
        moves.sort_by(f64::total_cmp);
        let median = moves[moves.len() / 2];
        let want = if key.contains("lora_B") {
            lr * ratio
        } else {
            lr
        };
        assert!(
            (median - want).abs() <= 0.02 * want,
            "{key}: median step {median:e}, expected {want:e}"
        );
    }
}

/// Trained tensors of the shapes adapters have: a projection with a bias, a bottleneck
/// adapter's layer norm, a vector.
#[derive(Module, Debug)]
struct DecayProbe {
    down: burn::nn::Linear,
    norm: peft_core::method::bottleneck::AdapterNorm,
    scale: Param<Tensor<1>>,
}

/// Weight decay as transformers' `Trainer` applies it: every trained tensor but biases and
/// normalisation weights loses `lr · wd · p` on top of the AdamW update.
#[test]
fn weight_decay_skips_biases_and_norm_weights() {
    let device = ndarray_device().autodiff();
    let tensor = |values: &[f32]| {
        Param::from_tensor(Tensor::<1>::from_floats(values, &device).require_grad())
    };
    let probe = DecayProbe {
        down: burn::nn::LinearConfig::new(3, 2).init(&device),
        norm: peft_core::method::bottleneck::AdapterNorm {
            weight: tensor(&[1.0, 0.5]),
            bias: tensor(&[0.25, -0.5]),
        },
        scale: tensor(&[2.0, -1.0, 0.5]),
    };
    let (lr, wd) = (0.1, 0.5);
    let step = |weight_decay: f64| {
        let probe = probe.clone();
        let loss = probe.down.weight.val().sum()
            + probe.down.bias.as_ref().unwrap().val().sum()
            + probe.norm.weight.val().sum()
            + probe.norm.bias.val().sum()
            + probe.scale.val().sum();
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &probe);
        let stepped = peft_train::optimizer(weight_decay).step(lr, probe, grads);
        [
            ("down.weight", stepped.down.weight.val().reshape([-1])),
            ("down.bias", stepped.down.bias.unwrap().val()),
            ("norm.weight", stepped.norm.weight.val()),
            ("norm.bias", stepped.norm.bias.val()),
            ("scale", stepped.scale.val()),
        ]
        .map(|(name, t)| (name, to_vec(t)))
    };
    let before = step(0.0);
    let decayed = step(wd);
    let initial: BTreeMap<&str, Vec<f32>> = [
        ("down.weight", to_vec(probe.down.weight.val().reshape([-1]))),
        ("scale", to_vec(probe.scale.val())),
    ]
    .into();
    for ((name, plain), (_, with_decay)) in before.iter().zip(&decayed) {
        match initial.get(name) {
            Some(p0) => {
                for ((a, b), p) in plain.iter().zip(with_decay).zip(p0) {
                    let want = (lr * wd) as f32 * p;
                    assert!(
                        (a - b - want).abs() <= 1e-6,
                        "{name}: decay {} vs {want}",
                        a - b
                    );
                }
            }
            None => assert_eq!(plain, with_decay, "{name} must not decay"),
        }
    }
}

/// `model.adapter` (`train --adapter`) continues a saved adapter, here PEFT's LoRA on the tiny
/// LLaMA: the first step's loss is that adapter's loss on the same batch (the whole dataset),
/// and the adapter moves from there.
#[test]
fn training_continues_a_saved_adapter_from_its_weights() {
    let (_dir, mut config) = setup();
    let adapter = case_dir("llama-lora").join("adapter");
    config.method = MethodSection::default();
    config.model.adapter = Some(adapter.clone());
    config.training.max_steps = Some(2);
    config.training.log_every = 1;
    let out = config.training.out.clone();
    train(&config, &ndarray_device(), false).expect("training continues the adapter");

    let device = ndarray_device();
    let mut loaded = load_model(&case_dir("llama-base").join("base"), &device).unwrap();
    load_adapter(&mut loaded.model, "default", &adapter).unwrap();
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let tokenization = peft_train::data::Tokenization {
        tokenizer,
        eos_id: peft_train::data::eos_id(&loaded).unwrap(),
        seq_len: config.data.seq_len,
        vocab_size: 384,
    };
    let data = config.data.train.as_deref().unwrap();
    let records = peft_train::data::read_jsonl(data).unwrap();
    let examples = tokenization.examples(data, &records).unwrap();
    let all: Vec<&Example> = examples.iter().collect();
    let batch = LmBatch::new(&all, tokenization.eos_id, &device);
    let want = to_vec(peft_models::loss::lm_loss(
        &loaded.model,
        batch.input_ids.clone(),
        Some(&batch.attention_mask),
        &batch.labels,
    ))[0];
    let losses = logged_losses(&out);
    assert!(
        (losses[0] - f64::from(want)).abs() <= 1e-4 * f64::from(want),
        "first step's loss {} vs the saved adapter's {want}",
        losses[0]
    );
    assert!(losses[1] < losses[0], "{losses:?}");
    // The final adapter has the saved one's tensors (names and shapes).
    let layout = |dir: &Path| -> BTreeMap<String, Vec<usize>> {
        let model = load_model(&case_dir("llama-base").join("base"), &device).unwrap();
        let mut model = model.model;
        load_adapter(&mut model, "default", dir).unwrap();
        let tensors = adapter_tensors(&model, "default", None).unwrap();
        tensors.into_iter().map(|(k, t)| (k, t.shape)).collect()
    };
    assert_eq!(layout(&out.join("final")), layout(&adapter));
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = TrainConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen > 0, "no configuration in {}", dir.display());
}

/// A copy of the fixture's tokenizer with `template` as its chat template.
fn tokenizer_with_template(dir: &Path, template: &str) -> peft_models::TextTokenizer {
    let base = case_dir("llama-base").join("base");
    std::fs::copy(base.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("tokenizer_config.json")).unwrap())
            .unwrap();
    config["chat_template"] = template.into();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    peft_models::TextTokenizer::from_folder(dir).unwrap()
}

#[test]
fn chat_examples_learn_the_assistant_turns_only() {
    use peft_models::chat::ChatMessage;
    use peft_train::data::{Record, Tokenization};
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = tokenizer_with_template(
        dir.path(),
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}\
         {% if add_generation_prompt %}<assistant>{% endif %}",
    );
    let eos = tokenizer.token_to_id("<|endoftext|>").unwrap();
    let tokenization = Tokenization {
        tokenizer: &tokenizer,
        eos_id: eos,
        seq_len: 512,
        vocab_size: usize::MAX,
    };
    let record = Record::Messages(vec![
        ChatMessage::new("user", "hi"),
        ChatMessage::new("assistant", "hello there"),
        ChatMessage::new("user", "again"),
        ChatMessage::new("assistant", "bye"),
    ]);
    let example = tokenization.example(&record, 1).unwrap();
    let pick = |learned: bool| -> Vec<u32> {
        example
            .ids
            .iter()
            .zip(&example.labels)
            .filter(|(_, &l)| (l != peft_models::loss::IGNORE_INDEX) == learned)
            .map(|(&id, _)| id)
            .collect()
    };
    assert_eq!(
        tokenizer.decode(&pick(true), true).unwrap(),
        "hello there\nbye\n"
    );
    assert_eq!(
        tokenizer.decode(&pick(false), true).unwrap(),
        "<user>hi\n<assistant><user>again\n<assistant>"
    );
    assert_eq!(
        example.ids.last(),
        Some(&eos),
        "end of sequence appended and learned"
    );
    assert_eq!(*example.labels.last().unwrap(), i64::from(eos));

    // A template that rewrites earlier turns cannot be split into prompt and reply.
    let shifting = tokenizer_with_template(
        dir.path(),
        "{{ messages|length }}{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    let err = Tokenization {
        tokenizer: &shifting,
        eos_id: eos,
        seq_len: 512,
        vocab_size: usize::MAX,
    }
    .example(&record, 1)
    .unwrap_err();
    assert!(err.to_string().contains("earlier ones"), "{err}");

    // A tokenizer with more tokens than the model's embedding is refused, naming the id.
    let err = Tokenization {
        tokenizer: &tokenizer,
        eos_id: eos,
        seq_len: 512,
        vocab_size: eos as usize,
    }
    .example(&record, 1)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("token id") && err.contains(&format!("vocabulary of {eos} ids")),
        "{err}"
    );
}
