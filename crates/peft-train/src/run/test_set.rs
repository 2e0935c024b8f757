//! `[test]`: a held-out file scored with the base model before training and with the trained
//! adapter after it, as `peft-cli eval` scores a file.

use burn::tensor::Device;
use peft_models::{CausalLm, TextTokenizer};

use crate::config::TrainConfig;
use crate::data;
use crate::error::Result;
use crate::eval::{EvalReport, EvalSettings, Evaluator};

/// What scoring `[test]` needs.
pub(super) struct TestSet {
    /// The tokenizer of the model.
    pub tokenizer: TextTokenizer,
    /// Ids that end a generated answer.
    pub stop_ids: Vec<u32>,
    /// Where inference runs (the training device without autodiff).
    pub device: Device,
}

impl TestSet {
    /// Scores `[test]` (when set) with `model` (in inference mode), telling the user which
    /// model is being scored.
    pub fn score(
        &self,
        config: &TrainConfig,
        model: &CausalLm,
        what: &str,
    ) -> Result<Option<EvalReport>> {
        let Some(path) = &config.test.data else {
            return Ok(None);
        };
        eprintln!("scoring {} with the {what}", path.display());
        let records = data::read_jsonl(path)?;
        let evaluator = Evaluator {
            model,
            tokenizer: &self.tokenizer,
            eos_token_ids: self.stop_ids.clone(),
            device: &self.device,
        };
        let settings = EvalSettings {
            seq_len: config.data.seq_len,
            batch_size: config.training.batch_size,
            max_new_tokens: config.test.max_new_tokens,
            limit: config.test.limit,
            generate: true,
        };
        evaluator.run(path, &records, &settings).map(Some)
    }
}
