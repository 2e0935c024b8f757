//! What the command-line tests share: running `peft-cli`, the fixtures, breaking a copy of
//! one, and asserting a clean failure that names the culprit.
#![allow(dead_code)] // each test binary uses its own share of these

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

pub fn fixtures() -> PathBuf {
    std::env::var_os("PEFT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/hf-peft")
        })
}

pub fn peft_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft-cli"))
        .args(args)
        .output()
        .expect("peft-cli runs")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `peft-cli`, asserts success and returns its stdout.
pub fn peft_cli_ok(args: &[&str]) -> String {
    let out = peft_cli(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a clean failure whose message contains every one of `needles`.
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit status 1; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "panicked instead of an error:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "message lacks {needle:?}:\n{stderr}"
        );
    }
}

/// A copy of a fixture's base model folder that a test may break.
pub fn copy_base(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join(case).join("base")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Rewrites `model.safetensors` in `dir` through `edit`, which gets (name, dtype, shape, bytes).
pub fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

pub fn inspect(dir: &Path) -> Output {
    peft_cli(&["inspect", "--model", path_str(dir), "--backend", "ndarray"])
}

/// `train` on the llama-base fixture with `data`, writing to `out`, plus `extra` flags.
pub fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let base = fixtures().join("llama-base/base");
    let fixed = [
        "train",
        "--backend",
        "ndarray",
        "--model",
        path_str(&base),
        "--data",
        path_str(data),
        "--out",
        path_str(out),
    ];
    fixed.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// Runs [`train_args`].
pub fn train_cli(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let args = train_args(data, out, extra);
    peft_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
}
