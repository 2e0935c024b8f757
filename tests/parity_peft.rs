//! Adapters saved by Hugging Face PEFT (LoRA on GPT-2, LLaMA, Llama 3.1 RoPE, Qwen2, Qwen3,
//! Mistral, Gemma and Phi-3; IA3, prefix tuning, VeRA, AdaLoRA), against
//! PEFT's own outputs: logits, loss, gradients, greedy decoding, parameter counts, merge,
//! disable, save/load round trips; on ndarray, flex and wgpu.

mod common;

use std::collections::BTreeMap;

use burn::tensor::Device;
use common::*;
use peft_core::adapter_folder::{adapter_tensors, load_adapter, save_adapter};
use peft_core::{disable_adapters, merge_adapter, set_adapter, unmerge_adapter, ParameterReport};
use peft_models::generate::{generate, SamplingConfig};
use peft_models::loss::causal_lm_loss;
use peft_models::{load_model, LoadedModel};
use safetensors::SafeTensors;

const CASES: [&str; 12] = [
    "gpt2-lora",
    "llama-lora",
    "llama-ia3",
    "llama-prefix",
    "qwen2-lora",
    "qwen3-lora",
    "mistral-lora",
    "gemma-lora",
    "phi3-lora",
    "llama31-rope-lora",
    "llama-vera",
    "llama-adalora",
];

/// Prompt learning adds virtual tokens; it cannot be merged into weights (nor in PEFT).
fn merges(case: &str) -> bool {
    !case.contains("prefix")
}

fn load_peft(case: &str, device: &Device) -> LoadedModel {
    let mut loaded = load_model(&case_dir(case).join("base"), device).expect("fixture base loads");
    load_adapter(
        &mut loaded.model,
        "default",
        &case_dir(case).join("adapter"),
    )
    .expect("fixture adapter loads");
    loaded
}

fn logits_error(
    loaded: &LoadedModel,
    expected: &Expected,
    reference: &str,
    device: &Device,
) -> f32 {
    let ids = expected.i64("input_ids");
    let mask = expected.i64("attention_mask");
    let want = expected.f32(reference);
    let logits = loaded.model.forward(
        int_tensor(&ids, device),
        Some(&int_tensor(&mask, device)),
        None,
    );
    max_abs_diff_masked(&to_vec(logits), &want.values, &mask.values, want.shape[2])
}

fn check_logits_merge_disable(case: &str, device: &Device) {
    let expected = Expected::load(case);
    let mut loaded = load_peft(case, device);
    let err = logits_error(&loaded, &expected, "logits_peft", device);
    eprintln!("{case} on {device:?}: adapter logits max abs error {err:e}");
    assert!(
        err <= LOGITS_TOLERANCE,
        "{case}: adapter logits error {err:e}"
    );
    if merges(case) {
        merge_adapter(&mut loaded.model, true).unwrap();
    } else {
        let refusal = merge_adapter(&mut loaded.model, true).unwrap_err();
        assert!(
            refusal.to_string().contains("cannot be merged"),
            "{refusal}"
        );
    }
    let err = logits_error(&loaded, &expected, "logits_peft", device);
    assert!(
        err <= LOGITS_TOLERANCE,
        "{case}: merged logits error {err:e}"
    );
    // Disabling a merged adapter unmerges it, as PEFT does.
    disable_adapters(&mut loaded.model);
    let err = logits_error(&loaded, &expected, "logits_base", device);
    assert!(
        err <= LOGITS_TOLERANCE,
        "{case}: disabled adapter should give logits_base; error {err:e}"
    );
    set_adapter(&mut loaded.model, "default").unwrap();
    let err = logits_error(&loaded, &expected, "logits_peft", device);
    assert!(
        err <= LOGITS_TOLERANCE,
        "{case}: re-enabled adapter logits error {err:e}"
    );
    if merges(case) {
        merge_adapter(&mut loaded.model, true).unwrap();
    }
    unmerge_adapter(&mut loaded.model);
    let err = logits_error(&loaded, &expected, "logits_peft", device);
    assert!(
        err <= LOGITS_TOLERANCE,
        "{case}: unmerged adapter logits error {err:e}"
    );
}

fn check_loss_and_grads(case: &str, device: &Device) {
    let device = device.clone().autodiff();
    let expected = Expected::load(case);
    let loaded = load_peft(case, &device);
    let ids = expected.i64("input_ids");
    let mask = expected.i64("attention_mask");
    let labels = expected.i64("labels");
    let logits = loaded.model.forward(
        int_tensor(&ids, &device),
        Some(&int_tensor(&mask, &device)),
        None,
    );
    let loss = causal_lm_loss(logits, int_tensor(&labels, &device));
    // PEFT's training loss: AdaLoRA adds its orthogonality regulariser.
    let config = peft_core::adapter_folder::load_config(&case_dir(case).join("adapter")).unwrap();
    let loss = match peft_core::adapters::extra_loss(&loaded.model, "default", &config) {
        Some(term) => loss + term,
        None => loss,
    };
    let grads = loss.backward();
    let loss = to_vec(loss.detach())[0];
    let want = expected.f32("loss_peft").values[0];
    let rel = (loss - want).abs() / want.abs();
    eprintln!("{case} on {device:?}: loss relative error {rel:e}");
    assert!(
        rel <= LOSS_TOLERANCE,
        "{case}: loss {loss} vs {want} (relative {rel:e})"
    );
    let ours = adapter_tensors(&loaded.model, "default", Some(&grads)).unwrap();
    // Every trained tensor of the file has a reference gradient (VeRA's frozen shared
    // projections have none).
    let keys: Vec<String> = expected
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix("grad.").map(String::from))
        .collect();
    assert_eq!(
        ours.keys().cloned().collect::<Vec<_>>(),
        sorted(keys),
        "{case}: gradient keys"
    );
    for (key, grad) in &ours {
        let want = expected.f32(&format!("grad.{key}"));
        assert_eq!(grad.shape, want.shape, "{case}: {key}");
        let err = relative_l2(&grad.data, &want.values);
        eprintln!("{case} on {device:?}: grad {key} relative L2 {err:e}");
        assert!(
            err <= GRAD_TOLERANCE,
            "{case}: grad of {key} relative L2 {err:e}"
        );
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn check_greedy(case: &str, device: &Device) {
    let expected = Expected::load(case);
    let loaded = load_peft(case, device);
    let prompt: Vec<u32> = expected.i64("input_ids").values[..8]
        .iter()
        .map(|&t| t as u32)
        .collect();
    let want: Vec<u32> = expected
        .i64("greedy_peft")
        .values
        .iter()
        .map(|&t| t as u32)
        .collect();
    let config = SamplingConfig {
        max_new_tokens: want.len(),
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
        eos_token_ids: loaded.eos_token_ids.clone(),
    };
    if want.is_empty() {
        check_cached_greedy_is_argmax(case, &loaded, &prompt, &config, device);
        return;
    }
    let got = generate(&loaded.model, &prompt, &config, device, |_| Ok(())).unwrap();
    assert_eq!(got, want, "{case}: greedy continuation with the adapter");
}

/// Without a reference continuation (prefix tuning), greedy decoding with the key/value cache
/// must pick, at every step, the argmax of a full forward pass without a cache.
fn check_cached_greedy_is_argmax(
    case: &str,
    loaded: &LoadedModel,
    prompt: &[u32],
    config: &SamplingConfig,
    device: &Device,
) {
    let config = SamplingConfig {
        max_new_tokens: 8,
        eos_token_ids: vec![],
        ..config.clone()
    };
    let got = generate(&loaded.model, prompt, &config, device, |_| Ok(())).unwrap();
    assert_eq!(got.len(), 8);
    let all: Vec<i64> = prompt.iter().chain(&got).map(|&t| t as i64).collect();
    let ids = Array {
        shape: vec![1, all.len()],
        values: all.clone(),
    };
    let logits = loaded.model.forward(int_tensor(&ids, device), None, None);
    let vocab = logits.dims()[2];
    let values = to_vec(logits);
    for (step, &token) in got.iter().enumerate() {
        let position = prompt.len() - 1 + step;
        let row = &values[position * vocab..(position + 1) * vocab];
        let argmax = (0..vocab)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(token as usize, argmax, "{case}: cached step {step}");
    }
}

/// Saving writes PEFT's keys, shapes and dtypes, and loading it back is bit-exact.
fn check_round_trip(case: &str, device: &Device) {
    let loaded = load_peft(case, device);
    let dir = tempfile::tempdir().unwrap();
    let config = peft_core::adapter_folder::load_config(&case_dir(case).join("adapter")).unwrap();
    save_adapter(&loaded.model, "default", &config, dir.path()).unwrap();

    let theirs = std::fs::read(case_dir(case).join("adapter/adapter_model.safetensors")).unwrap();
    let ours = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let (theirs, ours) = (
        SafeTensors::deserialize(&theirs).unwrap(),
        SafeTensors::deserialize(&ours).unwrap(),
    );
    let layout = |f: &SafeTensors| -> BTreeMap<String, (String, Vec<usize>)> {
        f.tensors()
            .into_iter()
            .map(|(k, v)| (k, (format!("{:?}", v.dtype()), v.shape().to_vec())))
            .collect()
    };
    assert_eq!(
        layout(&ours),
        layout(&theirs),
        "{case}: saved keys, dtypes and shapes"
    );
    for (key, view) in theirs.tensors() {
        assert_eq!(
            ours.tensor(&key).unwrap().data(),
            view.data(),
            "{case}: {key} not bit-exact"
        );
    }
    let saved_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let fixture_config = case_json(case)["adapter_config"].clone();
    for field in [
        "peft_type",
        "r",
        "lora_alpha",
        "target_modules",
        "fan_in_fan_out",
        "use_dora",
        "use_rslora",
        "feedforward_modules",
        "init_ia3_weights",
        "num_virtual_tokens",
        "token_dim",
        "num_attention_heads",
        "num_layers",
        "num_transformer_submodules",
        "encoder_hidden_size",
        "prefix_projection",
    ] {
        assert_eq!(
            saved_config[field], fixture_config[field],
            "{case}: adapter_config.json field {field}"
        );
    }

    let mut reloaded = load_model(&case_dir(case).join("base"), device).unwrap();
    load_adapter(&mut reloaded.model, "default", dir.path()).unwrap();
    let before = adapter_tensors(&loaded.model, "default", None).unwrap();
    let after = adapter_tensors(&reloaded.model, "default", None).unwrap();
    assert_eq!(before, after, "{case}: save then load is not bit-exact");
}

fn check_counts(case: &str, device: &Device) {
    let loaded = load_peft(case, device);
    let report = ParameterReport::of(&loaded.model);
    let json = case_json(case);
    assert_eq!(
        report.trainable as u64,
        json["trainable_params"].as_u64().unwrap(),
        "{case}"
    );
    assert_eq!(
        report.total as u64,
        json["all_params"].as_u64().unwrap(),
        "{case}"
    );
}

/// Every mergeable adapter merged into its model's weights and written as a Hugging Face
/// folder reloads (same `model_type`) to the adapter's logits.
#[test]
fn merged_folders_reload_to_the_adapter_logits() {
    let device = Device::flex();
    for case in CASES.into_iter().filter(|c| merges(c)) {
        let expected = Expected::load(case);
        let mut loaded = load_peft(case, &device);
        peft_core::merge_and_unload(&mut loaded.model, true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        peft_models::save_hf_folder(&loaded, dir.path()).unwrap();
        let reloaded = load_model(dir.path(), &device).unwrap();
        assert_eq!(reloaded.config.model_type(), loaded.config.model_type());
        let err = logits_error(&reloaded, &expected, "logits_peft", &device);
        assert!(
            err <= LOGITS_TOLERANCE,
            "{case}: merged folder's logits error {err:e}"
        );
    }
}

/// A VeRA file saved with `save_projection=False` holds no projections (PEFT redraws them from
/// PyTorch's generator): it is refused saying so, and the model is left as it was.
#[test]
fn a_vera_file_without_its_projections_is_refused_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = case_dir("llama-vera").join("adapter");
    std::fs::copy(
        adapter.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    config["save_projection"] = false.into();
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    let device = ndarray_device();
    let mut loaded = load_model(&case_dir("llama-vera").join("base"), &device).unwrap();
    let err = load_adapter(&mut loaded.model, "default", dir.path())
        .unwrap_err()
        .to_string();
    for needle in [
        "save_projection",
        "projection_prng_key",
        "save_projection=True",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(peft_core::adapters::adapter_names(&loaded.model).is_empty());
}

/// PEFT's mixed batches (`adapter_names`): two LoRA adapters loaded at once, row 0 through
/// `alpha`, row 1 through the base, row 2 through `beta` in one forward pass give PEFT's
/// `logits_mixed` row by row (and each adapter alone its own logits) on every backend;
/// names not loaded and lists of the wrong length change nothing.
#[test]
fn mixed_adapter_batches_match_peft_row_by_row() {
    let case = "llama-mixed-batch";
    let expected = Expected::load(case);
    for device in [ndarray_device(), Device::flex(), wgpu_device()] {
        let mut loaded = load_model(&case_dir(case).join("base"), &device).unwrap();
        for name in ["alpha", "beta"] {
            let dir = case_dir(case).join("adapters").join(name);
            load_adapter(&mut loaded.model, name, &dir).unwrap();
        }
        set_adapter(&mut loaded.model, "beta").unwrap();
        let err = logits_error(&loaded, &expected, "logits_beta", &device);
        assert!(err <= LOGITS_TOLERANCE, "{device:?}: beta alone {err:e}");
        let unknown =
            peft_core::set_adapter_per_row(&mut loaded.model, &["alpha", "gamma", "beta"]);
        assert!(unknown.unwrap_err().to_string().contains("gamma"));
        peft_core::set_adapter_per_row(&mut loaded.model, &["alpha", peft_core::BASE_ROW, "beta"])
            .unwrap();
        let err = logits_error(&loaded, &expected, "logits_mixed", &device);
        assert!(err <= LOGITS_TOLERANCE, "{device:?}: mixed batch {err:e}");
        peft_core::clear_adapter_per_row(&mut loaded.model);
        let err = logits_error(&loaded, &expected, "logits_beta", &device);
        assert!(err <= LOGITS_TOLERANCE, "{device:?}: beta again {err:e}");
    }

    // A merged adapter, and a method PEFT does not mix, are refused by name.
    let device = ndarray_device();
    let mut loaded = load_model(&case_dir(case).join("base"), &device).unwrap();
    let dir = case_dir(case).join("adapters/alpha");
    load_adapter(&mut loaded.model, "alpha", &dir).unwrap();
    merge_adapter(&mut loaded.model, true).unwrap();
    let err = peft_core::set_adapter_per_row(&mut loaded.model, &["alpha"]).unwrap_err();
    assert!(err.to_string().contains("unmerge"), "{err}");
    unmerge_adapter(&mut loaded.model);
    let bottleneck = peft_core::AdapterConfig::Bottleneck(Default::default());
    peft_core::attach_adapter(&mut loaded.model, "adapter", &bottleneck).unwrap();
    let err = peft_core::set_adapter_per_row(&mut loaded.model, &["alpha", "adapter"]).unwrap_err();
    assert!(err.to_string().contains("\"adapter\""), "{err}");
}

/// The fixture's base folder with `config.json` rewritten by `edit`.
fn base_with_config(case: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = case_dir(case).join("base");
    std::fs::copy(
        base.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// Moves `rope_parameters` to the layout checkpoints saved before transformers 5 carry: a
/// top-level `rope_theta` and, for scaled RoPE, a `rope_scaling` section whose type is under
/// `keys` (`type`, `rope_type` or both).
fn older_rope_spelling(config: &mut serde_json::Value, keys: &[&str]) {
    let mut section = config["rope_parameters"].take();
    let section = section.as_object_mut().unwrap();
    config["rope_theta"] = section.remove("rope_theta").unwrap();
    let rope_type = section.remove("rope_type").unwrap();
    config.as_object_mut().unwrap().remove("rope_parameters");
    if let Some(factor) = section.remove("partial_rotary_factor") {
        config["partial_rotary_factor"] = factor;
    }
    if rope_type != "default" {
        for key in keys {
            section.insert(key.to_string(), rope_type.clone());
        }
        config["rope_scaling"] = serde_json::Value::Object(section.clone());
    }
}

/// Checkpoints written before transformers 5 (`rope_theta` + `rope_scaling` with `type` or
/// `rope_type`, Llama 3's context at the top level as Phi-3 keeps it, Gemma's legacy
/// `hidden_act: "gelu"` without `hidden_activation`) give the same logits as the fixtures.
#[test]
fn older_config_spellings_give_the_same_logits() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "llama31-rope-lora",
            Box::new(|c| older_rope_spelling(c, &["type"])),
        ),
        (
            "llama31-rope-lora",
            Box::new(|c| older_rope_spelling(c, &["rope_type", "type"])),
        ),
        (
            "llama31-rope-lora",
            Box::new(|c| {
                older_rope_spelling(c, &["rope_type"]);
                let context = c["rope_scaling"]
                    .as_object_mut()
                    .unwrap()
                    .remove("original_max_position_embeddings")
                    .unwrap();
                c["original_max_position_embeddings"] = context;
            }),
        ),
        ("qwen2-lora", Box::new(|c| older_rope_spelling(c, &[]))),
        ("qwen3-lora", Box::new(|c| older_rope_spelling(c, &[]))),
        ("mistral-lora", Box::new(|c| older_rope_spelling(c, &[]))),
        ("phi3-lora", Box::new(|c| older_rope_spelling(c, &[]))),
        (
            "gemma-lora",
            Box::new(|c| {
                older_rope_spelling(c, &[]);
                c["hidden_act"] = "gelu".into();
                c.as_object_mut().unwrap().remove("hidden_activation");
            }),
        ),
    ];
    let device = ndarray_device();
    for (case, edit) in cases {
        let dir = base_with_config(case, edit);
        let mut loaded = load_model(dir.path(), &device)
            .unwrap_or_else(|e| panic!("{case} in the older spelling: {e}"));
        load_adapter(
            &mut loaded.model,
            "default",
            &case_dir(case).join("adapter"),
        )
        .unwrap();
        let err = logits_error(&loaded, &Expected::load(case), "logits_peft", &device);
        assert!(
            err <= LOGITS_TOLERANCE,
            "{case} in the older spelling: logits error {err:e}"
        );
    }
}

/// Phi-3 applies its `sliding_window` as transformers' Phi-3 does (with Mistral's mask, which
/// the mistral fixture checks): a window as long as the input changes nothing, a shorter one
/// changes the logits, and cached greedy decoding agrees with full passes under it.
#[test]
fn phi3_applies_its_sliding_window() {
    let device = ndarray_device();
    let expected = Expected::load("phi3-lora");
    let windowed = |window: usize| {
        let dir = base_with_config("phi3-lora", |c| c["sliding_window"] = window.into());
        let loaded = load_model(dir.path(), &device).unwrap();
        assert_eq!(
            loaded
                .config
                .describe()
                .iter()
                .find(|(k, _)| *k == "sliding window")
                .map(|(_, v)| v.clone()),
            Some(window.to_string())
        );
        loaded
    };
    let err = logits_error(&windowed(16), &expected, "logits_base", &device);
    assert!(
        err <= LOGITS_TOLERANCE,
        "a window of the whole input: {err:e}"
    );
    let short = windowed(4);
    let err = logits_error(&short, &expected, "logits_base", &device);
    assert!(
        err > 1e-2,
        "a window of 4 over 16 positions changes the logits ({err:e})"
    );
    let prompt: Vec<u32> = expected.i64("input_ids").values[..8]
        .iter()
        .map(|&t| t as u32)
        .collect();
    let config = SamplingConfig {
        max_new_tokens: 8,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
        eos_token_ids: vec![],
    };
    check_cached_greedy_is_argmax(
        "phi3-lora with a window of 4",
        &short,
        &prompt,
        &config,
        &device,
    );
}

macro_rules! backend_tests {
    ($backend:ident, $device:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn logits_merge_and_disable_match_peft() {
                CASES
                    .iter()
                    .for_each(|c| check_logits_merge_disable(c, &$device));
            }

            #[test]
            fn loss_and_gradients_match_peft() {
                CASES.iter().for_each(|c| check_loss_and_grads(c, &$device));
            }

            #[test]
            fn greedy_matches_peft() {
                CASES.iter().for_each(|c| check_greedy(c, &$device));
            }

            #[test]
            fn save_load_round_trip_is_bit_exact_in_peft_layout() {
                CASES.iter().for_each(|c| check_round_trip(c, &$device));
            }

            #[test]
            fn parameter_counts_match_peft() {
                CASES.iter().for_each(|c| check_counts(c, &$device));
            }
        }
    };
}

backend_tests!(ndarray, ndarray_device());
backend_tests!(flex, Device::flex());
backend_tests!(wgpu, wgpu_device());
