//! The command line as a user runs it: parity from the command line, and one test per bad input
//! (the message names the file or key, the exit status is non-zero, nothing panics).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// A safetensors file read into memory.
struct TensorFile(Vec<u8>);

impl TensorFile {
    fn read(path: &Path) -> Self {
        Self(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    fn view(&self, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let file = SafeTensors::deserialize(&self.0).unwrap();
        let view = file
            .tensor(name)
            .unwrap_or_else(|_| panic!("no tensor {name}"));
        (view.dtype(), view.shape().to_vec(), view.data().to_vec())
    }

    fn floats(&self, name: &str) -> Vec<f32> {
        self.decode(name, Dtype::F32, f32::from_le_bytes)
    }

    fn ints(&self, name: &str) -> Vec<i64> {
        self.decode(name, Dtype::I64, i64::from_le_bytes)
    }

    /// The values of tensor `name`, which must have `dtype`, decoded from little-endian bytes.
    fn decode<T, const N: usize>(
        &self,
        name: &str,
        dtype: Dtype,
        from: fn([u8; N]) -> T,
    ) -> Vec<T> {
        let (actual, _, data) = self.view(name);
        assert_eq!(actual, dtype, "{name}");
        data.chunks_exact(N)
            .map(|c| from(c.try_into().unwrap()))
            .collect()
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        self.view(name).1
    }

    fn names(&self) -> Vec<String> {
        SafeTensors::deserialize(&self.0)
            .unwrap()
            .names()
            .into_iter()
            .map(String::from)
            .collect()
    }
}

/// Largest |a - b| over positions whose mask is 1 (`a`, `b` flattened `[batch, seq, vocab]`).
fn max_masked_diff(a: &[f32], b: &[f32], mask: &[i64]) -> f32 {
    assert_eq!(a.len(), b.len());
    let vocab = a.len() / mask.len();
    mask.iter()
        .enumerate()
        .filter(|(_, &m)| m == 1)
        .flat_map(|(p, _)| (p * vocab..(p + 1) * vocab).map(|i| (a[i] - b[i]).abs()))
        .fold(0.0f32, f32::max)
}

#[test]
fn logits_command_reproduces_transformers_for_both_fixtures() {
    for case in ["gpt2-base", "llama-base"] {
        let expected_path = fixtures().join(case).join("expected.safetensors");
        let out_dir = tempfile::tempdir().unwrap();
        let out_path = out_dir.path().join("logits.safetensors");
        // The expected file holds input_ids and attention_mask: it is a valid input file.
        let out = peft_cli(&[
            "logits",
            "--model",
            path_str(&fixtures().join(case).join("base")),
            "--input",
            path_str(&expected_path),
            "--out",
            path_str(&out_path),
            "--backend",
            "ndarray",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let (expected, got) = (
            TensorFile::read(&expected_path),
            TensorFile::read(&out_path),
        );
        assert_eq!(got.shape("logits"), expected.shape("logits_base"));
        let worst = max_masked_diff(
            &got.floats("logits"),
            &expected.floats("logits_base"),
            &expected.ints("attention_mask"),
        );
        assert!(worst <= 1e-4, "{case}: max abs error {worst:e}");
    }
}

/// Two named adapters and `--adapter-per-row` reproduce PEFT's mixed batch (alpha, the base
/// model, beta) row by row; a list of the wrong length, a name not loaded, an adapter named
/// twice and an adapter of a method that does not mix are refused by name, with nothing
/// written.
#[test]
fn logits_runs_a_mixed_adapter_batch_from_the_command_line() {
    let case = fixtures().join("llama-mixed-batch");
    let expected_path = case.join("expected.safetensors");
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("logits.safetensors");
    let alpha = format!("alpha={}", path_str(&case.join("adapters/alpha")));
    let beta = format!("beta={}", path_str(&case.join("adapters/beta")));
    let run = |rows: &str, second: &str| {
        peft_cli(&[
            "logits",
            "--model",
            path_str(&case.join("base")),
            "--adapter",
            &alpha,
            "--adapter",
            second,
            "--adapter-per-row",
            rows,
            "--input",
            path_str(&expected_path),
            "--out",
            path_str(&out_path),
            "--backend",
            "ndarray",
        ])
    };
    let refused = |out: Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && stderr.contains(needle), "{stderr}");
        assert!(!out_path.exists(), "nothing is written on bad input");
    };
    refused(run("alpha,beta", &beta), "3 rows");
    refused(run("alpha,gamma,beta", &beta), "gamma");
    let twice = format!("alpha={}", path_str(&case.join("adapters/beta")));
    refused(
        run("alpha,__base__,alpha", &twice),
        "two adapters are named \"alpha\"",
    );

    let prefix = fixtures().join("llama-prefix");
    let out = peft_cli(&[
        "logits",
        "--model",
        path_str(&prefix.join("base")),
        "--adapter",
        &format!("p={}", path_str(&prefix.join("adapter"))),
        "--adapter-per-row",
        "p,__base__",
        "--input",
        path_str(&prefix.join("expected.safetensors")),
        "--out",
        path_str(&out_path),
        "--backend",
        "ndarray",
    ]);
    refused(out, "cannot run in a mixed batch");

    let out = run("alpha,__base__,beta", &beta);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (expected, got) = (
        TensorFile::read(&expected_path),
        TensorFile::read(&out_path),
    );
    let worst = max_masked_diff(
        &got.floats("logits"),
        &expected.floats("logits_mixed"),
        &expected.ints("attention_mask"),
    );
    assert!(worst <= 1e-4, "mixed batch: max abs error {worst:e}");
}

/// `generate --prompts` continues a file of prompts in one batch, each row with the adapter its
/// record names (alpha, the base model, beta): the same text as each prompt generated alone with
/// its adapter; a record naming an adapter not loaded and a line that is not JSON are refused
/// naming them.
#[test]
fn generate_continues_a_file_of_prompts_each_with_its_adapter() {
    let case = fixtures().join("llama-mixed-batch");
    let dir = tempfile::tempdir().unwrap();
    let adapter = |name: &str| path_str(&case.join("adapters").join(name)).to_string();
    let base = path_str(&case.join("base")).to_string();
    let common = [
        "--backend",
        "ndarray",
        "--model",
        &base,
        "--max-new-tokens",
        "6",
    ];
    let prompts = [
        ("alpha", "abc ->"),
        ("__base__", "hello there"),
        ("beta", "rust"),
    ];
    let file = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = prompts
        .iter()
        .map(|(a, p)| serde_json::json!({"prompt": p, "adapter": a}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (alpha, beta) = (
        format!("alpha={}", adapter("alpha")),
        format!("beta={}", adapter("beta")),
    );
    let mixed = |file: &Path| {
        let mut args = vec!["generate"];
        args.extend(common);
        args.extend([
            "--adapter",
            &alpha,
            "--adapter",
            &beta,
            "--prompts",
            path_str(file),
        ]);
        peft_cli(&args)
    };
    let out = mixed(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    for (i, (name, prompt)) in prompts.iter().enumerate() {
        let mut args = vec!["generate"];
        args.extend(common);
        let dir = adapter(name);
        if *name != "__base__" {
            args.extend(["--adapter", &dir]);
        }
        args.extend(["--prompt", prompt]);
        let alone = peft_cli_ok(&args);
        assert_eq!(rows[i]["record"], i + 1);
        assert_eq!(rows[i]["adapter"], *name);
        // Streaming holds back the bytes of a character the last token left incomplete; the
        // batch decodes them as U+FFFD.
        assert_eq!(
            rows[i]["completion"]
                .as_str()
                .unwrap()
                .trim_end_matches('\u{FFFD}'),
            alone.trim_end_matches('\n'),
            "{name}: {prompt:?}"
        );
    }

    std::fs::write(
        &file,
        serde_json::json!({"prompt": "x", "adapter": "gamma"}).to_string(),
    )
    .unwrap();
    assert_fails_with(&mixed(&file), &["gamma"]);
    std::fs::write(&file, "{\"prompt\": \"x\"}\nnot json").unwrap();
    assert_fails_with(&mixed(&file), &["prompts.jsonl:2", "not valid JSON"]);
}

/// `eval` on records that name their adapter (`"adapter"`: a name given with --adapter, or
/// `__base__`; none: the first --adapter) scores each with that adapter: answers in file order
/// and a loss weighted by labelled tokens, equal to evaluating each record alone with its
/// adapter.
#[test]
fn eval_answers_each_record_with_the_adapter_it_names() {
    let case = fixtures().join("llama-mixed-batch");
    let dir = tempfile::tempdir().unwrap();
    let adapter = |name: &str| path_str(&case.join("adapters").join(name)).to_string();
    let record = |adapter: Option<&str>, word: &str| {
        let mut r =
            serde_json::json!({"prompt": format!("{word} ->"), "completion": format!(" {word}")});
        if let Some(name) = adapter {
            r["adapter"] = name.into();
        }
        r.to_string()
    };
    let eval = |file: &str, lines: &[String], adapters: &[String]| -> serde_json::Value {
        let data = dir.path().join(file);
        std::fs::write(&data, lines.join("\n")).unwrap();
        let mut args = vec![
            "eval".to_string(),
            "--backend".into(),
            "ndarray".into(),
            "--model".into(),
            path_str(&case.join("base")).into(),
            "--data".into(),
            path_str(&data).into(),
            "--max-new-tokens".into(),
            "4".into(),
            "--json".into(),
        ];
        for a in adapters {
            args.extend(["--adapter".to_string(), a.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_str(&peft_cli_ok(&args)).expect("--json prints JSON")
    };
    let mixed = eval(
        "mixed.jsonl",
        &[
            record(Some("beta"), "abc"),
            record(Some("__base__"), "hello"),
            record(None, "rust"),
        ],
        &[
            format!("alpha={}", adapter("alpha")),
            format!("beta={}", adapter("beta")),
        ],
    );
    let alone = [
        eval("1.jsonl", &[record(None, "abc")], &[adapter("beta")]),
        eval("2.jsonl", &[record(None, "hello")], &[]),
        eval("3.jsonl", &[record(None, "rust")], &[adapter("alpha")]),
    ];
    let (mut loss_sum, mut tokens) = (0.0, 0.0);
    for (i, part) in alone.iter().enumerate() {
        let (got, want) = (&mixed["samples"][i], &part["samples"][0]);
        assert_eq!(got["record"], i + 1);
        assert_eq!(got["generated"], want["generated"], "record {}", i + 1);
        let n = part["learned_tokens"].as_f64().unwrap();
        loss_sum += part["loss"].as_f64().unwrap() * n;
        tokens += n;
    }
    let loss = mixed["loss"].as_f64().unwrap();
    assert!(
        (loss - loss_sum / tokens).abs() < 1e-5,
        "{loss} against {}",
        loss_sum / tokens
    );
}

#[test]
fn inspect_reports_architecture_and_parameters() {
    let out = inspect(&fixtures().join("gpt2-base").join("base"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("architecture: gpt2"), "{stdout}");
    // gpt2-lora's case.json: all_params 134912 = 2048 LoRA + the base model's 132864.
    assert!(stdout.contains("parameters: 132864"), "{stdout}");
    assert!(stdout.contains("transformer.h.1.mlp.c_proj"), "{stdout}");
}

#[test]
fn generate_streams_text_and_sampling_is_reproducible() {
    let model = fixtures().join("llama-base").join("base");
    let run = |seed: &str| {
        peft_cli(&[
            "generate",
            "--model",
            path_str(&model),
            "--prompt",
            "hello world",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0.8",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--backend",
            "ndarray",
        ])
    };
    let (a, b) = (run("7"), run("7"));
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout, "same seed, different text");
}

#[test]
fn missing_model_folder_is_named() {
    let out = inspect(Path::new("/nonexistent/model"));
    assert_fails_with(&out, &["/nonexistent/model", "model folder"]);
}

#[test]
fn missing_config_is_named() {
    let dir = copy_base("llama-base");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_fails_with(&inspect(dir.path()), &["config.json", "not found"]);
}

#[test]
fn missing_weights_file_is_named() {
    let dir = copy_base("llama-base");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_fails_with(&inspect(dir.path()), &["model.safetensors", "not found"]);
}

#[test]
fn malformed_config_names_file_and_position() {
    let dir = copy_base("llama-base");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\",",
    )
    .unwrap();
    assert_fails_with(&inspect(dir.path()), &["config.json", "line 1"]);
}

#[test]
fn unknown_model_type_is_named() {
    let dir = copy_base("llama-base");
    edit_config(dir.path(), |c| c["model_type"] = "bert".into());
    assert_fails_with(
        &inspect(dir.path()),
        &[
            "\"bert\"",
            "config.json",
            "llama, qwen2, qwen3, mistral, gemma, phi3, gpt2",
        ],
    );
}

#[test]
fn missing_config_key_is_named() {
    let dir = copy_base("gpt2-base");
    edit_config(dir.path(), |c| {
        c.as_object_mut().unwrap().remove("n_embd");
    });
    assert_fails_with(&inspect(dir.path()), &["n_embd", "config.json"]);
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_base("llama-base");
    edit_weights(dir.path(), |t| {
        t.retain(|(n, ..)| n != "model.layers.1.mlp.up_proj.weight")
    });
    assert_fails_with(
        &inspect(dir.path()),
        &["missing tensor", "model.layers.1.mlp.up_proj.weight"],
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = copy_base("gpt2-base");
    edit_weights(dir.path(), |t| {
        t.push((
            "transformer.h.9.attn.c_attn.weight".into(),
            Dtype::F32,
            vec![2],
            vec![0; 8],
        ))
    });
    assert_fails_with(
        &inspect(dir.path()),
        &["unexpected tensor", "transformer.h.9.attn.c_attn.weight"],
    );
}

#[test]
fn shape_mismatch_names_tensor_and_both_shapes() {
    let dir = copy_base("llama-base");
    edit_config(dir.path(), |c| c["vocab_size"] = 400.into());
    assert_fails_with(
        &inspect(dir.path()),
        &["model.embed_tokens.weight", "[400, 64]", "[384, 64]"],
    );
}

#[test]
fn unreadable_safetensors_header_is_named() {
    let dir = copy_base("gpt2-base");
    let mut garbage = 5000u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"{not json");
    std::fs::write(dir.path().join("model.safetensors"), garbage).unwrap();
    assert_fails_with(&inspect(dir.path()), &["model.safetensors", "header"]);
}

/// Runs `logits` on the llama-base fixture with a one-tensor input file `input_ids`.
fn logits_on_input(dtype: Dtype, ids: Vec<u8>) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.safetensors");
    let view = TensorView::new(dtype, vec![1, 2], &ids).unwrap();
    safetensors::serialize_to_file([("input_ids", view)], None, &input).unwrap();
    let model = fixtures().join("llama-base").join("base");
    let out_path = dir.path().join("out.safetensors");
    let out = peft_cli(&[
        "logits",
        "--model",
        path_str(&model),
        "--input",
        path_str(&input),
        "--out",
        path_str(&out_path),
        "--backend",
        "ndarray",
    ]);
    (out, dir)
}

#[test]
fn bad_logits_input_is_named() {
    let (out, dir) = logits_on_input(
        Dtype::F32,
        [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    assert_fails_with(&out, &["input_ids", "I64"]);
    assert!(
        !dir.path().join("out.safetensors").exists(),
        "no output file on failure"
    );
}

#[test]
fn out_of_vocabulary_ids_are_refused() {
    let (out, _dir) = logits_on_input(
        Dtype::I64,
        [1i64, 384].iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    assert_fails_with(&out, &["token id 384", "vocabulary"]);
}

#[test]
fn generate_without_tokenizer_says_so() {
    let dir = copy_base("llama-base");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let out = peft_cli(&[
        "generate",
        "--model",
        path_str(dir.path()),
        "--prompt",
        "hi",
        "--backend",
        "ndarray",
    ]);
    assert_fails_with(&out, &["tokenizer.json"]);
}

#[test]
fn chat_without_template_says_so() {
    let model = fixtures().join("llama-base").join("base");
    let out = peft_cli(&[
        "generate",
        "--model",
        path_str(&model),
        "--prompt",
        "hi",
        "--chat",
        "--backend",
        "ndarray",
    ]);
    assert_fails_with(&out, &["chat template"]);
}

/// `logits --grads` from the command line reproduces PEFT's loss and gradients.
#[test]
fn logits_with_grads_reproduces_peft_loss_and_gradients() {
    let case = fixtures().join("llama-lora");
    let expected_path = case.join("expected.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.safetensors");
    let out = peft_cli(&[
        "logits",
        "--model",
        path_str(&case.join("base")),
        "--adapter",
        path_str(&case.join("adapter")),
        "--input",
        path_str(&expected_path),
        "--out",
        path_str(&out_path),
        "--grads",
        "--backend",
        "ndarray",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (expected, got) = (
        TensorFile::read(&expected_path),
        TensorFile::read(&out_path),
    );
    let (loss, want) = (got.floats("loss")[0], expected.floats("loss_peft")[0]);
    assert!(
        (loss - want).abs() / want.abs() <= 1e-5,
        "loss {loss} vs {want}"
    );
    let grad_keys: Vec<String> = got
        .names()
        .into_iter()
        .filter(|k| k.starts_with("grad."))
        .collect();
    assert_eq!(grad_keys.len(), 8, "{grad_keys:?}");
    for key in grad_keys {
        let (a, b) = (got.floats(&key), expected.floats(&key));
        let diff: f32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
            .sqrt();
        let norm: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
        assert!(diff / norm <= 1e-3, "{key}: relative L2 {}", diff / norm);
    }
}

/// `merge` writes a plain model folder whose logits are the adapter's.
#[test]
fn merged_folder_loads_and_reproduces_adapter_logits() {
    for case in ["gpt2-lora", "llama-lora"] {
        let dir = fixtures().join(case);
        let merged = tempfile::tempdir().unwrap();
        let merge_into = |out_dir: &Path| {
            peft_cli(&[
                "merge",
                "--model",
                path_str(&dir.join("base")),
                "--adapter",
                path_str(&dir.join("adapter")),
                "--out",
                path_str(out_dir),
                "--backend",
                "ndarray",
            ])
        };
        let out = merge_into(merged.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(
                merged.path().join(f).exists(),
                "{case}: merged folder lacks {f}"
            );
        }
        // What the user has is not overwritten: the model's folder, or a folder with files
        // (without --force).
        let base_weights = std::fs::read(dir.join("base/model.safetensors")).unwrap();
        for (out_dir, needle) in [
            (dir.join("base"), "model's own folder"),
            (merged.path().to_path_buf(), "--force"),
        ] {
            let out = merge_into(&out_dir);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && stderr.contains(needle), "{stderr}");
        }
        assert_eq!(
            std::fs::read(dir.join("base/model.safetensors")).unwrap(),
            base_weights
        );
        let logits_path = merged.path().join("logits.safetensors");
        let out = peft_cli(&[
            "logits",
            "--model",
            path_str(merged.path()),
            "--input",
            path_str(&dir.join("expected.safetensors")),
            "--out",
            path_str(&logits_path),
            "--backend",
            "ndarray",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (expected, got) = (
            TensorFile::read(&dir.join("expected.safetensors")),
            TensorFile::read(&logits_path),
        );
        let worst = max_masked_diff(
            &got.floats("logits"),
            &expected.floats("logits_peft"),
            &expected.ints("attention_mask"),
        );
        assert!(
            worst <= 1e-4,
            "{case}: merged model logits differ from PEFT's by {worst:e}"
        );
    }
}

#[test]
fn inspect_with_adapter_prints_peft_counts() {
    let case = fixtures().join("gpt2-lora");
    let stdout = peft_cli_ok(&[
        "inspect",
        "--model",
        path_str(&case.join("base")),
        "--adapter",
        path_str(&case.join("adapter")),
        "--backend",
        "ndarray",
    ]);

    assert!(
        stdout.contains("trainable params: 2048 || all params: 134912 || trainable%: 1.5180"),
        "{stdout}"
    );
    assert!(stdout.contains("lora r=4 scale=2"), "{stdout}");
}

#[test]
fn inspect_with_method_flags_reports_what_would_train() {
    let model = fixtures().join("llama-base").join("base");
    let stdout = peft_cli_ok(&[
        "inspect",
        "--model",
        path_str(&model),
        "--method",
        "lora",
        "--rank",
        "8",
        "--target",
        "q_proj,v_proj",
        "--backend",
        "ndarray",
    ]);

    // Same shapes as the llama-lora fixture: case.json says 3584 trainable of 139072.
    assert!(
        stdout.contains("trainable params: 3584 || all params: 139072"),
        "{stdout}"
    );
}

#[test]
fn bad_adapter_folder_is_named() {
    let model = fixtures().join("llama-base").join("base");
    let out = peft_cli(&[
        "inspect",
        "--model",
        path_str(&model),
        "--adapter",
        "/nonexistent/adapter",
        "--backend",
        "ndarray",
    ]);
    assert_fails_with(&out, &["/nonexistent/adapter", "adapter_config.json"]);
}

#[test]
fn wrongly_typed_config_value_names_its_key() {
    let dir = copy_base("llama-base");
    edit_config(dir.path(), |c| c["hidden_size"] = "big".into());
    assert_fails_with(&inspect(dir.path()), &["hidden_size", "config.json"]);
}

/// A tiny prompt/completion dataset in `dir`.
fn training_data(dir: &Path) -> PathBuf {
    let path = dir.join("train.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\":\"abc ->\",\"completion\":\" cba\"}\n\
         {\"prompt\":\"hello ->\",\"completion\":\" olleh\"}\n\
         {\"prompt\":\"rust ->\",\"completion\":\" tsur\"}\n",
    )
    .unwrap();
    path
}

/// Every piece of state a resume must restore: dropout, accumulation, warmup, a decaying
/// schedule and weight decay.
const RESUME_FLAGS: [&str; 18] = [
    "--target",
    "q_proj,v_proj,lm_head",
    "--dropout",
    "0.1",
    "--lr",
    "1e-2",
    "--batch-size",
    "2",
    "--grad-accum",
    "2",
    "--warmup-steps",
    "2",
    "--schedule",
    "cosine",
    "--weight-decay",
    "0.01",
    "--max-steps",
    "6",
];

/// `logits` of the llama-base fixture's batch with `adapter`, read back.
fn fixture_logits(adapter: &Path, dir: &Path) -> Vec<f32> {
    let out = dir.join("logits.safetensors");
    peft_cli_ok(&[
        "logits",
        "--backend",
        "ndarray",
        "--model",
        path_str(&fixtures().join("llama-base/base")),
        "--adapter",
        path_str(adapter),
        "--input",
        path_str(&fixtures().join("llama-base/expected.safetensors")),
        "--out",
        path_str(&out),
    ]);
    TensorFile::read(&out).floats("logits")
}

#[test]
fn train_resumes_bit_exactly_after_sigkill_during_a_checkpoint_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    let full = dir.path().join("full");
    let full_run = train_cli(
        &data,
        &full,
        &[&RESUME_FLAGS[..], &["--save-every", "2"]].concat(),
    );
    assert!(
        full_run.status.success(),
        "{}",
        String::from_utf8_lossy(&full_run.stderr)
    );

    // The same run, killed while its step-4 checkpoint is half written.
    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft-cli"))
        .args(train_args(
            &data,
            &killed,
            &[&RESUME_FLAGS[..], &["--save-every", "2"]].concat(),
        ))
        .env(peft_train::checkpoint::WRITE_DELAY_ENV, "1500")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = killed.join(".checkpoint-4.partial");
    let started = std::time::Instant::now();
    while !partial.join("adapter_model.safetensors").exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "the run never reached its step-4 checkpoint"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(killed.join("checkpoint-2/trainer_state.json").exists());
    assert!(
        !killed.join("checkpoint-4").exists(),
        "a half-written checkpoint looks complete"
    );

    let stdout = peft_cli_ok(&[
        "train",
        "--resume",
        path_str(&killed),
        "--backend",
        "ndarray",
    ]);
    assert!(stdout.contains("resumed from step 2"), "{stdout}");
    let a = std::fs::read(full.join("final/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("final/adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed run's adapter differs from the uninterrupted run's"
    );
    // Same losses, learning rates and norms at every step (timings differ, of course).
    let logged = |out: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let timings = v.as_object_mut().unwrap();
                timings.remove("tokens_per_s");
                timings.remove("step_ms");
                v
            })
            .collect()
    };
    assert_eq!(logged(&full), logged(&killed));
}

#[test]
fn train_dashboard_runs_under_a_pseudo_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    let out = dir.path().join("run");
    let command = format!(
        "{} train --backend ndarray --model {} --data {} --max-steps 3 --out {}",
        env!("CARGO_BIN_EXE_peft-cli"),
        path_str(&fixtures().join("llama-base/base")),
        path_str(&data),
        path_str(&out)
    );
    // `script` gives the command a pseudo-terminal, so Burn's dashboard is drawn.
    let status = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("TERM", "xterm-256color")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("`script` (util-linux) is installed");
    assert!(status.success());
    assert!(out.join("final/adapter_model.safetensors").exists());
}

#[test]
fn train_refuses_a_bad_configuration_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[training]\nlearning_rate = 1e-3\n").unwrap();
    assert_fails_with(
        &peft_cli(&[
            "train",
            "--config",
            path_str(&config),
            "--backend",
            "ndarray",
        ]),
        &["bad.toml", "learning_rate"],
    );
    std::fs::write(&config, "[training]\nlr = -1.0\n").unwrap();
    let data = training_data(dir.path());
    let base = fixtures().join("llama-base/base");
    assert_fails_with(
        &peft_cli(&[
            "train",
            "--config",
            path_str(&config),
            "--backend",
            "ndarray",
            "--model",
            path_str(&base),
            "--data",
            path_str(&data),
        ]),
        &["training.lr", "-1"],
    );
}

#[test]
fn an_option_of_another_method_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    let config = dir.path().join("prefix.toml");
    std::fs::write(&config, "[method]\nname = \"prefix\"\nrank = 4\n").unwrap();
    let out = dir.path().join("run");
    let with = |extra: &[&str]| train_cli(&data, &out, extra);
    assert_fails_with(
        &with(&["--config", path_str(&config)]),
        &["prefix.toml", "`method.rank`", "prefix", "virtual_tokens"],
    );
    assert_fails_with(
        &with(&["--method", "houlsby", "--rank", "4"]),
        &["--rank", "--method houlsby"],
    );
    assert!(
        !out.exists(),
        "a refused configuration wrote {}",
        out.display()
    );
}

#[test]
fn train_names_the_file_and_line_of_bad_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"text\":\"fine\"}\n{\"prompt\":\"no completion\"}\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    assert_fails_with(&train_cli(&data, &out, &[]), &["bad.jsonl:2", "completion"]);
    std::fs::write(&data, "{\"text\":\"fine\"}\nnot json\n").unwrap();
    assert_fails_with(
        &train_cli(&data, &out, &[]),
        &["bad.jsonl:2", "not valid JSON"],
    );
}

#[test]
fn train_names_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.jsonl");
    let out = dir.path().join("run");
    assert_fails_with(&train_cli(&missing, &out, &[]), &["nowhere.jsonl"]);
    assert_fails_with(
        &peft_cli(&["train", "--config", path_str(&dir.path().join("none.toml"))]),
        &["none.toml"],
    );
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("train_config.toml"), "").unwrap();
    assert_fails_with(
        &peft_cli(&["train", "--resume", path_str(&out), "--backend", "ndarray"]),
        &["no model given"],
    );
}

#[test]
fn train_guards_against_empty_data_and_a_useless_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    // 1e-50 is 0 in f32: the adapter cannot move, and both guards say so.
    let slow = train_cli(
        &data,
        &dir.path().join("run"),
        &["--max-steps", "3", "--lr", "1e-50"],
    );
    assert!(slow.status.success());
    let stderr = String::from_utf8_lossy(&slow.stderr);
    assert!(stderr.contains("far below"), "{stderr}");
    assert!(
        stderr.contains("have not changed after 2 optimizer steps"),
        "{stderr}"
    );
    // Plain log lines when stdout is not a terminal.
    assert!(String::from_utf8_lossy(&slow.stdout).contains("step 3/3  loss"));

    // Every prompt is longer than --seq-len: nothing left to learn.
    assert_fails_with(
        &train_cli(&data, &dir.path().join("empty"), &["--seq-len", "2"]),
        &["train.jsonl", "no example left"],
    );
}

/// A short run that memorises the training data: four steps at a high rate, the head adapted.
const SHORT_RUN: [&str; 6] = [
    "--max-steps",
    "4",
    "--lr",
    "1e-2",
    "--target",
    "q_proj,v_proj,lm_head",
];

#[test]
fn train_final_adapter_loads_with_the_adapter_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    let out = dir.path().join("run");
    let run = train_cli(&data, &out, &SHORT_RUN);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The last checkpoint is the state training ended with; the final adapter must equal it,
    // and differ from the base model.
    let final_logits = fixture_logits(&out.join("final"), dir.path());
    assert_eq!(
        final_logits,
        fixture_logits(&out.join("checkpoint-4"), dir.path())
    );
    let expected = TensorFile::read(&fixtures().join("llama-base/expected.safetensors"));
    assert!(
        max_masked_diff(
            &final_logits,
            &expected.floats("logits_base"),
            &expected.ints("attention_mask")
        ) > 1e-3
    );
}

/// `train --gradient-checkpointing` trains as the plain run does without dropout: the same
/// losses at every step and an adapter giving the same logits (to 1e-5); with dropout (the
/// default 0.05) it trains too, its masks replayed in the recomputed layers.
#[test]
fn train_with_gradient_checkpointing_follows_the_plain_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let flags: Vec<&str> = SHORT_RUN.iter().chain(extra).copied().collect();
        let run = train_cli(&data, &out, &flags);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .collect();
        (losses, fixture_logits(&out.join("final"), dir.path()))
    };
    let (plain_losses, plain_logits) = run("plain", &["--dropout", "0"]);
    let (losses, logits) = run(
        "checkpointed",
        &["--dropout", "0", "--gradient-checkpointing"],
    );
    assert_eq!(losses.len(), 4, "one loss per step");
    for (got, want) in losses.iter().zip(&plain_losses) {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{losses:?} vs {plain_losses:?}"
        );
    }
    let scale = plain_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = plain_logits
        .iter()
        .zip(&logits)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-5 * scale, "final logits differ by {diff}");

    let (dropout_losses, _) = run("dropout", &["--gradient-checkpointing"]);
    assert!(
        dropout_losses.iter().all(|l| l.is_finite()) && dropout_losses != plain_losses,
        "{dropout_losses:?}"
    );
}

#[test]
fn train_scores_test_data_before_and_after_and_eval_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    let out = dir.path().join("run");
    let extra = [
        "--target",
        "q_proj,v_proj,lm_head",
        "--lr",
        "1e-2",
        "--max-steps",
        "12",
        "--dropout",
        "0",
        "--test",
        path_str(&data),
    ];
    let run = train_cli(&data, &out, &extra);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        stdout.contains("exact match") && stdout.contains("before") && stdout.contains("after"),
        "{stdout}"
    );
    let scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("test_scores.json")).unwrap())
            .unwrap();
    let (before, after) = (&scores["before"], &scores["after"]);
    assert!(after["loss"].as_f64().unwrap() < before["loss"].as_f64().unwrap());
    assert_eq!(after["samples"].as_array().unwrap().len(), 3);

    let eval = |extra: &[&str]| -> serde_json::Value {
        let base = fixtures().join("llama-base/base");
        let final_dir = out.join("final");
        let mut args = vec![
            "eval",
            "--backend",
            "ndarray",
            "--model",
            path_str(&base),
            "--adapter",
            path_str(&final_dir),
            "--data",
            path_str(&data),
            "--json",
        ];
        args.extend(extra);
        serde_json::from_str(&peft_cli_ok(&args)).expect("--json prints JSON")
    };
    let unmerged = eval(&[]);
    let merged = eval(&["--merge"]);
    // `train` scores the merged adapter; `eval` without --merge runs it factored.
    for report in [&unmerged, &merged] {
        let loss = report["loss"].as_f64().unwrap();
        assert!(
            (loss - after["loss"].as_f64().unwrap()).abs() < 1e-4,
            "{loss}"
        );
        assert_eq!(report["exact_match"], after["exact_match"]);
    }

    let missing = dir.path().join("missing.jsonl");
    let out = peft_cli(&[
        "eval",
        "--model",
        path_str(&fixtures().join("llama-base/base")),
        "--data",
        path_str(&missing),
    ]);
    assert_fails_with(&out, &["missing.jsonl"]);
}

/// `--method` and the flags each method is trained with in [`every_method_runs_through_every_command`].
const METHODS: [(&str, &[&str]); 7] = [
    ("lora", &["--rank", "4"]),
    ("dora", &["--rank", "4"]),
    ("prefix", &["--virtual-tokens", "4", "--prefix-projection"]),
    ("prompt", &["--virtual-tokens", "3", "--init-text", "abc"]),
    ("ia3", &[]),
    ("houlsby", &["--reduction-factor", "4", "--layer-norm"]),
    (
        "pfeiffer",
        &["--reduction-factor", "8", "--non-linearity", "gelu"],
    ),
];

#[test]
fn every_method_runs_through_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    for case in ["gpt2-base", "llama-base"] {
        let base = fixtures().join(case).join("base");
        let expected = fixtures().join(case).join("expected.safetensors");
        let common = |command: &'static str| -> Vec<String> {
            [command, "--backend", "ndarray", "--model", path_str(&base)]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let run =
            |args: Vec<String>| peft_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let ok = |args: Vec<String>| -> String {
            let out = run(args.clone());
            assert!(
                out.status.success(),
                "{case}: {args:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        for (method, flags) in METHODS {
            let what = format!("{case} {method}");
            let out = dir.path().join(format!("{case}-{method}"));
            let mut train = common("train");
            train.extend(
                [
                    "--method",
                    method,
                    "--data",
                    path_str(&data),
                    "--out",
                    path_str(&out),
                    "--max-steps",
                    "2",
                    "--lr",
                    "1e-2",
                    "--test",
                    path_str(&data),
                ]
                .iter()
                .chain(flags)
                .map(|s| s.to_string()),
            );
            let stdout = ok(train);
            assert!(stdout.contains("exact match"), "{what}: {stdout}");
            let adapter = out.join("final");
            let config: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            let peft_type = match method {
                "lora" | "dora" => "LORA",
                "prefix" => "PREFIX_TUNING",
                "prompt" => "PROMPT_TUNING",
                "ia3" => "IA3",
                _ => "BOTTLENECK",
            };
            assert_eq!(config["peft_type"], peft_type, "{what}");
            let with_adapter = |command: &'static str, extra: &[&str]| -> Vec<String> {
                let mut args = common(command);
                args.extend(
                    ["--adapter", path_str(&adapter)]
                        .iter()
                        .chain(extra)
                        .map(|s| s.to_string()),
                );
                args
            };

            let report = ok(with_adapter("inspect", &[]));
            assert!(report.contains("trainable params: "), "{what}: {report}");

            let logits = dir
                .path()
                .join(format!("{case}-{method}-logits.safetensors"));
            ok(with_adapter(
                "logits",
                &[
                    "--input",
                    path_str(&expected),
                    "--out",
                    path_str(&logits),
                    "--grads",
                ],
            ));
            let file = TensorFile::read(&logits);
            let virtual_tokens = if method == "prompt" { 3 } else { 0 };
            assert_eq!(
                file.shape("logits"),
                vec![2, 16 + virtual_tokens, 384],
                "{what}"
            );
            let grads: Vec<String> = file
                .names()
                .into_iter()
                .filter(|n| n.starts_with("grad."))
                .collect();
            assert!(
                !grads.is_empty(),
                "{what}: no gradients in {:?}",
                file.names()
            );
            assert!(
                grads
                    .iter()
                    .all(|g| file.floats(g).iter().all(|v| v.is_finite())),
                "{what}: non-finite gradient"
            );

            let text = ok(with_adapter(
                "generate",
                &["--prompt", "abc ->", "--max-new-tokens", "3"],
            ));
            assert!(!text.is_empty(), "{what}: generate printed nothing");

            let eval: serde_json::Value = serde_json::from_str(&ok(with_adapter(
                "eval",
                &["--data", path_str(&data), "--json"],
            )))
            .unwrap();
            assert!(eval["loss"].as_f64().unwrap().is_finite(), "{what}: {eval}");

            let merged = dir.path().join(format!("{case}-{method}-merged"));
            let merge = run(with_adapter("merge", &["--out", path_str(&merged)]));
            if ["lora", "dora", "ia3"].contains(&method) {
                assert!(
                    merge.status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&merge.stderr)
                );
                // The merged folder alone gives the adapter's logits.
                let plain = dir
                    .path()
                    .join(format!("{case}-{method}-plain.safetensors"));
                let mut args = common("logits");
                args[4] = path_str(&merged).to_string();
                args.extend(
                    ["--input", path_str(&expected), "--out", path_str(&plain)].map(String::from),
                );
                ok(args);
                let mask = TensorFile::read(&expected).ints("attention_mask");
                let diff = max_masked_diff(
                    &TensorFile::read(&plain).floats("logits"),
                    &file.floats("logits"),
                    &mask,
                );
                assert!(diff <= 1e-4, "{what}: merged logits differ by {diff}");
            } else {
                assert_fails_with(&merge, &["cannot be merged"]);
                assert!(
                    !merged.exists(),
                    "{what}: a refused merge wrote {}",
                    merged.display()
                );
            }
        }
    }
}

#[test]
fn a_prefix_trained_through_its_mlp_resumes_on_the_folded_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let data = training_data(dir.path());
    let out = dir.path().join("run");
    let flags = [
        "--method",
        "prefix",
        "--prefix-projection",
        "--virtual-tokens",
        "4",
        "--lr",
        "1e-2",
        "--max-steps",
        "2",
    ];
    let first = train_cli(&data, &out, &flags);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let resumed = peft_cli(&[
        "train",
        "--resume",
        path_str(&out),
        "--max-steps",
        "4",
        "--backend",
        "ndarray",
    ]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("folded prefix"), "{stderr}");
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resumed from step 2"));
    // The folded prefix moved on from the checkpoint it resumed from.
    assert_ne!(
        fixture_logits(&out.join("final"), dir.path()),
        fixture_logits(&out.join("checkpoint-2"), dir.path())
    );
}

/// `--dtype` and `--quantize` combinations that cannot run are refused, naming them: bf16 on
/// ndarray (no bf16 arithmetic), a packed base in bf16, merging into a packed base; and
/// `train` refuses a quantized base for full fine-tuning by its configuration key.
#[test]
fn unsupported_dtype_and_quantize_combinations_are_refused_by_name() {
    let dir = fixtures().join("llama-lora");
    let base = dir.join("base");
    let model = path_str(&base);
    let adapter = dir.join("adapter");
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("merged");
    let run = |args: &[&str]| {
        let out = peft_cli(args);
        assert!(!out.status.success(), "{args:?} ran");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&[
        "inspect",
        "--model",
        model,
        "--backend",
        "ndarray",
        "--dtype",
        "bf16",
    ]);
    assert!(err.contains("ndarray") && err.contains("bf16"), "{err}");
    let err = run(&[
        "inspect",
        "--model",
        model,
        "--backend",
        "flex",
        "--dtype",
        "f16",
        "--quantize",
        "q4",
    ]);
    assert!(err.contains("--quantize") && err.contains("f16"), "{err}");
    let err = run(&[
        "merge",
        "--model",
        model,
        "--adapter",
        path_str(&adapter),
        "--out",
        path_str(&merged),
        "--backend",
        "ndarray",
        "--quantize",
        "q8",
    ]);
    assert!(err.contains("--quantize") && err.contains("merge"), "{err}");
    let err = run(&[
        "train",
        "--model",
        model,
        "--data",
        "unused.jsonl",
        "--method",
        "full",
        "--quantize",
        "q4",
        "--backend",
        "ndarray",
    ]);
    assert!(err.contains("model.quantize"), "{err}");
}
