//! Generation of several prompts in one left-padded batch against each prompt alone, on the
//! PEFT fixtures with every kind of adapter: the last position's logits of a left-padded row
//! equal the unpadded prompt's to 1e-4 (positions count from the row's first real token,
//! virtual tokens included), and greedy continuations are the same ids, on ndarray, flex and
//! wgpu.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::*;
use peft_models::generate::{generate, generate_batch, SamplingConfig};
use peft_models::LoadedModel;

/// New tokens per prompt.
const NEW_TOKENS: usize = 6;

/// Prompts of different lengths cut from the fixture's first input row.
fn prompts(name: &str) -> Vec<Vec<u32>> {
    let row: Vec<u32> = Expected::load(name).i64("input_ids").values[..16]
        .iter()
        .map(|&t| t as u32)
        .collect();
    vec![row[..9].to_vec(), row[3..7].to_vec(), row[1..14].to_vec()]
}

/// Greedy decoding of `NEW_TOKENS` tokens, no stop token.
fn greedy() -> SamplingConfig {
    SamplingConfig {
        max_new_tokens: NEW_TOKENS,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
        eos_token_ids: Vec::new(),
    }
}

/// The last position's logits of each prompt alone.
fn last_logits_alone(loaded: &LoadedModel, prompt: &[u32], device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, prompt.len()]), device);
    let logits = loaded.model.forward(ids, None, None);
    let [_, seq, vocab] = logits.dims();
    to_vec(logits.slice([0..1, seq - 1..seq, 0..vocab]))
}

/// The last column's logits of the prompts left-padded into one batch, row by row.
fn last_logits_padded(loaded: &LoadedModel, prompts: &[Vec<u32>], device: &Device) -> Vec<f32> {
    let width = prompts.iter().map(Vec::len).max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(prompt.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let shape = [prompts.len(), width];
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), device);
    let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, shape), device);
    // Prompt tuning's virtual tokens come first: the last column is the last prompt token.
    let logits = loaded.model.forward(ids, Some(&mask), None);
    let [batch, seq, vocab] = logits.dims();
    to_vec(logits.slice([0..batch, seq - 1..seq, 0..vocab]))
}

/// Largest |difference| between row `row` of the padded batch's last logits and `prompt` alone.
fn padding_error(
    loaded: &LoadedModel,
    padded: &[f32],
    row: usize,
    prompt: &[u32],
    device: &Device,
) -> f32 {
    let vocab = loaded.model.vocab_size();
    let alone = last_logits_alone(loaded, prompt, device);
    padded[row * vocab..(row + 1) * vocab]
        .iter()
        .zip(&alone)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

fn check(case: &Case, device: &Device) {
    let name = case.name();
    let loaded = case.load(device);
    let prompts = prompts(name);
    let padded = last_logits_padded(&loaded, &prompts, device);
    for (row, prompt) in prompts.iter().enumerate() {
        let diff = padding_error(&loaded, &padded, row, prompt, device);
        assert!(
            diff <= LOGITS_TOLERANCE,
            "{name} on {device:?}: row {row} (length {}) left-padded differs by {diff:e}",
            prompt.len()
        );
    }
    let config = greedy();
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let batched = generate_batch(&loaded.model, &refs, &config, device).unwrap();
    for (prompt, got) in prompts.iter().zip(&batched) {
        let alone = generate(&loaded.model, prompt, &config, device, |_| Ok(())).unwrap();
        assert_eq!(alone.len(), NEW_TOKENS);
        assert_eq!(
            got,
            &alone,
            "{name} on {device:?}: batched greedy continuation of a {}-token prompt",
            prompt.len()
        );
    }
}

#[test]
fn a_row_that_stops_leaves_the_others_running() {
    let device = Device::flex();
    let loaded = ADAPTER_CASES[1].load(&device);
    let prompts = prompts(ADAPTER_CASES[1].name());
    let mut config = greedy();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| generate(&loaded.model, p, &config, &device, |_| Ok(())).unwrap())
        .collect();
    // The first row's third token ends it; rows that never choose it run to the limit.
    let stop = alone[0][2];
    config.eos_token_ids = vec![stop];
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let batched = generate_batch(&loaded.model, &refs, &config, &device).unwrap();
    for (row, (got, full)) in batched.iter().zip(&alone).enumerate() {
        let until_stop: Vec<u32> = full.iter().copied().take_while(|&t| t != stop).collect();
        assert_eq!(got, &until_stop, "row {row}");
    }
    assert!(batched[0].len() <= 2, "the first row stopped");
}

#[test]
fn ndarray() {
    ADAPTER_CASES
        .iter()
        .for_each(|case| check(case, &ndarray_device()));
}

#[test]
fn flex() {
    ADAPTER_CASES
        .iter()
        .for_each(|case| check(case, &Device::flex()));
}

/// WGPU on the CPU is slow: LoRA on LLaMA (RoPE) and prompt tuning on GPT-2 (learned positions).
#[test]
fn wgpu() {
    [&ADAPTER_CASES[1], &ADAPTER_CASES[4]]
        .into_iter()
        .for_each(|case| check(case, &wgpu_device()));
}

/// Property (fixed case budget): for any prompts, left padding leaves each row's last logits
/// as the prompt alone gives them (the padding mask and the positions counted from it), for
/// every adapter kind on flex.
#[test]
fn left_padding_never_changes_a_rows_last_logits() {
    use proptest::collection::vec;
    let device = Device::flex();
    for case in &ADAPTER_CASES {
        let loaded = case.load(&device);
        let vocab = loaded.model.vocab_size();
        let prompts = vec(vec(1..vocab as u32, 1..10), 1..4);
        fuzz_runner(12)
            .run(&prompts, |prompts| {
                let padded = last_logits_padded(&loaded, &prompts, &device);
                for (row, prompt) in prompts.iter().enumerate() {
                    let diff = padding_error(&loaded, &padded, row, prompt, &device);
                    proptest::prop_assert!(
                        diff <= LOGITS_TOLERANCE,
                        "{}: row {row} of {prompts:?} differs by {diff:e}",
                        case.name()
                    );
                }
                Ok(())
            })
            .unwrap();
    }
}
