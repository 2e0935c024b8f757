//! The methods the PEFT fixtures do not cover, each on GPT-2 and LLaMA: prompt tuning (the
//! logits of the base model run on the concatenated embeddings, text init, cached generation,
//! round trip), bottleneck adapters (identity at init, gradients against finite differences,
//! round trip, Houlsby vs Pfeiffer placement, no merge) and IA3 on GPT-2's biased Conv1D
//! projections (merge and unmerge).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Int, Tensor};
use common::*;
use peft_core::adapter_folder::{adapter_tensors, load_adapter, save_adapter};
use peft_core::method::bottleneck::{BottleneckConfig, BottleneckVariant, NonLinearity};
use peft_core::method::ia3::Ia3Config;
use peft_core::method::prompt::{PromptInit, PromptTuningConfig};
use peft_core::HostTensor;
use peft_core::{
    attach_adapter, disable_adapters, merge_adapter, set_adapter, unmerge_adapter, Adapter,
    AdapterConfig, ProjectionHost,
};
use peft_models::generate::{generate, SamplingConfig};
use peft_models::loss::causal_lm_loss;
use peft_models::{load_model, LoadedModel};

const BASES: [&str; 2] = ["gpt2-base", "llama-base"];

fn base(case: &str, device: &Device) -> LoadedModel {
    load_model(&case_dir(case).join("base"), device).unwrap()
}

/// Attaches `config` as `default` and returns the config as attached (defaults filled in),
/// which is what belongs in the saved file.
fn attach(loaded: &mut LoadedModel, config: &AdapterConfig) -> AdapterConfig {
    attach_adapter(&mut loaded.model, "default", config)
        .unwrap()
        .config
}

/// The fixture's input ids and padding mask.
fn inputs(case: &str, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let expected = Expected::load(case);
    (
        int_tensor(&expected.i64("input_ids"), device),
        int_tensor(&expected.i64("attention_mask"), device),
    )
}

fn logits(loaded: &LoadedModel, case: &str, device: &Device) -> Vec<f32> {
    let (ids, mask) = inputs(case, device);
    to_vec(loaded.model.forward(ids, Some(&mask), None))
}

/// Largest difference at the positions of real tokens (`virtual_tokens` leading positions
/// always count); what a model computes at padding is unspecified.
fn max_diff(a: &[f32], b: &[f32], case: &str, virtual_tokens: usize, vocab: usize) -> f32 {
    let mask = Expected::load(case).i64("attention_mask");
    let seq = mask.shape[1];
    let mut widened = Vec::new();
    for row in mask.values.chunks(seq) {
        widened.extend(std::iter::repeat_n(1, virtual_tokens));
        widened.extend_from_slice(row);
    }
    max_abs_diff_masked(a, b, &widened, vocab)
}

/// Saves adapter `default` with `config`, loads it onto a fresh base; returns the reloaded
/// model and the folder.
fn save_and_reload(
    loaded: &LoadedModel,
    config: &AdapterConfig,
    case: &str,
    device: &Device,
) -> (LoadedModel, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&loaded.model, "default", config, dir.path()).unwrap();
    let mut reloaded = base(case, device);
    load_adapter(&mut reloaded.model, "default", dir.path()).unwrap();
    let before = adapter_tensors(&loaded.model, "default", None).unwrap();
    let after = adapter_tensors(&reloaded.model, "default", None).unwrap();
    assert_eq!(before, after, "{case}: save then load is not bit-exact");
    (reloaded, dir)
}

fn saved_shapes(dir: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec()))
        .collect()
}

fn saved_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
        .unwrap()
}

#[test]
fn prompt_tuning_is_the_base_model_on_prompt_then_input_embeddings() {
    let device = Device::flex();
    for case in BASES {
        let mut loaded = base(case, &device);
        let config = attach(
            &mut loaded,
            &AdapterConfig::PromptTuning(PromptTuningConfig::new(5)),
        );
        let geometry = loaded.model.geometry();
        let (ids, mask) = inputs(case, &device);
        let with_prompt = loaded.model.forward(ids.clone(), Some(&mask), None);
        let [batch, seq, vocab] = with_prompt.dims();
        assert_eq!(
            [batch, seq],
            [2, 21],
            "{case}: logits for 5 virtual tokens come first"
        );

        let prompt = match loaded.model.model_adapters().active() {
            Some(adapter @ peft_core::ModelAdapter::PromptTuning(_)) => {
                adapter.prompt(batch).unwrap()
            }
            other => panic!("{case}: prompt tuning not active: {other:?}"),
        };
        disable_adapters(&mut loaded.model);
        let embeddings = Tensor::cat(vec![prompt, loaded.model.embed(ids.clone())], 1);
        let ones = Tensor::<2, Int>::ones([batch, 5], &device);
        let wide_mask = Tensor::cat(vec![ones, mask.clone()], 1);
        let reference = loaded
            .model
            .forward_embeddings(embeddings, Some(&wide_mask), None);
        let err = max_diff(&to_vec(with_prompt), &to_vec(reference), case, 5, vocab);
        assert!(
            err <= 1e-5,
            "{case}: prompt tuning vs concatenated embeddings {err:e}"
        );

        set_adapter(&mut loaded.model, "default").unwrap();
        let (reloaded, dir) = save_and_reload(&loaded, &config, case, &device);
        assert_eq!(
            saved_shapes(dir.path()),
            BTreeMap::from([(
                "prompt_embeddings".to_string(),
                vec![5, geometry.hidden_size]
            )]),
            "{case}: PEFT's key and shape"
        );
        let json = saved_config(dir.path());
        assert_eq!(json["peft_type"], "PROMPT_TUNING");
        assert_eq!(json["token_dim"], geometry.hidden_size);
        assert_eq!(json["num_layers"], geometry.num_layers);
        assert_eq!(
            logits(&reloaded, case, &device),
            logits(&loaded, case, &device),
            "{case}: reloaded prompt gives other logits"
        );
        let refusal = merge_adapter(&mut loaded.model, true).unwrap_err();
        assert!(
            refusal.to_string().contains("cannot be merged"),
            "{refusal}"
        );
    }
}

#[test]
fn prompt_tuning_text_init_repeats_the_texts_token_embeddings() {
    let device = Device::flex();
    let mut loaded = base("llama-base", &device);
    let mut config = PromptTuningConfig::new(5);
    config.prompt_tuning_init = PromptInit::Text;
    config.prompt_tuning_init_text = Some("hi".into());
    config.init_token_ids = Some(vec![7, 9]);
    attach(&mut loaded, &AdapterConfig::PromptTuning(config));
    let start =
        adapter_tensors(&loaded.model, "default", None).unwrap()["prompt_embeddings"].clone();
    let expected = HostTensor::read(loaded.model.embed_ids(&[7, 9, 7, 9, 7])).unwrap();
    assert_eq!(start, expected);

    // Without token ids the text cannot be used: an error naming the field, nothing attached.
    let mut fresh = base("llama-base", &device);
    let mut untokenized = PromptTuningConfig::new(5);
    untokenized.prompt_tuning_init = PromptInit::Text;
    untokenized.prompt_tuning_init_text = Some("hi".into());
    let err = attach_adapter(
        &mut fresh.model,
        "default",
        &AdapterConfig::PromptTuning(untokenized),
    )
    .unwrap_err();
    assert!(err.to_string().contains("prompt_tuning_init_text"), "{err}");
    assert!(peft_core::adapter_names(&fresh.model).is_empty());
}

#[test]
fn generation_with_virtual_tokens_uses_the_cache_correctly() {
    // Greedy decoding with the cache must pick the argmax of a full uncached pass at each step.
    let device = Device::flex();
    for case in BASES {
        let mut loaded = base(case, &device);
        attach(
            &mut loaded,
            &AdapterConfig::PromptTuning(PromptTuningConfig::new(3)),
        );
        let prompt = [5u32, 17, 42, 8];
        let config = SamplingConfig {
            max_new_tokens: 6,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            eos_token_ids: vec![],
        };
        let got = generate(&loaded.model, &prompt, &config, &device, |_| Ok(())).unwrap();
        let all: Vec<i64> = prompt.iter().chain(&got).map(|&t| t as i64).collect();
        let ids = Array {
            shape: vec![1, all.len()],
            values: all,
        };
        let full = loaded.model.forward(int_tensor(&ids, &device), None, None);
        let vocab = full.dims()[2];
        let values = to_vec(full);
        for (step, &token) in got.iter().enumerate() {
            // Three virtual positions come first.
            let position = 3 + prompt.len() - 1 + step;
            let row = &values[position * vocab..(position + 1) * vocab];
            let argmax = (0..vocab)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            assert_eq!(token as usize, argmax, "{case}: step {step}");
        }
    }
}

fn bottleneck(variant: BottleneckVariant, init: bool) -> AdapterConfig {
    AdapterConfig::Bottleneck(BottleneckConfig {
        variant,
        reduction_factor: 4,
        non_linearity: NonLinearity::Gelu,
        ln_before: true,
        init_weights: init,
        ..BottleneckConfig::default()
    })
}

#[test]
fn houlsby_and_pfeiffer_place_adapters_after_different_blocks() {
    let device = Device::flex();
    let expected = [
        (
            "gpt2-base",
            vec!["attn.c_proj", "mlp.c_proj"],
            vec!["mlp.c_proj"],
        ),
        (
            "llama-base",
            vec!["self_attn.o_proj", "mlp.down_proj"],
            vec!["mlp.down_proj"],
        ),
    ];
    for (case, houlsby, pfeiffer) in expected {
        let layers = base(case, &device).model.geometry().num_layers;
        let prefix = if case == "gpt2-base" {
            "transformer.h"
        } else {
            "model.layers"
        };
        let paths = |suffixes: &[&str]| -> Vec<String> {
            (0..layers)
                .flat_map(|i| suffixes.iter().map(move |s| format!("{prefix}.{i}.{s}")))
                .collect()
        };
        for (variant, suffixes) in [
            (BottleneckVariant::Houlsby, houlsby),
            (BottleneckVariant::Pfeiffer, pfeiffer),
        ] {
            let mut loaded = base(case, &device);
            let before = logits(&loaded, case, &device);
            attach(&mut loaded, &bottleneck(variant, true));
            assert_eq!(
                adapted_modules(&loaded),
                paths(&suffixes),
                "{case} {variant:?}"
            );
            // The up-projection starts at zero: the adapter is the identity.
            let err = max_diff(
                &logits(&loaded, case, &device),
                &before,
                case,
                0,
                loaded.model.vocab_size(),
            );
            assert!(
                err <= 1e-6,
                "{case} {variant:?}: init changed logits by {err:e}"
            );
        }
    }
}

/// The fixture's loss with the model as it is.
fn loss(loaded: &LoadedModel, case: &str, device: &Device) -> f64 {
    let expected = Expected::load(case);
    let (ids, mask) = inputs(case, device);
    let labels = int_tensor(&expected.i64("labels"), device);
    let logits = loaded.model.forward(ids, Some(&mask), None);
    f64::from(to_vec(causal_lm_loss(logits, labels))[0])
}

/// Replaces the tensors of the bottleneck adapter on `module` by `tensors`.
fn set_bottleneck(loaded: &mut LoadedModel, module: &str, tensors: &BTreeMap<String, HostTensor>) {
    for (key, proj) in loaded.model.projections_mut() {
        if key != module {
            continue;
        }
        let adapter = &mut proj.adapters[0].adapter;
        let mut read = |name: &str, _: &[usize]| -> peft_core::Result<HostTensor> {
            Ok(tensors[name].clone())
        };
        adapter.load_file_tensors(&mut read).unwrap();
    }
}

#[test]
fn bottleneck_gradients_agree_with_finite_differences() {
    // Random up-projections (no zero init) so that every tensor has a non-trivial gradient;
    // directional derivatives along a fixed unit direction per tensor, central differences in f32.
    let device = ndarray_device().autodiff();
    for case in BASES {
        let mut loaded = base(case, &device);
        attach(&mut loaded, &bottleneck(BottleneckVariant::Houlsby, false));
        let module = adapted_modules(&loaded)[0].clone();
        let expected = Expected::load(case);
        let (ids, mask) = inputs(case, &device);
        let labels = int_tensor(&expected.i64("labels"), &device);
        let loss_t = causal_lm_loss(loaded.model.forward(ids, Some(&mask), None), labels);
        let grads = loss_t.backward();
        let analytic = adapter_tensors(&loaded.model, "default", Some(&grads)).unwrap();
        let values: BTreeMap<String, HostTensor> = loaded
            .model
            .projections()
            .into_iter()
            .find(|(k, _)| *k == module)
            .map(|(_, p)| match &p.adapters[0].adapter {
                adapter @ Adapter::Bottleneck(_) => adapter.file_tensors(None).unwrap(),
                other => panic!("not a bottleneck adapter: {other:?}"),
            })
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(
            values.len(),
            6,
            "down, up (weights, biases) and the layer norm"
        );
        let eps = 5e-2f32;
        for (name, value) in &values {
            let grad = &analytic[&format!("base_model.model.{module}.{name}")];
            // A unit direction with entries ±1/√n in a fixed pattern.
            let n = value.data.len();
            let direction: Vec<f32> = (0..n)
                .map(|i| if (i * 7 + 3) % 5 < 2 { -1.0 } else { 1.0 })
                .map(|d| d / (n as f32).sqrt())
                .collect();
            let mut quotient = |h: f32| {
                let along = |step: f32| {
                    let mut shifted = values.clone();
                    let t = shifted.get_mut(name).unwrap();
                    for (x, d) in t.data.iter_mut().zip(&direction) {
                        *x += step * d;
                    }
                    shifted
                };
                set_bottleneck(&mut loaded, &module, &along(h));
                let up = loss(&loaded, case, &device);
                set_bottleneck(&mut loaded, &module, &along(-h));
                let down = loss(&loaded, case, &device);
                set_bottleneck(&mut loaded, &module, &values);
                (up - down) / (2.0 * f64::from(h))
            };
            // Richardson extrapolation of two central differences: error O(h⁴).
            let numeric = (4.0 * quotient(eps / 2.0) - quotient(eps)) / 3.0;
            let exact: f64 = grad
                .data
                .iter()
                .zip(&direction)
                .map(|(g, d)| f64::from(g * d))
                .sum();
            // f32 rounding of a loss near 6 bounds what a difference quotient can resolve:
            // a few 1e-5 absolute at these steps.
            let error = (numeric - exact).abs();
            assert!(
                error <= 1e-2 * exact.abs() + 5e-5,
                "{case} {module}.{name}: finite difference {numeric:e} vs gradient {exact:e}"
            );
        }
    }
}

#[test]
fn bottleneck_round_trip_and_format() {
    let device = Device::flex();
    for case in BASES {
        let mut loaded = base(case, &device);
        let config = attach(&mut loaded, &bottleneck(BottleneckVariant::Pfeiffer, false));
        let (reloaded, dir) = save_and_reload(&loaded, &config, case, &device);
        assert_eq!(
            logits(&reloaded, case, &device),
            logits(&loaded, case, &device),
            "{case}: reloaded bottleneck adapter gives other logits"
        );
        let json = saved_config(dir.path());
        assert_eq!(json["peft_type"], "BOTTLENECK");
        assert_eq!(json["variant"], "pfeiffer");
        assert_eq!(json["reduction_factor"], 4);
        assert_eq!(json["non_linearity"], "gelu");
        assert_eq!(json["ln_before"], true);
        let module = adapted_modules(&loaded)[0].clone();
        let width = loaded.model.geometry().hidden_size;
        let shapes = saved_shapes(dir.path());
        let key = |name: &str| format!("base_model.model.{module}.{name}");
        assert_eq!(shapes[&key("adapter_down.weight")], vec![width / 4, width]);
        assert_eq!(shapes[&key("adapter_up.weight")], vec![width, width / 4]);
        assert_eq!(shapes[&key("adapter_ln.weight")], vec![width]);
        let refusal = merge_adapter(&mut loaded.model, true).unwrap_err();
        assert!(
            refusal.to_string().contains("cannot be merged"),
            "{refusal}"
        );
        assert_eq!(
            logits(&loaded, case, &device),
            logits(&reloaded, case, &device),
            "{case}: a refused merge left the model changed"
        );
    }
}

#[test]
fn ia3_merges_into_biased_conv1d_projections_and_unmerges() {
    let device = Device::flex();
    let mut loaded = base("gpt2-base", &device);
    let before = logits(&loaded, "gpt2-base", &device);
    let config = AdapterConfig::Ia3(Ia3Config {
        init_ia3_weights: false,
        ..serde_json::from_str("{}").unwrap()
    });
    let attached = attach(&mut loaded, &config);
    let AdapterConfig::Ia3(resolved) = &attached else {
        panic!("IA3 config expected");
    };
    assert_eq!(
        resolved.feedforward_modules,
        Some(peft_core::target::TargetModules::Names(vec![
            "mlp.c_proj".into()
        ]))
    );
    let modules = adapted_modules(&loaded);
    assert_eq!(modules.len(), 2 * loaded.model.geometry().num_layers);
    let vocab = loaded.model.vocab_size();
    let adapted_logits = logits(&loaded, "gpt2-base", &device);
    assert!(max_diff(&adapted_logits, &before, "gpt2-base", 0, vocab) > 1e-3);
    merge_adapter(&mut loaded.model, true).unwrap();
    let merged = logits(&loaded, "gpt2-base", &device);
    let err = max_diff(&merged, &adapted_logits, "gpt2-base", 0, vocab);
    assert!(err <= 1e-4, "merged IA3 (with biases) differs by {err:e}");
    unmerge_adapter(&mut loaded.model);
    disable_adapters(&mut loaded.model);
    let err = max_diff(
        &logits(&loaded, "gpt2-base", &device),
        &before,
        "gpt2-base",
        0,
        vocab,
    );
    assert!(err <= 1e-4, "unmerged IA3 left the base changed by {err:e}");

    // PEFT's layout: [out, 1] for c_attn's output, [1, in] for the feed-forward c_proj's input.
    let tensors = adapter_tensors(&loaded.model, "default", None).unwrap();
    let hidden = loaded.model.geometry().hidden_size;
    let shape = |m: &str| {
        tensors[&format!("base_model.model.transformer.h.0.{m}.ia3_l")]
            .shape
            .clone()
    };
    assert_eq!(shape("attn.c_attn"), vec![3 * hidden, 1]);
    assert_eq!(shape("mlp.c_proj"), vec![1, 4 * hidden]);
}

#[test]
fn configs_that_cannot_work_are_refused_by_field() {
    let device = Device::flex();
    let refuse = |json: serde_json::Value, field: &str| {
        let err = AdapterConfig::from_json(&json).unwrap_err().to_string();
        assert!(err.contains(field), "{json}: {err}");
    };
    refuse(
        serde_json::json!({"peft_type": "IA3", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]}),
        "feedforward_modules",
    );
    refuse(
        serde_json::json!({"peft_type": "BOTTLENECK", "reduction_factor": 0}),
        "reduction_factor",
    );
    refuse(
        serde_json::json!({"peft_type": "BOTTLENECK", "non_linearity": "softsign"}),
        "non_linearity",
    );
    refuse(
        serde_json::json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "prompt_tuning_init": "TEXT"}),
        "prompt_tuning_init_text",
    );
    refuse(
        serde_json::json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 0}),
        "num_virtual_tokens",
    );

    // PEFT's LLaMA prefix on GPT-2: the key/value width does not fit; the message names the
    // field, both values and the file, and nothing is attached.
    let mut gpt2 = base("gpt2-base", &device);
    let dir = case_dir("llama-prefix").join("adapter");
    let err = load_adapter(&mut gpt2.model, "default", &dir)
        .unwrap_err()
        .to_string();
    for needle in ["token_dim", "is 32", "needs 64", "adapter_config.json"] {
        assert!(err.contains(needle), "{err}");
    }
    assert!(peft_core::adapter_names(&gpt2.model).is_empty());
}
