//! Autoregressive generation with the key/value cache, one prompt or a left-padded batch of
//! them: greedy, or sampled with temperature, top-k and top-p from a seeded generator.

use burn::tensor::{Device, Int, Tensor, TensorData};
use peft_core::precision::to_f32;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::model::CausalLm;

/// How the next token is chosen and when generation stops.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` before sampling.
    pub top_p: Option<f32>,
    /// Seed of the sampling generator.
    pub seed: u64,
    /// Ids that end generation (not passed to the callback).
    pub eos_token_ids: Vec<u32>,
}

/// Continues `prompt` and returns the new ids (EOS excluded). `on_token` sees each new id as it
/// is chosen, e.g. to stream text.
pub fn generate(
    model: &CausalLm,
    prompt: &[u32],
    config: &SamplingConfig,
    device: &Device,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let mut rows = generate_rows(model, &[prompt], config, device, |_, id| on_token(id))?;
    Ok(rows.pop().unwrap_or_default())
}

/// Continues every prompt in one batch (left-padded, one key/value cache) and returns each
/// one's new ids (EOS excluded), in the order of `prompts`. Each row stops on its own; the
/// batch runs until every row has stopped. Each row samples from its own generator seeded
/// with `config.seed`, so a row continues as [`generate`] would continue its prompt alone (up
/// to float rounding, which can tip a near tie).
pub fn generate_batch(
    model: &CausalLm,
    prompts: &[&[u32]],
    config: &SamplingConfig,
    device: &Device,
) -> Result<Vec<Vec<u32>>> {
    generate_rows(model, prompts, config, device, |_, _| Ok(()))
}

/// [`generate_batch`] with `on_token(row, id)` called for each new id.
fn generate_rows(
    model: &CausalLm,
    prompts: &[&[u32]],
    config: &SamplingConfig,
    device: &Device,
    mut on_token: impl FnMut(usize, u32) -> Result<()>,
) -> Result<Vec<Vec<u32>>> {
    for prompt in prompts {
        if prompt.is_empty() {
            return Err(ModelError::InvalidInput(
                "the prompt is empty: give at least one token".into(),
            ));
        }
        model.check_input(prompt.iter().map(|&t| t as i64), prompt.len())?;
    }
    let batch = prompts.len();
    let mut generated = vec![Vec::new(); batch];
    if batch == 0 {
        return Ok(generated);
    }
    let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    // Generation ends at the model's context, whatever `max_new_tokens` asks.
    let max_new_tokens = model.new_token_room(width, config.max_new_tokens)?;
    // Left padding puts every row's last token in the last column; the padding mask keeps
    // the pads out of attention and numbers each row's positions from its first real token.
    let padded = prompts.iter().any(|p| p.len() < width);
    let mut ids = Vec::with_capacity(batch * width);
    let mut mask = Vec::with_capacity(batch * width);
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let mut padding_mask =
        padded.then(|| Tensor::<2, Int>::from_data(TensorData::new(mask, [batch, width]), device));
    let mut input = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, width]), device);
    let mut rngs: Vec<StdRng> = (0..batch)
        .map(|_| StdRng::seed_from_u64(config.seed))
        .collect();
    let mut running = vec![true; batch];
    let mut cache = model.new_cache();
    for _ in 0..max_new_tokens {
        let hidden = model.hidden_states(input, padding_mask.as_ref(), Some(&mut cache));
        let [_, seq, dim] = hidden.dims();
        // Only the last position's logits are needed.
        let last = hidden.slice([0..batch, seq - 1..seq, 0..dim]);
        let logits = to_f32(model.lm_head().forward(last)).reshape([batch, model.vocab_size()]);
        let next: Vec<u32> = if config.temperature <= 0.0 {
            read_ints(logits.argmax(1).reshape([batch]))?
                .into_iter()
                .map(|id| id as u32)
                .collect()
        } else {
            let vocab = model.vocab_size();
            let floats = read_floats(logits.reshape([batch * vocab]))?;
            floats
                .chunks(vocab)
                .zip(&mut rngs)
                .map(|(row, rng)| sample(row.to_vec(), config, rng))
                .collect()
        };
        for (row, &id) in next.iter().enumerate() {
            if !running[row] {
                continue;
            }
            if config.eos_token_ids.contains(&id) {
                running[row] = false;
            } else {
                generated[row].push(id);
                on_token(row, id)?;
            }
        }
        if !running.iter().any(|&r| r) {
            break;
        }
        // A stopped row keeps running on its last choice; nothing reads what it computes.
        let step: Vec<i64> = next.iter().map(|&id| id as i64).collect();
        input = Tensor::from_data(TensorData::new(step, [batch, 1]), device);
        padding_mask = padding_mask
            .map(|mask| Tensor::cat(vec![mask, Tensor::<2, Int>::ones([batch, 1], device)], 1));
    }
    Ok(generated)
}

fn read_floats(t: Tensor<1>) -> Result<Vec<f32>> {
    t.try_into_data()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))?
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))
}

fn read_ints(t: Tensor<1, Int>) -> Result<Vec<i64>> {
    t.try_into_data()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))?
        .try_into_vec_as::<i64>()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))
}

/// Draws a token from `logits` after temperature, top-k and top-p, as transformers' logits
/// warpers apply them (in that order).
fn sample(logits: Vec<f32>, config: &SamplingConfig, rng: &mut StdRng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = config.top_k {
        order.truncate(k.max(1));
    }
    let max = logits[order[0]];
    let mut probs: Vec<f32> = order
        .iter()
        .map(|&i| ((logits[i] - max) / config.temperature).exp())
        .collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = config.top_p {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                cumulative += q;
                cumulative >= p
            })
            .map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut target = rng.random::<f32>() * total;
    for (&token, &p) in order.iter().zip(&probs) {
        if target < p {
            return token as u32;
        }
        target -= p;
    }
    order[order.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(top_k: Option<usize>, top_p: Option<f32>) -> SamplingConfig {
        SamplingConfig {
            max_new_tokens: 1,
            temperature: 1.0,
            top_k,
            top_p,
            seed: 0,
            eos_token_ids: vec![],
        }
    }

    #[test]
    fn top_k_one_is_argmax() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            assert_eq!(
                sample(vec![0.1, 3.0, 2.9, -1.0], &config(Some(1), None), &mut rng),
                1
            );
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~[0.87, 0.12, 0.01]: p = 0.5 leaves only token 0.
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            assert_eq!(
                sample(vec![4.0, 2.0, -0.5], &config(None, Some(0.5)), &mut rng),
                0
            );
        }
    }

    #[test]
    fn sampling_is_seeded() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..16)
                .map(|_| sample(vec![1.0, 1.1, 0.9, 1.05], &config(None, None), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }
}
