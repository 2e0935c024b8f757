//! Padded batches on the device, and the data loaders handed to Burn's Learner.

use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::{Device, Int, Tensor, TensorData};
use peft_models::loss::{HostLabels, IGNORE_INDEX};

use crate::data::Example;

/// A right-padded batch of token sequences.
#[derive(Debug, Clone)]
pub struct LmBatch {
    /// Token ids `[batch, seq]`.
    pub input_ids: Tensor<2, Int>,
    /// 1 for tokens, 0 for padding, `[batch, seq]`.
    pub attention_mask: Tensor<2, Int>,
    /// Labels `[batch, seq]`, -100 where there is no loss, on the host: the loss picks the
    /// labelled positions from them.
    pub labels: HostLabels,
    /// Positions that contribute to the loss.
    pub learned_tokens: usize,
    /// Real (non-padding) tokens.
    pub tokens: usize,
    /// What the batch's mean loss is multiplied by in training: its share of the optimizer
    /// step's labelled tokens (set by [`crate::step::step_gradients`]; 1 for a lone batch).
    pub loss_weight: f32,
}

impl LmBatch {
    /// Pads `examples` on the right with `pad_id` to the longest of them and uploads them.
    pub fn new(examples: &[&Example], pad_id: u32, device: &Device) -> Self {
        let seq = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
        let batch = examples.len();
        let mut ids = vec![i64::from(pad_id); batch * seq];
        let mut mask = vec![0i64; batch * seq];
        let mut labels = vec![IGNORE_INDEX; batch * seq];
        for (row, example) in examples.iter().enumerate() {
            let offset = row * seq;
            for (t, (&id, &label)) in example.ids.iter().zip(&example.labels).enumerate() {
                ids[offset + t] = i64::from(id);
                mask[offset + t] = 1;
                labels[offset + t] = label;
            }
        }
        let upload = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [batch, seq]), device);
        Self {
            input_ids: upload(ids),
            attention_mask: upload(mask),
            labels: HostLabels::new(labels, seq),
            learned_tokens: examples.iter().map(|e| e.learned_tokens()).sum(),
            tokens: examples.iter().map(|e| e.ids.len()).sum(),
            loss_weight: 1.0,
        }
    }
}

/// Examples in a fixed order, cut into batches: what Burn's Learner receives as a data loader.
/// The training loop reads batches by index (see [`crate::data::BatchPlan`]), which makes the
/// data position a number that a checkpoint can hold.
#[derive(Clone)]
pub struct ExampleLoader {
    examples: Arc<Vec<Example>>,
    range: std::ops::Range<usize>,
    batch_size: usize,
    pad_id: u32,
    device: Device,
}

impl ExampleLoader {
    /// A loader over all of `examples`.
    pub fn new(
        examples: Arc<Vec<Example>>,
        batch_size: usize,
        pad_id: u32,
        device: Device,
    ) -> Self {
        let range = 0..examples.len();
        Self {
            examples,
            range,
            batch_size,
            pad_id,
            device,
        }
    }

    /// The batch of the examples at `indices`.
    pub fn batch_of(&self, indices: &[usize]) -> LmBatch {
        let examples: Vec<&Example> = indices.iter().map(|&i| &self.examples[i]).collect();
        LmBatch::new(&examples, self.pad_id, &self.device)
    }

    /// The data-file lines of the examples at `indices`, sorted, runs joined (`2-4, 9`).
    pub fn lines_of(&self, indices: &[usize]) -> String {
        let mut lines: Vec<usize> = indices
            .iter()
            .flat_map(|&i| self.examples[i].lines.clone())
            .collect();
        lines.sort_unstable();
        lines.dedup();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for line in lines {
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == line => *end = line,
                _ => runs.push((line, line)),
            }
        }
        let runs: Vec<String> = runs
            .into_iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        runs.join(", ")
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

impl DataLoader<LmBatch> for ExampleLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch> + 'a> {
        Box::new(InOrder {
            loader: self,
            next: self.range.start,
        })
    }

    fn num_items(&self) -> usize {
        self.range.len()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<LmBatch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<LmBatch>> {
        let begin = (self.range.start + start).min(self.range.end);
        let end = (self.range.start + end).min(self.range.end);
        Arc::new(Self {
            range: begin..end.max(begin),
            ..self.clone()
        })
    }
}

struct InOrder<'a> {
    loader: &'a ExampleLoader,
    next: usize,
}

impl Iterator for InOrder<'_> {
    type Item = Result<LmBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let end = self.loader.range.end;
        if self.next >= end {
            return None;
        }
        let stop = (self.next + self.loader.batch_size).min(end);
        let indices: Vec<usize> = (self.next..stop).collect();
        self.next = stop;
        Some(Ok(self.loader.batch_of(&indices)))
    }
}

impl DataLoaderIterator<LmBatch> for InOrder<'_> {
    fn progress(&self) -> Progress {
        Progress {
            items_processed: self.next - self.loader.range.start,
            items_total: self.loader.range.len(),
            unit: Some("sequences".into()),
        }
    }
}
