//! What a run trains on and with: the base model, the tokenized data, the adapter (fresh, or
//! the checkpoint's when resuming) or every weight (the checkpoint's model when resuming), and
//! the `[test]` scores of the base model.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use peft_core::{AdapterConfig, ParameterReport, DEFAULT_ADAPTER};
use peft_models::{CausalLm, FolderFiles, LoadedModel, TextTokenizer};

use super::test_set::TestSet;
use crate::checkpoint::TrainerState;
use crate::config::{Method, RunFiles, TrainConfig};
use crate::data::{self, eos_id, Example, Tokenization};
use crate::error::{Result, TrainError};
use crate::eval::{self, EvalReport};
use crate::full;
use crate::model::Trained;

/// LoRA-family adapters rarely learn anything below this learning rate.
const LOWEST_USEFUL_LR: f64 = 1e-5;

/// What the fit trains: the model with its adapter (or every weight), and the data.
pub(super) struct Trainee {
    /// The model, with the adapter attached and active when one trains.
    pub lm: CausalLm,
    /// What trains: the adapter, configured as attached (the model's defaults filled in), or
    /// every weight.
    pub trained: Trained,
    /// What the fully trained model's folder holds besides the weights.
    pub folder_files: Option<FolderFiles>,
    /// The id appended to every example (and padding).
    pub eos_id: u32,
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples (maybe none).
    pub valid: Vec<Example>,
}

/// What the run reports beside the trained model.
pub(super) struct RunNotes {
    /// Trainable and total parameters.
    pub parameters: ParameterReport,
    /// What scoring `[test]` needs.
    pub test: TestSet,
    /// `[test]` scored with the base model.
    pub test_before: Option<EvalReport>,
    /// Warnings so far.
    pub warnings: Vec<String>,
}

/// Loads the model and the data, scores `[test]` with the base model and attaches the adapter
/// (the checkpoint's in `resume_from`).
pub(super) fn load(
    config: &TrainConfig,
    files: &RunFiles,
    device: &Device,
    resume_from: Option<&(TrainerState, PathBuf)>,
) -> Result<(Trainee, RunNotes)> {
    let model_path = peft_fetch::resolve(&files.model)?;
    let format = peft_models::BaseFormat {
        quantize: config.model.quantize.map(|q| q.format()),
        dtype: config.model.dtype.map(|d| d.float_dtype()),
    };
    let loaded = peft_models::load_model_as(&model_path, device, format)?;
    let full = config.method.method() == Method::Full;
    let folder_files = full.then(|| FolderFiles::of(&loaded)).transpose()?;
    let eos_id = eos_id(&loaded)?;
    let (train, valid) = load_examples(config, &files.train, &loaded, eos_id)?;
    let stop_ids = eval::stop_ids(&loaded)?;
    let LoadedModel {
        model: mut lm,
        tokenizer,
        ..
    } = loaded;
    let test = TestSet {
        // `load_examples` has already failed if there is no tokenizer.
        tokenizer: tokenizer.ok_or_else(|| TrainError::InvalidValue {
            key: "model.path".into(),
            message: "the model has no tokenizer".into(),
        })?,
        stop_ids,
        device: device.clone().inner(),
    };
    let test_before = test.score(config, &lm.valid(), "base model")?;
    let valid_path = config.data.valid.as_deref().unwrap_or(&files.train);
    data::check_lengths(&lm, &files.train, &train, config.data.seq_len)?;
    data::check_lengths(&lm, valid_path, &valid, config.data.seq_len)?;
    let (lm, trained, parameters) = if full {
        let lm = match resume_from {
            Some((_, dir)) => peft_models::load_model(dir, device)?.model,
            None => lm,
        };
        // Every weight trains; counted before a tied head gets an id of its own.
        let total = peft_core::count_parameters(&lm);
        let parameters = ParameterReport {
            trainable: total,
            total,
        };
        let (lm, tied_head) = full::prepare(lm);
        (lm, Trained::Full(tied_head), parameters)
    } else {
        let adapter = attach(&mut lm, config, &test.tokenizer, resume_from)?;
        let parameters = ParameterReport::of(&lm);
        if parameters.trainable == 0 {
            return Err(TrainError::NothingToTrain(
                "the adapter adds no trainable tensor to this model".into(),
            ));
        }
        let trained = Trained::Adapter {
            name: DEFAULT_ADAPTER.into(),
            config: Box::new(adapter),
        };
        (lm, trained, parameters)
    };
    let warnings = early_warnings(config, &trained, resume_from.is_some());
    let trainee = Trainee {
        lm,
        trained,
        folder_files,
        eos_id,
        train,
        valid,
    };
    let notes = RunNotes {
        parameters,
        test,
        test_before,
        warnings,
    };
    Ok((trainee, notes))
}

/// Warnings about the settings, printed at once when there is no dashboard.
fn early_warnings(config: &TrainConfig, trained: &Trained, resumed: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    let adapter = match trained {
        Trained::Adapter { config, .. } => Some(&**config),
        Trained::Full(_) => None,
    };
    if adapter.is_some() && config.training.lr < LOWEST_USEFUL_LR {
        warnings.push(format!(
            "learning rate {} is far below what LoRA needs (typically 1e-4 to 1e-3); the \
             adapter will barely move",
            config.training.lr
        ));
    }
    if resumed && matches!(adapter, Some(AdapterConfig::PrefixTuning(c)) if c.prefix_projection) {
        warnings.push(
            "checkpoints hold the prefix with its MLP folded in (as PEFT saves it); training \
             continues on the folded prefix with fresh optimizer state for it"
                .into(),
        );
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        for warning in &warnings {
            eprintln!("warning: {warning}");
        }
    }
    warnings
}

/// Attaches a fresh adapter, the checkpoint's when resuming, or the saved one `model.adapter`
/// continues; returns its configuration
/// (as attached, with the model's defaults filled in, so that checkpoints describe the tensors
/// they hold).
fn attach(
    lm: &mut CausalLm,
    config: &TrainConfig,
    tokenizer: &TextTokenizer,
    resume_from: Option<&(TrainerState, PathBuf)>,
) -> Result<AdapterConfig> {
    match (resume_from, &config.model.adapter) {
        (Some((_, dir)), _) | (None, Some(dir)) => {
            Ok(peft_core::load_adapter(lm, DEFAULT_ADAPTER, dir)?)
        }
        (None, None) => {
            let mut adapter =
                config
                    .method
                    .adapter_config()
                    .ok_or_else(|| TrainError::InvalidValue {
                        key: "method.name".into(),
                        message: format!("{} attaches no adapter", config.method.method().name()),
                    })?;
            tokenize_init_text(&mut adapter, tokenizer)?;
            Ok(peft_core::attach_adapter(lm, DEFAULT_ADAPTER, &adapter)?.config)
        }
    }
}

/// Gives a prompt-tuning config that starts from text the text's token ids, tokenized as PEFT
/// tokenizes it (with the tokenizer's special tokens).
pub fn tokenize_init_text(config: &mut AdapterConfig, tokenizer: &TextTokenizer) -> Result<()> {
    if let AdapterConfig::PromptTuning(c) = config {
        if let Some(text) = &c.prompt_tuning_init_text {
            c.init_token_ids = Some(tokenizer.encode(text, true)?);
        }
    }
    Ok(())
}

/// The training and validation examples: the files tokenized (and packed), or a held-out
/// share of the training examples.
fn load_examples(
    config: &TrainConfig,
    train_path: &Path,
    loaded: &LoadedModel,
    eos_id: u32,
) -> Result<(Vec<Example>, Vec<Example>)> {
    let tokenizer = loaded.tokenizer()?;
    let tokenization = Tokenization {
        tokenizer,
        eos_id,
        seq_len: config.data.seq_len,
        vocab_size: loaded.model.vocab_size(),
    };
    let read = |path: &Path| -> Result<Vec<Example>> {
        let records = data::read_jsonl(path)?;
        let examples = tokenization.examples(path, &records)?;
        let examples = if config.data.packing {
            data::pack(&examples, config.data.seq_len)
        } else {
            examples
        };
        if examples.is_empty() {
            return Err(TrainError::EmptyData(format!(
                "{}: no example left to learn from ({} records; an example needs at least one \
                 completion token within data.seq_len = {})",
                path.display(),
                records.len(),
                config.data.seq_len
            )));
        }
        Ok(examples)
    };
    let train = read(train_path)?;
    match (&config.data.valid, config.data.valid_fraction) {
        (Some(valid), _) => Ok((train, read(valid)?)),
        (None, f) if f > 0.0 && train.len() > 1 => {
            Ok(data::split_valid(train, f, config.training.seed))
        }
        _ => Ok((train, Vec::new())),
    }
}
