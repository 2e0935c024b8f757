//! Training data: JSONL records (`{"text"}`, `{"prompt","completion"}` or `{"messages"}`)
//! tokenized into sequences whose labels cover only what the model should learn to write.

use std::ops::RangeInclusive;
use std::path::Path;

use peft_models::chat::{apply_chat_template, ChatMessage};
use peft_models::loss::IGNORE_INDEX;
use peft_models::{CausalLm, LoadedModel, ModelError, TextTokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// One line of a data file.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Plain text; every token is learned.
    Text(String),
    /// A prompt and the completion to learn.
    PromptCompletion {
        /// Given to the model, not learned.
        prompt: String,
        /// Learned.
        completion: String,
    },
    /// A conversation rendered with the model's chat template; assistant turns are learned.
    Messages(Vec<ChatMessage>),
}

/// A tokenized example: `labels[t]` is `ids[t]` where it is learned, [`IGNORE_INDEX`] elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Labels, aligned with `ids` (the loss shifts them).
    pub labels: Vec<i64>,
    /// The lines of the data file it comes from (more than one when packed), for messages.
    pub lines: RangeInclusive<usize>,
}

impl Example {
    /// Positions that contribute to the loss (a label whose next-token prediction is scored).
    pub fn learned_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// The id appended to every training example: the model's first EOS id, else its tokenizer's.
pub fn eos_id(loaded: &LoadedModel) -> Result<u32> {
    if let Some(&id) = loaded.eos_token_ids.first() {
        return Ok(id);
    }
    let tokenizer = loaded.tokenizer()?;
    tokenizer
        .eos_token
        .as_deref()
        .and_then(|t| tokenizer.token_to_id(t))
        .ok_or_else(|| TrainError::InvalidValue {
            key: "model.path".into(),
            message: format!(
                "{} names no end-of-sequence token (generation_config.json eos_token_id or \
                     tokenizer_config.json eos_token), which training appends to every example",
                loaded.source.display()
            ),
        })
}

/// Reads every record of a JSONL file; a bad line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| TrainError::Data {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        records.push(parse_record(&value).map_err(bad)?);
    }
    Ok(records)
}

/// Each record's `adapter` field (the adapter that should answer it), in record order; `None`
/// where a record names none. The error names the line of a non-string value.
pub fn record_adapters(path: &Path) -> Result<Vec<Option<String>>> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut names = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| TrainError::Data {
            path: path.to_path_buf(),
            line: index + 1,
            message: format!("not valid JSON: {e}"),
        })?;
        names.push(record_adapter(&value).map_err(|message| TrainError::Data {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        })?);
    }
    Ok(names)
}

/// The `adapter` field of one record: the adapter's name, `None` where the record names none;
/// the error says what a non-string value is.
pub fn record_adapter(record: &Value) -> std::result::Result<Option<String>, String> {
    match record.get("adapter") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(other) => Err(format!(
            "`adapter` must be an adapter's name (a string), found {other}"
        )),
    }
}

fn parse_record(value: &Value) -> std::result::Result<Record, String> {
    const EXPECTED: &str = r#"expected {"text": ...}, {"prompt": ..., "completion": ...} or {"messages": [{"role": ..., "content": ...}, ...]}"#;
    let object = value
        .as_object()
        .ok_or_else(|| format!("a line must be a JSON object; {EXPECTED}"))?;
    let string = |key: &str| -> std::result::Result<Option<String>, String> {
        match object.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("`{key}` must be a string, found {other}")),
        }
    };
    if let Some(messages) = object.get("messages") {
        let list = messages
            .as_array()
            .ok_or("`messages` must be a list of {\"role\", \"content\"} objects")?;
        let mut out = Vec::new();
        for (i, m) in list.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str);
            let content = m.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(role), Some(content)) => out.push(ChatMessage::new(role, content)),
                _ => {
                    return Err(format!(
                        "`messages[{i}]` needs string fields `role` and `content`"
                    ))
                }
            }
        }
        if !out.iter().any(|m| m.role == "assistant") {
            return Err("`messages` has no assistant turn, so nothing would be learned".into());
        }
        return Ok(Record::Messages(out));
    }
    match (string("text")?, string("prompt")?, string("completion")?) {
        (Some(text), None, None) => Ok(Record::Text(text)),
        (None, Some(prompt), Some(completion)) => {
            Ok(Record::PromptCompletion { prompt, completion })
        }
        (None, Some(_), None) => Err("`prompt` without `completion`".into()),
        (None, None, Some(_)) => Err("`completion` without `prompt`".into()),
        _ => Err(EXPECTED.into()),
    }
}

/// Turns records into examples for one tokenizer.
pub struct Tokenization<'a> {
    /// The model's tokenizer (and chat template).
    pub tokenizer: &'a TextTokenizer,
    /// Appended after text and completions (and after a conversation that does not end with it).
    pub eos_id: u32,
    /// Longest example; longer ones are truncated.
    pub seq_len: usize,
    /// The model's vocabulary size: every id the tokenizer gives must be below it.
    pub vocab_size: usize,
}

impl Tokenization<'_> {
    /// The example for `record` (line `line` of its file), truncated to `seq_len`.
    pub fn example(&self, record: &Record, line: usize) -> Result<Example> {
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        let mut push = |text: &str, learned: bool, special: bool| -> Result<()> {
            for id in self.tokenizer.encode(text, special)? {
                ids.push(id);
                labels.push(if learned { i64::from(id) } else { IGNORE_INDEX });
            }
            Ok(())
        };
        match record {
            Record::Text(text) => push(text, true, true)?,
            Record::PromptCompletion { prompt, completion } => {
                push(prompt, false, true)?;
                push(completion, true, false)?;
            }
            Record::Messages(messages) => {
                // Render growing prefixes so that each turn is exactly the text the template
                // adds for it; the template carries its own special tokens.
                let mut rendered = String::new();
                for (i, message) in messages.iter().enumerate() {
                    let learned = message.role == "assistant";
                    if learned {
                        let prompt = apply_chat_template(self.tokenizer, &messages[..i], true)?;
                        push(extension(&rendered, &prompt)?, false, false)?;
                        rendered = prompt;
                    }
                    let full = apply_chat_template(self.tokenizer, &messages[..=i], false)?;
                    push(extension(&rendered, &full)?, learned, false)?;
                    rendered = full;
                }
            }
        }
        let ends_with_eos = ids.last() == Some(&self.eos_id);
        if !ends_with_eos {
            ids.push(self.eos_id);
            labels.push(i64::from(self.eos_id));
        }
        ids.truncate(self.seq_len);
        labels.truncate(self.seq_len);
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            let token = self.tokenizer.decode(&[bad], false).unwrap_or_default();
            return Err(TrainError::InvalidValue {
                key: "tokenizer".into(),
                message: format!(
                    "token id {bad} ({token:?}) is outside the model's vocabulary of {} ids: \
                     the tokenizer has more tokens than the model's embedding (or the end-of-\
                     sequence id is past it); use the tokenizer that belongs to the model",
                    self.vocab_size
                ),
            });
        }
        Ok(Example {
            ids,
            labels,
            lines: line..=line,
        })
    }

    /// Examples for every record of `path`, dropping those left with nothing to learn (a prompt
    /// longer than `seq_len`); errors name the file and line.
    pub fn examples(&self, path: &Path, records: &[Record]) -> Result<Vec<Example>> {
        let mut out = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let example = self.example(record, i + 1).map_err(|e| TrainError::Data {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })?;
            if example.learned_tokens() > 0 {
                out.push(example);
            }
        }
        Ok(out)
    }
}

/// Refuses examples longer than `model` can encode with its active virtual tokens (GPT-2's
/// learned positions end at `n_positions`), naming the file and `data.seq_len`.
pub fn check_lengths(
    model: &CausalLm,
    path: &Path,
    examples: &[Example],
    seq_len: usize,
) -> Result<()> {
    let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    model
        .check_input(std::iter::empty(), longest)
        .map_err(|e| TrainError::InvalidValue {
            key: "data.seq_len".into(),
            message: format!(
                "{}: {e}; examples are cut at data.seq_len = {seq_len} tokens (--seq-len): \
                 lower it",
                path.display()
            ),
        })
}

/// What `next` adds after `before`: the text of one more turn. Templates that rewrite earlier
/// turns when a new one is added (so that the split between prompt and reply is unknown) are
/// refused rather than guessed at.
fn extension<'a>(before: &str, next: &'a str) -> Result<&'a str> {
    next.strip_prefix(before).ok_or_else(|| {
        ModelError::ChatTemplate(
            "rendering one more message changes the text of the earlier ones, so the tokens of \
             each turn cannot be told apart; use {\"prompt\",\"completion\"} lines instead"
                .into(),
        )
        .into()
    })
}

/// Concatenates examples into rows of exactly `seq_len` tokens (the last row may be shorter),
/// keeping each token's label.
pub fn pack(examples: &[Example], seq_len: usize) -> Vec<Example> {
    let ids: Vec<u32> = examples
        .iter()
        .flat_map(|e| e.ids.iter().copied())
        .collect();
    let labels: Vec<i64> = examples
        .iter()
        .flat_map(|e| e.labels.iter().copied())
        .collect();
    // The line of each token, so that a packed row knows which lines it holds.
    let lines: Vec<usize> = examples
        .iter()
        .flat_map(|e| std::iter::repeat_n(*e.lines.start(), e.ids.len()))
        .collect();
    ids.chunks(seq_len)
        .zip(labels.chunks(seq_len))
        .zip(lines.chunks(seq_len))
        .map(|((ids, labels), lines)| Example {
            ids: ids.to_vec(),
            labels: labels.to_vec(),
            lines: lines[0]..=lines[lines.len() - 1],
        })
        .filter(|e| e.learned_tokens() > 0)
        .collect()
}

/// Splits off `fraction` of `examples` as validation data, chosen by `seed`: at least one
/// example, and never all of them (`examples` must hold two or more).
pub fn split_valid(
    mut examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let n_valid =
        ((examples.len() as f64 * fraction).round() as usize).clamp(1, examples.len() - 1);
    examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        seed ^ 0x05ee_d0f5_a11d,
    ));
    let train = examples.split_off(n_valid);
    (train, examples)
}

/// The order in which training examples are visited: a fresh seeded shuffle every epoch,
/// micro-batches of `batch_size` consecutive examples (the last one of an epoch may be smaller).
/// The current epoch's order is kept, so each micro-batch costs only its own indices.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    len: usize,
    batch_size: usize,
    seed: u64,
    current: Option<(usize, Vec<usize>)>,
}

impl BatchPlan {
    /// A plan over `len` examples.
    pub fn new(len: usize, batch_size: usize, seed: u64) -> Self {
        Self {
            len,
            batch_size,
            seed,
            current: None,
        }
    }

    /// Micro-batches in one pass over the data.
    pub fn batches_per_epoch(&self) -> usize {
        self.len.div_ceil(self.batch_size)
    }

    /// Optimizer steps in one pass over the data with `grad_accum` micro-batches per step: the
    /// last step of an epoch takes the micro-batches left, as transformers' `Trainer` does.
    pub fn steps_per_epoch(&self, grad_accum: usize) -> usize {
        self.batches_per_epoch().div_ceil(grad_accum.max(1))
    }

    /// Example indices of each micro-batch of optimizer step `step` (from 1).
    pub fn step_batches(&mut self, step: usize, grad_accum: usize) -> Vec<Vec<usize>> {
        let (epoch, first, end) = self.step_span(step, grad_accum);
        (first..end).map(|m| self.batch(epoch, m)).collect()
    }

    /// Micro-batches consumed by the first `steps` optimizer steps (the data position).
    pub fn micro_batches_through(&self, steps: usize, grad_accum: usize) -> usize {
        if steps == 0 {
            return 0;
        }
        let (epoch, _, end) = self.step_span(steps, grad_accum);
        epoch * self.batches_per_epoch() + end
    }

    /// The epoch of step `step` (from 1) and the range of its micro-batches within it.
    fn step_span(&self, step: usize, grad_accum: usize) -> (usize, usize, usize) {
        let grad_accum = grad_accum.max(1);
        let per_epoch = self.steps_per_epoch(grad_accum);
        let (epoch, within) = ((step - 1) / per_epoch, (step - 1) % per_epoch);
        let first = within * grad_accum;
        (
            epoch,
            first,
            (first + grad_accum).min(self.batches_per_epoch()),
        )
    }

    /// Example indices of micro-batch `index` of epoch `epoch`.
    fn batch(&mut self, epoch: usize, index: usize) -> Vec<usize> {
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(self.len);
        let order = match &mut self.current {
            Some((cached, order)) if *cached == epoch => order,
            slot => &mut slot.insert((epoch, shuffled(self.len, self.seed, epoch))).1,
        };
        order[start..end].to_vec()
    }
}

/// `0..len` shuffled by `seed` and `epoch`.
fn shuffled(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        seed.wrapping_add(epoch as u64),
    ));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> std::result::Result<Record, String> {
        parse_record(&serde_json::from_str(line).unwrap())
    }

    #[test]
    fn the_three_shapes_parse() {
        assert_eq!(parse(r#"{"text":"hi"}"#), Ok(Record::Text("hi".into())));
        assert!(matches!(
            parse(r#"{"prompt":"a","completion":"b"}"#),
            Ok(Record::PromptCompletion { .. })
        ));
        assert!(matches!(
            parse(r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#),
            Ok(Record::Messages(m)) if m.len() == 2
        ));
    }

    #[test]
    fn bad_shapes_say_what_is_expected() {
        assert!(parse(r#"{"prompt":"a"}"#)
            .unwrap_err()
            .contains("completion"));
        assert!(parse(r#"{"text":3}"#)
            .unwrap_err()
            .contains("`text` must be a string"));
        assert!(parse(r#"{"input":"a"}"#).unwrap_err().contains("expected"));
        assert!(parse(r#"{"messages":[{"role":"user","content":"a"}]}"#)
            .unwrap_err()
            .contains("assistant"));
    }

    #[test]
    fn every_example_is_visited_once_per_epoch_in_a_seeded_order() {
        let mut plan = BatchPlan::new(10, 4, 7);
        assert_eq!(plan.batches_per_epoch(), 3);
        let epoch = |plan: &mut BatchPlan, steps: std::ops::Range<usize>| -> Vec<usize> {
            steps
                .flat_map(|s| plan.step_batches(s, 1))
                .flatten()
                .collect()
        };
        let mut first = epoch(&mut plan, 1..4);
        let second = epoch(&mut plan, 4..7);
        assert_ne!(first, second, "each epoch reshuffles");
        assert_eq!(
            plan.step_batches(5, 1),
            BatchPlan::new(10, 4, 7).step_batches(5, 1),
            "no state but the seed"
        );
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn an_epochs_last_step_takes_the_micro_batches_left() {
        // 5 micro-batches per epoch, 2 per step: steps of 2, 2 and 1, then the next epoch.
        let mut plan = BatchPlan::new(10, 2, 3);
        assert_eq!(plan.steps_per_epoch(2), 3);
        let sizes: Vec<usize> = (1..=6).map(|s| plan.step_batches(s, 2).len()).collect();
        assert_eq!(sizes, [2, 2, 1, 2, 2, 1]);
        let mut epoch: Vec<usize> = (1..=3)
            .flat_map(|s| plan.step_batches(s, 2))
            .flatten()
            .collect();
        epoch.sort();
        assert_eq!(
            epoch,
            (0..10).collect::<Vec<_>>(),
            "one epoch, each example once"
        );
        let consumed: Vec<usize> = (0..=4).map(|s| plan.micro_batches_through(s, 2)).collect();
        assert_eq!(consumed, [0, 2, 4, 5, 7]);
    }

    #[test]
    fn packing_keeps_tokens_and_labels_together() {
        let e = |ids: &[u32], learned: bool, line: usize| Example {
            ids: ids.to_vec(),
            labels: ids
                .iter()
                .map(|&i| if learned { i64::from(i) } else { IGNORE_INDEX })
                .collect(),
            lines: line..=line,
        };
        let packed = pack(&[e(&[1, 2, 3], false, 1), e(&[4, 5, 6, 7], true, 2)], 4);
        assert_eq!(packed.len(), 2);
        assert_eq!(packed[0].ids, [1, 2, 3, 4]);
        assert_eq!(
            (packed[0].lines.clone(), packed[1].lines.clone()),
            (1..=2, 2..=2)
        );
        assert_eq!(
            packed[0].labels,
            [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4]
        );
        assert_eq!(packed[1].ids, [5, 6, 7]);
    }
}
