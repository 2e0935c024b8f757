//! LoRA features that the fixtures do not cover, each tested so that ignoring the feature fails
//! the test: all-linear, rank_pattern, modules_to_save, rsLoRA through the file, several named
//! adapters; and bad adapter input, which must fail with a message naming the problem.

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::*;
use peft_core::adapter_folder::{adapter_tensors, load_adapter, load_config, save_adapter};
use peft_core::method::common::TargetFields;
use peft_core::method::lora::{LoraConfig, LoraInit};
use peft_core::target::TargetModules;
use peft_core::{
    adapter_names, attach_adapter, merge_adapter, set_adapter, unload_adapter, AdapterConfig,
    ParameterReport, ProjectionHost,
};
use peft_models::{load_model, LoadedModel};

fn device() -> Device {
    Device::flex()
}

fn base(case: &str) -> LoadedModel {
    load_model(&case_dir(case).join("base"), &device()).unwrap()
}

fn lora(targets: TargetModules) -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        targets: TargetFields {
            target_modules: Some(targets),
            ..TargetFields::default()
        },
        init_lora_weights: LoraInit::Default(false),
        ..LoraConfig::default()
    }
}

fn names(n: &[&str]) -> TargetModules {
    TargetModules::Names(n.iter().map(|s| s.to_string()).collect())
}

fn logits(loaded: &LoadedModel) -> Vec<f32> {
    let expected = Expected::load("llama-base");
    let ids = expected.i64("input_ids");
    to_vec(
        loaded
            .model
            .forward(int_tensor(&ids, &device()), None, None),
    )
}

#[test]
fn all_linear_adapts_every_projection_but_the_head() {
    let mut m = base("llama-base");
    attach_adapter(
        &mut m.model,
        "default",
        &AdapterConfig::Lora(lora(TargetModules::Pattern("all-linear".into()))),
    )
    .unwrap();
    let adapted = adapted_modules(&m);
    assert_eq!(adapted.len(), 2 * 7, "{adapted:?}");
    assert!(!adapted.iter().any(|k| k == "lm_head"));
}

#[test]
fn rank_pattern_and_alpha_pattern_override_per_module() {
    let mut m = base("llama-base");
    let mut config = lora(names(&["q_proj", "v_proj"]));
    config.rank_pattern.insert("v_proj".into(), 2);
    config
        .alpha_pattern
        .insert(r"layers\.1\.self_attn\.q_proj".into(), 32.0);
    attach_adapter(
        &mut m.model,
        "default",
        &AdapterConfig::Lora(config.clone()),
    )
    .unwrap();
    let tensors = adapter_tensors(&m.model, "default", None).unwrap();
    let shape = |k: &str| {
        tensors[&format!("base_model.model.model.layers.{k}")]
            .shape
            .clone()
    };
    assert_eq!(shape("0.self_attn.v_proj.lora_A.weight"), vec![2, 64]);
    assert_eq!(shape("0.self_attn.q_proj.lora_A.weight"), vec![4, 64]);
    let scales: Vec<(String, f64)> = m
        .model
        .projections()
        .into_iter()
        .filter_map(|(k, p)| match p.adapter("default") {
            Some(peft_core::Adapter::Lora(l)) => Some((k, l.scale)),
            _ => None,
        })
        .collect();
    assert!(
        scales.contains(&("model.layers.1.self_attn.q_proj".into(), 8.0)),
        "{scales:?}"
    );
    assert!(
        scales.contains(&("model.layers.0.self_attn.q_proj".into(), 2.0)),
        "{scales:?}"
    );
    assert!(
        scales.contains(&("model.layers.0.self_attn.v_proj".into(), 4.0)),
        "{scales:?}"
    );
    // The pattern survives a save/load round trip.
    let dir = tempfile::tempdir().unwrap();
    save_adapter(
        &m.model,
        "default",
        &AdapterConfig::Lora(config),
        dir.path(),
    )
    .unwrap();
    let mut again = base("llama-base");
    load_adapter(&mut again.model, "default", dir.path()).unwrap();
    assert_eq!(logits(&again), logits(&m));
}

#[test]
fn modules_to_save_trains_a_full_copy_that_round_trips() {
    let mut m = base("llama-base");
    let mut config = lora(names(&["q_proj"]));
    config.targets.modules_to_save = Some(vec!["lm_head".into()]);
    let config = AdapterConfig::Lora(config);
    let report = attach_adapter(&mut m.model, "default", &config).unwrap();
    assert_eq!(report.saved, vec!["lm_head".to_string()]);
    let counts = ParameterReport::of(&m.model);
    // Two q_proj adapters (4·64 + 64·4 each) plus the full head copy (64·384).
    assert_eq!(counts.trainable, 2 * (4 * 64 + 64 * 4) + 64 * 384);
    let tensors = adapter_tensors(&m.model, "default", None).unwrap();
    assert_eq!(
        tensors["base_model.model.lm_head.weight"].shape,
        vec![384, 64]
    );
    // Changing the copy changes the output while the base head stays as it was.
    let before = logits(&m);
    for (key, proj) in m.model.projections_mut() {
        if key == "lm_head" {
            let w = proj.saved[0].layer.weight.val() * 2.0;
            proj.saved[0].layer.weight = burn::module::Param::from_tensor(w);
        }
    }
    assert_ne!(logits(&m), before);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&m.model, "default", &config, dir.path()).unwrap();
    let mut again = base("llama-base");
    load_adapter(&mut again.model, "default", dir.path()).unwrap();
    assert_eq!(logits(&again), logits(&m));
}

#[test]
fn rslora_flag_read_from_the_file_changes_the_scale() {
    let mut m = base("llama-base");
    let config = AdapterConfig::Lora(LoraConfig {
        use_rslora: true,
        ..lora(names(&["q_proj"]))
    });
    attach_adapter(&mut m.model, "default", &config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&m.model, "default", &config, dir.path()).unwrap();
    let with_rs = logits(&m);
    // Same factors, plain LoRA with alpha·sqrt(r)/... : alpha/sqrt(4) = 4 = (alpha·2)/4.
    let path = dir.path().join("adapter_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["use_rslora"], true);
    json["use_rslora"] = false.into();
    let mut plain = base("llama-base");
    std::fs::write(&path, json.to_string()).unwrap();
    load_adapter(&mut plain.model, "default", dir.path()).unwrap();
    assert_ne!(logits(&plain), with_rs, "use_rslora must change the output");
    json["lora_alpha"] = 16.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let mut scaled = base("llama-base");
    load_adapter(&mut scaled.model, "default", dir.path()).unwrap();
    let err = max_abs_diff_masked(&logits(&scaled), &with_rs, &[1; 32], 384);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn several_adapters_switch_and_unload_at_run_time() {
    let mut m = base("llama-lora");
    let fixture = case_dir("llama-lora").join("adapter");
    load_adapter(&mut m.model, "fixture", &fixture).unwrap();
    let with_fixture = logits(&m);
    attach_adapter(
        &mut m.model,
        "other",
        &AdapterConfig::Lora(lora(names(&["k_proj"]))),
    )
    .unwrap();
    // Attaching does not steal the active slot.
    assert_eq!(logits(&m), with_fixture);
    set_adapter(&mut m.model, "other").unwrap();
    let with_other = logits(&m);
    assert_ne!(with_other, with_fixture);
    set_adapter(&mut m.model, "fixture").unwrap();
    assert_eq!(logits(&m), with_fixture);
    unload_adapter(&mut m.model, "other").unwrap();
    assert_eq!(adapter_names(&m.model), vec!["fixture".to_string()]);
    assert!(set_adapter(&mut m.model, "other")
        .unwrap_err()
        .to_string()
        .contains("fixture"));
    // Merging needs no reload either.
    merge_adapter(&mut m.model, true).unwrap();
    let err = max_abs_diff_masked(&logits(&m), &with_fixture, &[1; 32], 384);
    assert!(err <= LOGITS_TOLERANCE);
}

/// Copies the llama-lora adapter folder so that a test may break it.
fn adapter_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(
            case_dir("llama-lora").join("adapter").join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
}

fn load_error(dir: &Path) -> String {
    let mut m = base("llama-lora");
    let err = load_adapter(&mut m.model, "default", dir)
        .unwrap_err()
        .to_string();
    assert!(
        adapter_names(&m.model).is_empty(),
        "a failed load must leave no adapter behind"
    );
    err
}

fn assert_mentions(message: &str, needles: &[&str]) {
    for n in needles {
        assert!(message.contains(n), "{message:?} lacks {n:?}");
    }
}

#[test]
fn unknown_config_keys_are_ignored() {
    let dir = adapter_copy();
    edit_config(dir.path(), |c| c["some_future_option"] = 3.into());
    let mut m = base("llama-lora");
    load_adapter(&mut m.model, "default", dir.path()).unwrap();
}

#[test]
fn another_peft_type_is_refused_by_name() {
    let dir = adapter_copy();
    edit_config(dir.path(), |c| c["peft_type"] = "LOHA".into());
    assert_mentions(&load_error(dir.path()), &["peft_type", "LOHA"]);
}

#[test]
fn unsupported_init_is_refused_by_name() {
    let dir = adapter_copy();
    edit_config(dir.path(), |c| c["init_lora_weights"] = "pissa".into());
    assert_mentions(&load_error(dir.path()), &["init_lora_weights", "pissa"]);
}

#[test]
fn unsupported_option_is_refused_by_name() {
    let dir = adapter_copy();
    edit_config(dir.path(), |c| c["bias"] = "all".into());
    assert_mentions(&load_error(dir.path()), &["bias", "all"]);
    let dir = adapter_copy();
    edit_config(dir.path(), |c| {
        c["layer_replication"] = serde_json::json!([[0, 1]])
    });
    assert_mentions(&load_error(dir.path()), &["layer_replication"]);
}

#[test]
fn shape_that_does_not_fit_names_key_and_both_shapes() {
    let dir = adapter_copy();
    edit_config(dir.path(), |c| c["r"] = 4.into());
    assert_mentions(
        &load_error(dir.path()),
        &[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "[8, 64]",
            "[4, 64]",
        ],
    );
}

#[test]
fn targets_matching_nothing_list_the_model_modules() {
    let dir = adapter_copy();
    edit_config(dir.path(), |c| {
        c["target_modules"] = serde_json::json!(["query"])
    });
    assert_mentions(
        &load_error(dir.path()),
        &["query", "model.layers.0.self_attn.q_proj", "lm_head"],
    );
}

#[test]
fn missing_weights_file_is_named() {
    let dir = adapter_copy();
    std::fs::remove_file(dir.path().join("adapter_model.safetensors")).unwrap();
    assert_mentions(&load_error(dir.path()), &["adapter_model.safetensors"]);
}

#[test]
fn tensor_for_an_untargeted_module_is_named() {
    let dir = adapter_copy();
    // Target only q_proj: the file's v_proj tensors then belong to nothing.
    edit_config(dir.path(), |c| {
        c["target_modules"] = serde_json::json!(["q_proj"])
    });
    assert_mentions(
        &load_error(dir.path()),
        &["v_proj.lora_", "belongs to no module"],
    );
}

#[test]
fn malformed_config_is_named() {
    let dir = adapter_copy();
    std::fs::write(dir.path().join("adapter_config.json"), "{\"peft_type\": ").unwrap();
    assert_mentions(&load_error(dir.path()), &["adapter_config.json"]);
    assert!(load_config(dir.path()).is_err());
}

#[test]
fn dora_adapter_round_trips_with_its_magnitude_vector() {
    let mut m = base("llama-base");
    let config = AdapterConfig::Lora(LoraConfig {
        use_dora: true,
        ..lora(names(&["q_proj", "v_proj"]))
    });
    attach_adapter(&mut m.model, "default", &config).unwrap();
    // Move the magnitude away from its initial value so that the file must carry it.
    for (_, proj) in m.model.projections_mut() {
        for named in proj.adapters.iter_mut() {
            let peft_core::Adapter::Lora(l) = &mut named.adapter else {
                panic!("a LoRA config attaches LoRA layers");
            };
            let doubled = l.magnitude.as_ref().unwrap().val() * 1.5;
            l.magnitude = Some(burn::module::Param::from_tensor(doubled));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&m.model, "default", &config, dir.path()).unwrap();
    let tensors = adapter_tensors(&m.model, "default", None).unwrap();
    let key = "base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector";
    assert_eq!(tensors[key].shape, vec![32]);
    let mut again = base("llama-base");
    load_adapter(&mut again.model, "default", dir.path()).unwrap();
    let err = max_abs_diff_masked(&logits(&again), &logits(&m), &[1; 32], 384);
    // Same tensors (a transposed view after loading), so only summation order may differ.
    assert!(
        err <= 1e-6,
        "reloaded DoRA adapter changes the logits by {err:e}"
    );
    assert_eq!(
        adapter_tensors(&again.model, "default", None).unwrap(),
        tensors
    );
    let mut plain = base("llama-base");
    let path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"use_dora\": true", "\"use_dora\": false");
    std::fs::write(&path, text).unwrap();
    // Without DoRA the magnitude tensors belong to nothing: refused, not silently dropped.
    let err = load_adapter(&mut plain.model, "default", dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora_magnitude_vector"), "{err}");
}

#[test]
fn wrongly_typed_value_names_its_field() {
    let dir = adapter_copy();
    edit_config(dir.path(), |c| c["r"] = "eight".into());
    assert_mentions(&load_error(dir.path()), &["`r`", "eight"]);
}

#[test]
fn switching_away_from_a_merged_adapter_unmerges_it() {
    let mut m = base("llama-lora");
    load_adapter(&mut m.model, "a", &case_dir("llama-lora").join("adapter")).unwrap();
    attach_adapter(
        &mut m.model,
        "b",
        &AdapterConfig::Lora(lora(names(&["k_proj"]))),
    )
    .unwrap();
    set_adapter(&mut m.model, "b").unwrap();
    let only_b = logits(&m);
    set_adapter(&mut m.model, "a").unwrap();
    merge_adapter(&mut m.model, true).unwrap();
    set_adapter(&mut m.model, "b").unwrap();
    let err = max_abs_diff_masked(&logits(&m), &only_b, &[1; 32], 384);
    assert!(
        err <= LOGITS_TOLERANCE,
        "adapters a (merged) and b added up: {err:e}"
    );
}
