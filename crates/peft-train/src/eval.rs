//! Evaluating a model on a JSONL file: loss and perplexity over the tokens the data says to
//! learn, and, for records with a prompt (`{"prompt","completion"}`, or a conversation ending
//! with an assistant turn), greedy generation scored by exact match against the expected answer.

use std::path::Path;

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use peft_models::chat::apply_chat_template;
use peft_models::generate::{generate_batch, SamplingConfig};
use peft_models::loss::lm_loss;
use peft_models::{CausalLm, LoadedModel, TextTokenizer};
use serde::Serialize;

use crate::batch::LmBatch;
use crate::data::{check_lengths, eos_id, Record, Tokenization};
use crate::error::{Result, TrainError};

/// How an evaluation runs.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Longest example for the loss; longer ones are truncated.
    pub seq_len: usize,
    /// Examples per forward pass for the loss, and prompts answered together.
    pub batch_size: usize,
    /// Longest generated answer, in tokens.
    pub max_new_tokens: usize,
    /// Evaluate only the first N records.
    pub limit: Option<usize>,
    /// Generate and score answers (otherwise only the loss).
    pub generate: bool,
}

/// One generated answer next to the expected one.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Which record of the file (1-based; blank lines are not records).
    pub record: usize,
    /// The expected answer.
    pub expected: String,
    /// What the model wrote (special tokens left out).
    pub generated: String,
    /// Whether the two are equal, ignoring surrounding whitespace.
    pub exact_match: bool,
}

/// The result of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Records evaluated.
    pub examples: usize,
    /// Mean next-token loss over every learned token.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Tokens the loss is averaged over.
    pub learned_tokens: usize,
    /// Fraction of generated answers equal to the expected ones; `None` without prompts.
    pub exact_match: Option<f64>,
    /// Every generated answer, in file order.
    pub samples: Vec<Sample>,
}

impl EvalReport {
    /// One report for the union of disjoint parts: the loss averaged over all their learned
    /// tokens, the answers in record order.
    pub fn combine(parts: Vec<EvalReport>) -> EvalReport {
        let learned_tokens: usize = parts.iter().map(|p| p.learned_tokens).sum();
        let loss_sum: f64 = parts.iter().map(|p| p.loss * p.learned_tokens as f64).sum();
        let loss = loss_sum / learned_tokens.max(1) as f64;
        let any_exact = parts.iter().any(|p| p.exact_match.is_some());
        let mut samples: Vec<Sample> = parts.iter().flat_map(|p| p.samples.clone()).collect();
        samples.sort_by_key(|s| s.record);
        let matches = samples.iter().filter(|s| s.exact_match).count();
        EvalReport {
            examples: parts.iter().map(|p| p.examples).sum(),
            loss,
            perplexity: loss.exp(),
            learned_tokens,
            exact_match: any_exact.then(|| matches as f64 / samples.len().max(1) as f64),
            samples,
        }
    }
}

/// What the model is evaluated with.
pub struct Evaluator<'a> {
    /// The model (in inference mode: no dropout).
    pub model: &'a CausalLm,
    /// Its tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// Ids that end an answer; the first is appended to examples as training does.
    pub eos_token_ids: Vec<u32>,
    /// Where it runs.
    pub device: &'a Device,
}

impl Evaluator<'_> {
    /// Evaluates `records` read from `path` (named in errors), showing a progress bar on a terminal.
    pub fn run(
        &self,
        path: &Path,
        records: &[Record],
        settings: &EvalSettings,
    ) -> Result<EvalReport> {
        let records = &records[..settings.limit.unwrap_or(records.len()).min(records.len())];
        let eos_id = *self
            .eos_token_ids
            .first()
            .ok_or_else(|| TrainError::InvalidValue {
                key: "model".into(),
                message: "the model names no end-of-sequence token, which evaluation needs".into(),
            })?;
        let tokenization = Tokenization {
            tokenizer: self.tokenizer,
            eos_id,
            seq_len: settings.seq_len,
            vocab_size: self.model.vocab_size(),
        };
        let examples = tokenization.examples(path, records)?;
        check_lengths(self.model, path, &examples, settings.seq_len)?;
        if examples.is_empty() {
            return Err(TrainError::InvalidValue {
                key: "data".into(),
                message: format!("{} has no example with tokens to score", path.display()),
            });
        }
        let prompts: Vec<(usize, Vec<u32>, String)> = if settings.generate {
            records
                .iter()
                .enumerate()
                .filter_map(|(i, record)| {
                    let pair = self.prompt_and_answer(record).transpose()?;
                    Some(pair.map(|(prompt, answer)| (i + 1, prompt, answer)))
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let batches = examples.len().div_ceil(settings.batch_size.max(1));
        let progress = progress_bar((batches + prompts.len()) as u64);
        let (mut loss_sum, mut learned) = (0.0, 0usize);
        for chunk in examples.chunks(settings.batch_size.max(1)) {
            let refs: Vec<_> = chunk.iter().collect();
            let batch = LmBatch::new(&refs, eos_id, self.device);
            let mask = Some(&batch.attention_mask);
            let loss = lm_loss(self.model, batch.input_ids.clone(), mask, &batch.labels)
                .try_into_scalar::<f64>()
                .map_err(|e| TrainError::Backend(format!("{e:?}")))?;
            loss_sum += loss * batch.learned_tokens as f64;
            learned += batch.learned_tokens;
            progress.inc(1);
        }
        let sampling = SamplingConfig {
            max_new_tokens: settings.max_new_tokens,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            eos_token_ids: self.eos_token_ids.clone(),
        };
        // Prompts of similar length share a batch (less padding); answers go back in file order.
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].1.len()));
        let mut answers = vec![Vec::new(); prompts.len()];
        for chunk in order.chunks(settings.batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i].1.as_slice()).collect();
            let generated = generate_batch(self.model, &batch, &sampling, self.device)?;
            for (&i, ids) in chunk.iter().zip(generated) {
                answers[i] = ids;
            }
            progress.inc(chunk.len() as u64);
        }
        let mut samples = Vec::with_capacity(prompts.len());
        for ((record, _, expected), ids) in prompts.into_iter().zip(answers) {
            let generated = self.tokenizer.decode(&ids, true)?;
            let exact_match = generated.trim() == expected.trim();
            samples.push(Sample {
                record,
                expected,
                generated,
                exact_match,
            });
        }
        progress.finish_and_clear();
        let loss = loss_sum / learned.max(1) as f64;
        let exact_match = (!samples.is_empty()).then(|| {
            samples.iter().filter(|s| s.exact_match).count() as f64 / samples.len() as f64
        });
        Ok(EvalReport {
            examples: records.len(),
            loss,
            perplexity: loss.exp(),
            learned_tokens: learned,
            exact_match,
            samples,
        })
    }

    /// The prompt's token ids (encoded as training encodes them) and the expected answer, for
    /// records that have both.
    fn prompt_and_answer(&self, record: &Record) -> Result<Option<(Vec<u32>, String)>> {
        Ok(match record {
            Record::Text(_) => None,
            Record::PromptCompletion { prompt, completion } => {
                Some((self.tokenizer.encode(prompt, true)?, completion.clone()))
            }
            Record::Messages(messages) => match messages.split_last() {
                Some((last, earlier)) if last.role == "assistant" && !earlier.is_empty() => {
                    // The template writes its own special tokens.
                    let prompt = apply_chat_template(self.tokenizer, earlier, true)?;
                    Some((self.tokenizer.encode(&prompt, false)?, last.content.clone()))
                }
                _ => None,
            },
        })
    }
}

/// Ids that end a generated answer: the EOS appended to training examples first, then the
/// model's own, then the tokenizer's EOS token (chat models end a turn with it).
pub fn stop_ids(loaded: &LoadedModel) -> Result<Vec<u32>> {
    let tokenizer_eos = loaded
        .tokenizer
        .as_ref()
        .and_then(|t| t.eos_token.as_deref().and_then(|e| t.token_to_id(e)));
    let mut ids = vec![eos_id(loaded)?];
    for id in loaded.eos_token_ids.iter().copied().chain(tokenizer_eos) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("evaluating {bar:40.cyan/blue} {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
