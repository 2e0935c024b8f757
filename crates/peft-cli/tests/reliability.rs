//! Inputs that once made peft-cli panic, abort, run forever or compute garbage with exit 0: each
//! is now refused with a message naming the culprit (and nothing is written), or handled as a
//! user would expect. One test per class of issue 20.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use safetensors::tensor::{Dtype, TensorView};

/// A prompt/completion dataset of `lines` records in `dir`.
fn data(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("train.jsonl");
    let records: String = (0..lines)
        .map(|i| format!("{{\"prompt\":\"say {i} ->\",\"completion\":\" {i} ok\"}}\n"))
        .collect();
    std::fs::write(&path, records).unwrap();
    path
}

/// `train` on the llama-base fixture for two steps, with `extra` flags.
fn train(dir: &Path, extra: &[&str]) -> std::process::Output {
    let data = data(dir, 8);
    let flags = [&["--max-steps", "2", "--batch-size", "2"], extra].concat();
    train_cli(&data, &dir.join("run"), &flags)
}

/// A finished two-step run in `dir/run` with a checkpoint at each step and its final adapter
/// removed, ready for `--resume`.
fn resumable_run(dir: &Path) -> PathBuf {
    let out = train(dir, &["--method", "lora", "--save-every", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.join("run");
    std::fs::remove_dir_all(run.join("final")).unwrap();
    run
}

/// Asserts that a refused run left no adapter behind.
fn assert_no_adapter(dir: &Path) {
    let final_adapter = dir.join("run/final");
    assert!(
        !final_adapter.exists(),
        "{} was written",
        final_adapter.display()
    );
}

#[test]
fn config_values_that_would_give_nan_logits_are_refused_by_key() {
    type ConfigEdit = fn(&mut serde_json::Value);
    let cases: [(&str, ConfigEdit, &str); 4] = [
        (
            "llama-base",
            |c| c["rms_norm_eps"] = (-1.0).into(),
            "rms_norm_eps",
        ),
        (
            "llama-base",
            |c| c["rope_parameters"]["rope_theta"] = 0.0.into(),
            "rope_theta",
        ),
        (
            "llama-base",
            |c| c["rope_parameters"] = serde_json::json!({"rope_type": "linear", "factor": 0.0}),
            "factor",
        ),
        (
            "gpt2-base",
            |c| c["layer_norm_epsilon"] = (-1e-5).into(),
            "layer_norm_epsilon",
        ),
    ];
    for (case, edit, key) in cases {
        let dir = copy_base(case);
        edit_config(dir.path(), edit);
        assert_fails_with(&inspect(dir.path()), &[key, "config.json"]);
    }
}

#[test]
fn a_nan_weight_is_refused_at_load_naming_the_tensor() {
    let dir = copy_base("llama-base");
    let name = "model.layers.1.self_attn.q_proj.weight";
    edit_weights(dir.path(), |tensors| {
        let (_, dtype, _, bytes) = tensors.iter_mut().find(|t| t.0 == name).unwrap();
        assert_eq!(*dtype, Dtype::F32);
        bytes[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert_fails_with(&inspect(dir.path()), &[name, "NaN", "flat index 5"]);
}

#[test]
fn a_file_given_as_the_model_is_named_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixtures().join("llama-base/base/model.safetensors");
    let out = peft_cli(&[
        "inspect",
        "--backend",
        "ndarray",
        "--model",
        path_str(&weights),
    ]);
    assert_fails_with(&out, &["is not a model", "pass the folder itself"]);
    for (name, bytes, needle) in [
        ("empty.gguf", &b""[..], "unexpected end of file"),
        ("three.gguf", &b"GGU"[..], "unexpected end of file"),
        ("magic.gguf", &[b'X'; 64][..], "not a GGUF file"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = peft_cli(&[
            "inspect",
            "--backend",
            "ndarray",
            "--model",
            path_str(&path),
        ]);
        assert_fails_with(&out, &[name, needle]);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("not found"));
    }
}

#[test]
fn sizes_past_what_the_model_allows_are_refused_before_allocating() {
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--method", "lora", "--rank", "1000000000000"],
            &["`r`", "1000000000000", "at most 64"],
        ),
        (
            &["--method", "prompt", "--virtual-tokens", "1000000000000"],
            &["num_virtual_tokens", "at most 127"],
        ),
        (
            &["--method", "prefix", "--virtual-tokens", "4000000000"],
            &["num_virtual_tokens", "128 positions"],
        ),
        (
            &[
                "--method",
                "prefix",
                "--prefix-projection",
                "--encoder-hidden-size",
                "1000000000000",
            ],
            &["encoder_hidden_size", "at most 128"],
        ),
        (
            &["--method", "lora", "--grad-accum", "1000000000000"],
            &["training.grad_accum", "at most 4"],
        ),
    ];
    for (flags, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        assert_fails_with(&train(dir.path(), flags), needles);
        assert_no_adapter(dir.path());
    }
}

#[test]
fn a_non_finite_lora_alpha_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails_with(
        &train(dir.path(), &["--method", "lora", "--alpha", "nan"]),
        &["method.alpha", "NaN"],
    );
    assert_no_adapter(dir.path());
}

#[test]
fn a_diverging_step_names_its_step_data_lines_and_adapter_state() {
    let dir = tempfile::tempdir().unwrap();
    // A finite alpha so large that the first update overflows the gradient norm.
    let out = train(dir.path(), &["--method", "lora", "--alpha", "1e38"]);
    assert_fails_with(
        &out,
        &[
            "diverged at step 1",
            "gradient norm inf",
            "of ",
            "train.jsonl",
            "every adapter tensor was finite",
            "the step was not applied",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lines "), "{stderr}");
    assert_no_adapter(dir.path());
}

#[test]
fn generation_stops_at_the_models_context_with_a_message() {
    let base = fixtures().join("llama-base/base");
    for max_new in ["1000000", "18446744073709551615"] {
        let out = peft_cli(&[
            "generate",
            "--backend",
            "ndarray",
            "--model",
            path_str(&base),
            "--prompt",
            "hi",
            "--max-new-tokens",
            max_new,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("the model's context of 128 positions is full"),
            "{stderr}"
        );
    }
}

#[test]
fn gpt2_examples_longer_than_its_positions_are_refused_naming_seq_len() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("long.jsonl");
    let (prompt, completion) = ("word ".repeat(30), " done".repeat(40));
    std::fs::write(
        &data,
        format!("{{\"prompt\":\"{prompt}\",\"completion\":\"{completion}\"}}\n").repeat(2),
    )
    .unwrap();
    let base = fixtures().join("gpt2-base/base");
    let out = peft_cli(&[
        "eval",
        "--backend",
        "ndarray",
        "--model",
        path_str(&base),
        "--data",
        path_str(&data),
    ]);
    assert_fails_with(&out, &["data.seq_len", "long.jsonl", "128 positions"]);
}

/// `peft-cli` with `XDG_RUNTIME_DIR` unset, where touching Vulkan makes the loader print.
fn peft_cli_without_xdg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peft-cli"))
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("BURN_DEVICE")
        .output()
        .expect("peft-cli runs")
}

#[test]
fn resuming_on_ndarray_leaves_other_backends_alone_and_auto_probes_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let run = resumable_run(dir.path());
    let resumed = peft_cli_without_xdg(&[
        "train",
        "--resume",
        path_str(&run),
        "--backend",
        "ndarray",
        "--max-steps",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");

    let base = fixtures().join("llama-base/base");
    let auto = peft_cli_without_xdg(&["inspect", "--backend", "auto", "--model", path_str(&base)]);
    let stderr = String::from_utf8_lossy(&auto.stderr);
    assert!(auto.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("backend: "))
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn labels_outside_the_vocabulary_are_refused_before_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.safetensors");
    let ids: Vec<u8> = [1i64, 2, 3, 4]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let labels: Vec<u8> = [1i64, 2, 99_999, -100]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let views = [
        (
            "input_ids",
            TensorView::new(Dtype::I64, vec![1, 4], &ids).unwrap(),
        ),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![1, 4], &labels).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &input).unwrap();
    let out = dir.path().join("out.safetensors");
    let result = peft_cli(&[
        "logits",
        "--backend",
        "ndarray",
        "--model",
        path_str(&fixtures().join("llama-base/base")),
        "--adapter",
        path_str(&fixtures().join("llama-lora/adapter")),
        "--grads",
        "--input",
        path_str(&input),
        "--out",
        path_str(&out),
    ]);
    assert_fails_with(&result, &["input.safetensors", "label 99999", "0..384"]);
    assert!(!out.exists(), "an output file was written");
}

#[test]
fn bench_and_eval_refuse_sizes_they_cannot_hold() {
    let bench = |flags: &[&str]| {
        let mut args = vec![
            "bench",
            "--backend",
            "ndarray",
            "--model",
            "tiny",
            "--steps",
            "1",
        ];
        args.extend(flags);
        peft_cli(&args)
    };
    assert_fails_with(
        &bench(&["--seq", "100000000000"]),
        &["--seq 100000000000", "2048 positions"],
    );
    assert_fails_with(
        &bench(&["--batch", "100000000000", "--seq", "8"]),
        &["--batch 100000000000", "tokens per step"],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = peft_cli(&[
        "eval",
        "--backend",
        "ndarray",
        "--model",
        path_str(&fixtures().join("llama-base/base")),
        "--data",
        path_str(&data(dir.path(), 2)),
        "--limit",
        "0",
    ]);
    assert_fails_with(&out, &["--limit"]);
}

#[test]
fn a_forged_or_changed_resume_is_refused_naming_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let run = resumable_run(dir.path());
    let resume = |extra: &[&str]| {
        let mut args = vec!["train", "--resume", path_str(&run), "--backend", "ndarray"];
        args.extend(extra);
        peft_cli(&args)
    };
    assert_fails_with(
        &resume(&["--rank", "4"]),
        &["`method.rank` is 8 in the run, 4 now"],
    );
    let state = run.join("checkpoint-2/trainer_state.json");
    let original = std::fs::read_to_string(&state).unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&original).unwrap();
    forged["step"] = 1_000_000_000_000_000u64.into();
    std::fs::write(&state, forged.to_string()).unwrap();
    assert_fails_with(
        &resume(&[]),
        &["trainer_state.json", "checkpoint of step 2"],
    );
    forged["step"] = 2.into();
    forged["micro_batches"] = 1_000_000_000_000_000u64.into();
    std::fs::write(&state, forged.to_string()).unwrap();
    assert_fails_with(&resume(&[]), &["trainer_state.json", "`micro_batches`"]);
    assert_no_adapter(dir.path());
}

#[test]
fn a_sharded_index_may_only_name_files_of_the_model_folder() {
    let dir = copy_base("llama-base");
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    let write_index = |shard: &str| {
        let map = serde_json::json!({"weight_map": {"model.embed_tokens.weight": shard}});
        std::fs::write(&index, map.to_string()).unwrap();
    };
    write_index("../../../etc/passwd");
    assert_fails_with(&inspect(dir.path()), &["weight_map", "../../../etc/passwd"]);
    write_index("/etc/passwd");
    assert_fails_with(&inspect(dir.path()), &["weight_map", "/etc/passwd"]);
}

#[test]
fn family_settings_the_crate_does_not_implement_are_refused_by_key() {
    type ConfigEdit = fn(&mut serde_json::Value);
    let cases: [(&str, ConfigEdit, &[&str]); 5] = [
        (
            "phi3-lora",
            |c| c["rope_parameters"]["partial_rotary_factor"] = 0.5.into(),
            &["partial_rotary_factor", "0.5"],
        ),
        (
            "qwen2-lora",
            |c| c["use_sliding_window"] = true.into(),
            &["use_sliding_window"],
        ),
        (
            "mistral-lora",
            |c| c["sliding_window"] = 0.into(),
            &["sliding_window", "at least 1"],
        ),
        (
            "gemma-lora",
            |c| c["hidden_act"] = "swiglu_unknown".into(),
            &["hidden_act", "swiglu_unknown"],
        ),
        (
            "qwen3-lora",
            |c| c["rope_parameters"]["rope_type"] = "yarn".into(),
            &["rope_parameters", "yarn"],
        ),
    ];
    for (case, edit, needles) in cases {
        let dir = copy_base(case);
        edit_config(dir.path(), edit);
        assert_fails_with(&inspect(dir.path()), needles);
    }
}

/// `train --adapter` takes the method from the adapter: method flags beside it, or a missing
/// adapter folder, are refused by name and nothing is written.
#[test]
fn continuing_an_adapter_refuses_method_flags_and_missing_folders() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixtures().join("llama-lora/adapter");
    for (flags, needles) in [
        (vec!["--rank", "4"], vec!["--rank", "--adapter"]),
        (vec!["--method", "ia3"], vec!["--method", "--adapter"]),
    ] {
        let out = train(
            dir.path(),
            &[&["--adapter", path_str(&adapter)], &flags[..]].concat(),
        );
        assert_fails_with(&out, &needles);
        assert_no_adapter(dir.path());
    }
    let missing = dir.path().join("no-such-adapter");
    let out = train(dir.path(), &["--adapter", path_str(&missing)]);
    assert_fails_with(&out, &["no-such-adapter"]);
    assert_no_adapter(dir.path());
}

/// A PEFT AdaLoRA adapter whose ranks were never allocated continues training, as PEFT's
/// `is_trainable=True` loads it (on the schedule of its own `total_step`); one whose ranks an
/// earlier run allocated (a `rank_pattern`) is refused saying why, with nothing written.
#[test]
fn an_adalora_adapter_continues_unless_its_ranks_were_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixtures().join("llama-adalora/adapter");
    let out = train(dir.path(), &["--adapter", path_str(&adapter)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("run/final/adapter_config.json").exists());

    let dir = tempfile::tempdir().unwrap();
    let allocated = dir.path().join("allocated");
    std::fs::create_dir(&allocated).unwrap();
    std::fs::copy(
        adapter.join("adapter_model.safetensors"),
        allocated.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    config["rank_pattern"] =
        serde_json::json!({"model.layers.0.self_attn.q_proj.lora_E": vec![true; 6]});
    std::fs::write(allocated.join("adapter_config.json"), config.to_string()).unwrap();
    let out = train(dir.path(), &["--adapter", path_str(&allocated)]);
    assert_fails_with(&out, &["rank_pattern", "already allocated"]);
    assert_no_adapter(dir.path());
}
