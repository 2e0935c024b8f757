//! The base models against transformers: logits, greedy continuation with the KV cache, and
//! cached against uncached logits, on every CPU-capable backend (wgpu runs on lavapipe in CI).

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use peft_models::generate::{generate, SamplingConfig};
use peft_models::load_model;

const CASES: [&str; 2] = ["gpt2-base", "llama-base"];

fn check_logits(case: &str, device: &Device) {
    let expected = Expected::load(case);
    let ids = expected.i64("input_ids");
    let mask = expected.i64("attention_mask");
    let reference = expected.f32("logits_base");
    let loaded = load_model(&case_dir(case).join("base"), device).expect("fixture loads");
    let logits = loaded.model.forward(
        int_tensor(&ids, device),
        Some(&int_tensor(&mask, device)),
        None,
    );
    assert_eq!(logits.dims().to_vec(), reference.shape);
    let vocab = reference.shape[2];
    let err = max_abs_diff_masked(&to_vec(logits), &reference.values, &mask.values, vocab);
    eprintln!("{case} on {device:?}: max abs logit error {err:e}");
    assert!(
        err <= LOGITS_TOLERANCE,
        "{case}: max abs logit error {err:e} > {LOGITS_TOLERANCE:e}"
    );
}

fn check_greedy(case: &str, device: &Device) {
    let expected = Expected::load(case);
    let ids = expected.i64("input_ids");
    let greedy = expected.i64("greedy_base");
    let prompt: Vec<u32> = ids.values[..8].iter().map(|&t| t as u32).collect();
    let loaded = load_model(&case_dir(case).join("base"), device).expect("fixture loads");
    let config = SamplingConfig {
        max_new_tokens: greedy.values.len(),
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
        eos_token_ids: loaded.eos_token_ids.clone(),
    };
    let out =
        generate(&loaded.model, &prompt, &config, device, |_| Ok(())).expect("generation runs");
    let want: Vec<u32> = greedy.values.iter().map(|&t| t as u32).collect();
    assert_eq!(
        out, want,
        "{case}: greedy continuation differs from transformers'"
    );
}

/// Feeds row 0 in pieces through the cache and compares with one uncached pass.
fn check_cache(case: &str, device: &Device) {
    let expected = Expected::load(case);
    let ids = expected.i64("input_ids");
    let seq = ids.shape[1];
    let row: Vec<i64> = ids.values[..seq].to_vec();
    let loaded = load_model(&case_dir(case).join("base"), device).expect("fixture loads");
    let model = &loaded.model;
    let row_ids = Array {
        shape: vec![1, seq],
        values: row.clone(),
    };
    let full = to_vec(model.forward(int_tensor(&row_ids, device), None, None));
    let mut cache = model.new_cache();
    let mut pieces = Vec::new();
    for range in [0..8, 8..9, 9..12, 12..seq] {
        let piece = Array {
            shape: vec![1, range.len()],
            values: row[range].to_vec(),
        };
        pieces.push(model.forward(int_tensor(&piece, device), None, Some(&mut cache)));
    }
    assert_eq!(cache.len(), seq);
    let cached = to_vec(Tensor::cat(pieces, 1));
    let vocab = loaded.config.vocab_size();
    let err = max_abs_diff_masked(&cached, &full, &vec![1; seq], vocab);
    assert!(
        err <= LOGITS_TOLERANCE,
        "{case}: cached vs uncached logits differ by {err:e}"
    );
}

macro_rules! backend_tests {
    ($backend:ident, $device:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn logits_match_transformers() {
                for case in CASES {
                    check_logits(case, &$device);
                }
            }

            #[test]
            fn greedy_matches_transformers_with_kv_cache() {
                for case in CASES {
                    check_greedy(case, &$device);
                }
            }

            #[test]
            fn cached_logits_equal_uncached() {
                for case in CASES {
                    check_cache(case, &$device);
                }
            }
        }
    };
}

backend_tests!(ndarray, ndarray_device());
backend_tests!(flex, Device::flex());
backend_tests!(wgpu, wgpu_device());
