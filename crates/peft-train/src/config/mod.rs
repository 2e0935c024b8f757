//! The training configuration: one TOML file with `[model]`, `[method]`, `[data]` and
//! `[training]` sections (documented in `configs/README.md`); every value has a default and can
//! be overridden from the command line.

mod method;
mod options;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

pub use method::{target_modules, Method, MethodSection};
pub use options::{
    AdaLoraOptions, BottleneckOptions, FullOptions, Ia3Options, LoraOptions, PrefixOptions,
    PromptOptions, VeraOptions,
};

/// Everything a training run needs to know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The base model.
    pub model: ModelSection,
    /// The PEFT method and its options.
    pub method: MethodSection,
    /// The training and validation data.
    pub data: DataSection,
    /// Optimisation, schedule, logging and checkpoints.
    pub training: TrainingSection,
    /// A held-out file scored before and after training.
    pub test: TestSection,
}

/// `[test]`: a held-out JSONL file scored with the base model before training and with the
/// trained adapter after it (loss, perplexity, exact match of greedy answers), as
/// `peft-cli eval` scores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestSection {
    /// The JSONL file; no test when absent.
    pub data: Option<PathBuf>,
    /// Score only the first N records.
    pub limit: Option<usize>,
    /// Longest generated answer, in tokens.
    pub max_new_tokens: usize,
}

impl Default for TestSection {
    fn default() -> Self {
        Self {
            data: None,
            limit: None,
            max_new_tokens: 64,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face model folder, a `.gguf` file, or the name of a model `peft_fetch` knows.
    pub path: Option<PathBuf>,
    /// Compute backend name (`auto`, `ndarray`, `flex`, `wgpu`, `cuda`); read by the CLI.
    pub backend: Option<String>,
    /// A saved adapter folder (PEFT's format, ours or PEFT's) to continue training, as PEFT's
    /// `is_trainable=True` loads it; its `adapter_config.json` is the method, so `[method]` must
    /// stay at its defaults.
    pub adapter: Option<PathBuf>,
    /// Keep the frozen base's linear weights packed in 4- or 8-bit blocks (QLoRA): a GGUF's
    /// Q4_0, Q4_1 and Q8_0 blocks as stored, other weights quantized as they load. Training
    /// then runs layer by layer (as with `training.gradient_checkpointing`), so that only one
    /// layer's weights are ever expanded to f32.
    pub quantize: Option<Quantize>,
    /// The frozen base's float type (and so the activations'); adapters, their gradients and
    /// the optimizer's state stay f32 whatever it is. bf16 and f16 where the backend computes
    /// in them (flex, cuda; wgpu f16 where the device reports it).
    pub dtype: Option<BaseDtype>,
}

/// `model.dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    /// 32-bit floats (the default).
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl BaseDtype {
    /// The tensor type.
    pub fn float_dtype(self) -> burn::tensor::FloatDType {
        match self {
            Self::F32 => burn::tensor::FloatDType::F32,
            Self::Bf16 => burn::tensor::FloatDType::BF16,
            Self::F16 => burn::tensor::FloatDType::F16,
        }
    }
}

/// `model.quantize`: the block format of a base quantized as it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// 4-bit codes with a scale and minimum per 32 values (llama.cpp's Q4_1).
    Q4,
    /// 8-bit codes with a scale per 32 values (llama.cpp's Q8_0).
    Q8,
}

impl Quantize {
    /// The packed format.
    pub fn format(self) -> peft_core::PackFormat {
        match self {
            Self::Q4 => peft_core::PackFormat::Q4,
            Self::Q8 => peft_core::PackFormat::Q8,
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Training JSONL file.
    pub train: Option<PathBuf>,
    /// Validation JSONL file.
    pub valid: Option<PathBuf>,
    /// Fraction of the training examples held out for validation when there is no `valid`.
    pub valid_fraction: f64,
    /// Longest sequence in tokens; longer examples are truncated.
    pub seq_len: usize,
    /// Concatenate examples into full `seq_len` rows instead of padding each one.
    pub packing: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: None,
            valid: None,
            valid_fraction: 0.0,
            seq_len: 512,
            packing: false,
        }
    }
}

/// The learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the peak to 0 (transformers' `cosine`).
    Cosine,
    /// Straight line from the peak to 0 (transformers' default `linear`).
    #[default]
    Linear,
    /// The peak until the end.
    Constant,
}

/// `[training]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSection {
    /// Peak learning rate.
    pub lr: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (their gradients are averaged).
    pub grad_accum: usize,
    /// Optimizer steps to run; takes precedence over `epochs`.
    pub max_steps: Option<usize>,
    /// Passes over the training data (1 when neither this nor `max_steps` is set).
    pub epochs: Option<usize>,
    /// Steps of linear warmup from 0 to `lr`.
    pub warmup_steps: usize,
    /// Shape of the learning rate after warmup.
    pub schedule: Schedule,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 disables clipping).
    pub max_grad_norm: f64,
    /// Keep only each decoder layer's input for backward and recompute the layer there
    /// (transformers' `gradient_checkpointing`): activation memory of one layer instead of all,
    /// for one more forward pass per step.
    pub gradient_checkpointing: bool,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Evaluate on the validation data every this many steps (and at the end).
    pub eval_every: Option<usize>,
    /// Save a checkpoint every this many steps (and at the end).
    pub save_every: Option<usize>,
    /// Log (metrics.jsonl, dashboard) every this many steps.
    pub log_every: usize,
    /// Output folder: checkpoints, the final adapter, metrics.jsonl.
    pub out: PathBuf,
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            batch_size: 4,
            grad_accum: 1,
            max_steps: None,
            epochs: None,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            gradient_checkpointing: false,
            seed: 42,
            eval_every: None,
            save_every: None,
            log_every: 1,
            out: PathBuf::from("runs/adapter"),
        }
    }
}

impl TrainConfig {
    /// Reads a TOML configuration file; unknown keys and wrong types are errors naming the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| TrainError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the error names the offending key.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().message().to_string();
            // `[method]` names its own keys in full (`method.rank`).
            if path == "." || inner.starts_with('`') {
                inner
            } else {
                format!("`{path}`: {inner}")
            }
        })
    }

    /// This configuration as TOML text (saved next to the checkpoints, read back by `--resume`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig serialises to TOML")
    }

    /// Checks the values that have a valid range, naming the key of the first bad one, and
    /// gives the files a run cannot do without.
    pub fn validate(&self) -> Result<RunFiles> {
        let bad = |key: &str, message: String| TrainError::InvalidValue {
            key: key.to_string(),
            message,
        };
        let t = &self.training;
        let model = self
            .model
            .path
            .clone()
            .ok_or_else(|| bad("model.path", "no model given".into()))?;
        let train = self
            .data
            .train
            .clone()
            .ok_or_else(|| bad("data.train", "no training data given".into()))?;
        self.method.validate()?;
        if self.model.adapter.is_some() && self.method != MethodSection::default() {
            return Err(bad(
                "method",
                "cannot be set with model.adapter: the adapter's adapter_config.json is the \
                 method and its options"
                    .into(),
            ));
        }
        let bad = |key: &str, message: String| Err(bad(key, message));
        let low_precision = self.model.dtype.is_some_and(|d| d != BaseDtype::F32);
        if low_precision && self.method.method() == Method::Full {
            return bad(
                "model.dtype",
                "full fine-tuning trains the base weights, which must then be f32 (the type \
                 --dtype sets is the frozen base's)"
                    .into(),
            );
        }
        if low_precision && self.model.quantize.is_some() {
            return bad(
                "model.dtype",
                "a quantized base (model.quantize) expands its blocks to f32; use dtype f32".into(),
            );
        }
        if self.model.quantize.is_some() {
            let method = self.method.method();
            if matches!(method, Method::Full | Method::Prefix) {
                return bad(
                    "model.quantize",
                    format!(
                        "a quantized base cannot be trained with method {method:?}: {}",
                        match method {
                            Method::Full =>
                                "full fine-tuning trains the base weights, which \
                                             --quantize keeps frozen and packed",
                            _ =>
                                "a quantized base trains layer by layer, and prefix tuning \
                                  puts its keys and values into every layer at once",
                        }
                    ),
                );
            }
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("training.lr", format!("{} is not a positive number", t.lr));
        }
        for (key, value) in [
            ("training.batch_size", t.batch_size),
            ("training.grad_accum", t.grad_accum),
            ("training.log_every", t.log_every),
            ("data.seq_len", self.data.seq_len),
            ("test.max_new_tokens", self.test.max_new_tokens),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, value) in [
            ("training.max_steps", t.max_steps),
            ("training.epochs", t.epochs),
            ("training.eval_every", t.eval_every),
            ("training.save_every", t.save_every),
            ("test.limit", self.test.limit),
        ] {
            if value == Some(0) {
                return bad(key, "must be at least 1 when given".into());
            }
        }
        for (key, value) in [
            ("training.weight_decay", t.weight_decay),
            ("training.max_grad_norm", t.max_grad_norm),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return bad(key, format!("{value} is not a non-negative number"));
            }
        }
        if !(0.0..1.0).contains(&self.data.valid_fraction) {
            return bad(
                "data.valid_fraction",
                format!("{} is not in [0, 1)", self.data.valid_fraction),
            );
        }
        Ok(RunFiles { model, train })
    }
}

/// The files of a valid configuration that a run cannot do without.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFiles {
    /// The base model (`model.path`): a folder, a `.gguf` file or a model name.
    pub model: PathBuf,
    /// The training data (`data.train`).
    pub train: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_parse_and_defaults_fill_the_rest() {
        let config = TrainConfig::from_toml(
            "[model]\npath = \"m\"\n[method]\nrank = 4\ntarget = [\"all-linear\"]\n\
             [training]\nlr = 1e-3\nschedule = \"cosine\"\n",
        )
        .unwrap();
        let MethodSection::Lora(lora) = &config.method else {
            panic!("no name means lora: {:?}", config.method);
        };
        assert_eq!(lora.rank, 4);
        assert_eq!(config.training.schedule, Schedule::Cosine);
        assert_eq!(config.training.batch_size, 4);
        assert_eq!(TrainConfig::from_toml(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn errors_name_the_key() {
        let err = TrainConfig::from_toml("[training]\nlr = \"fast\"\n").unwrap_err();
        assert!(err.contains("training.lr"), "{err}");
        let err = TrainConfig::from_toml("[training]\nlearning_rate = 1.0\n").unwrap_err();
        assert!(err.contains("learning_rate"), "{err}");
    }

    /// `model.quantize` parses as `q4`/`q8` and is refused, naming the key and the method,
    /// with full fine-tuning and prefix tuning.
    #[test]
    fn a_quantized_base_is_refused_for_full_and_prefix_tuning() {
        let base = "[model]\npath = \"m\"\nquantize = \"q4\"\n[data]\ntrain = \"t.jsonl\"\n";
        let lora = TrainConfig::from_toml(base).unwrap();
        assert_eq!(lora.model.quantize, Some(Quantize::Q4));
        lora.validate().unwrap();
        for method in ["full", "prefix"] {
            let text = format!("{base}[method]\nname = \"{method}\"\n");
            let err = TrainConfig::from_toml(&text)
                .unwrap()
                .validate()
                .unwrap_err();
            let err = err.to_string();
            assert!(err.contains("model.quantize"), "{method}: {err}");
        }
        let err = TrainConfig::from_toml("[model]\nquantize = \"q3\"\n").unwrap_err();
        assert!(err.contains("quantize"), "{err}");
    }
}
