//! Autoregressive generation with the key/value cache: greedy, or sampled with temperature,
//! top-k and top-p from a seeded generator.

use burn::tensor::{Device, Int, Tensor, TensorData};
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
    if prompt.is_empty() {
        return Err(ModelError::InvalidInput(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    model.check_input(
        prompt.iter().map(|&t| t as i64),
        prompt.len() + config.max_new_tokens,
    )?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut cache = model.new_cache();
    let mut generated = Vec::new();
    let mut input = ids_tensor(prompt, device);
    for _ in 0..config.max_new_tokens {
        let logits = model.forward(input, None, Some(&mut cache));
        let [_, seq, vocab] = logits.dims();
        let last = logits
            .slice([0..1, seq - 1..seq, 0..vocab])
            .reshape([vocab]);
        let next = if config.temperature <= 0.0 {
            read_ints(last.argmax(0))?[0] as u32
        } else {
            sample(read_floats(last)?, config, &mut rng)
        };
        if config.eos_token_ids.contains(&next) {
            break;
        }
        generated.push(next);
        on_token(next)?;
        input = ids_tensor(&[next], device);
    }
    Ok(generated)
}

fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
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
