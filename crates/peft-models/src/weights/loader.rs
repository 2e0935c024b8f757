//! The loader that turns a [`WeightSource`] into parameters, checking every name and shape and
//! reporting what the checkpoint held but the model did not use; and [`Weights`], a scope of it
//! at one module path (`vb.pp("model").pp("layers").pp(i)` as in candle), so that an
//! architecture writes each Hugging Face name once, as the segment of the module that holds it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Display;

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use peft_core::{BlockCodes, HostTensor, PackFormat, PackedWeight, Projection, WeightLayout};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::source::WeightSource;
use crate::error::{ModelError, Result};

/// Builds parameters from a [`WeightSource`] (or, for benchmarks, makes them up), tracking
/// which tensors were used.
pub struct WeightLoader<'a> {
    source: &'a dyn WeightSource,
    device: Device,
    used: RefCell<BTreeSet<String>>,
    progress: ProgressBar,
    random: bool,
    quantize: Option<PackFormat>,
}

/// The source of [`WeightLoader::random`]: holds nothing.
struct NoWeights;

impl WeightSource for NoWeights {
    fn describe(&self) -> String {
        "random weights".into()
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    fn shape(&self, _: &str) -> Option<Vec<usize>> {
        None
    }
    fn stored_bytes(&self, _: &str) -> u64 {
        0
    }
    fn read_f32(&self, name: &str) -> Result<HostTensor> {
        Err(ModelError::InvalidInput(format!(
            "{name}: a random model has no stored tensors"
        )))
    }
}

/// Half-width of the uniform distribution random weights are drawn from (GPT-2's init scale).
const RANDOM_SCALE: f64 = 0.02;

/// Checkpoints are only worth a progress bar above this size.
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

impl<'a> WeightLoader<'a> {
    /// A loader that places parameters on `device`, with a progress bar for large sources.
    pub fn new(source: &'a dyn WeightSource, device: &Device) -> Self {
        let total: u64 = source.names().iter().map(|n| source.stored_bytes(n)).sum();
        let progress = if total >= PROGRESS_MIN_BYTES {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "loading weights {bar:40.cyan/blue} {binary_bytes}/{binary_total_bytes} ({eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        Self {
            source,
            device: device.clone(),
            used: RefCell::new(BTreeSet::new()),
            progress,
            random: false,
            quantize: None,
        }
    }

    /// The same loader, keeping every linear projection's weight packed in blocks
    /// ([`PackedWeight`]): as stored where the file holds Q4_0, Q4_1 or Q8_0 blocks, else
    /// quantized to `format` as it loads.
    pub fn with_quantize(mut self, format: Option<PackFormat>) -> Self {
        self.quantize = format;
        self
    }

    /// A loader that makes every tensor up, drawn on `device` (benchmarks: real shapes
    /// without a download). The architecture's code asks for names and shapes as when loading.
    pub fn random(device: &Device) -> WeightLoader<'static> {
        WeightLoader {
            source: &NoWeights,
            device: device.clone(),
            used: RefCell::new(BTreeSet::new()),
            progress: ProgressBar::hidden(),
            random: true,
            quantize: None,
        }
    }

    /// The scope at the top of the checkpoint.
    pub fn root(&self) -> Weights<'_> {
        Weights {
            loader: self,
            path: String::new(),
            key: String::new(),
        }
    }

    /// Ends loading: fails if the source held tensors nobody asked for, except those `ignorable`
    /// says may be dropped (e.g. cached attention masks in old GPT-2 checkpoints).
    pub fn finish(self, ignorable: impl Fn(&str) -> bool) -> Result<()> {
        self.progress.finish_and_clear();
        let used = self.used.borrow();
        let unused: Vec<String> = self
            .source
            .names()
            .into_iter()
            .filter(|n| !used.contains(n) && !ignorable(n))
            .collect();
        match unused.first() {
            Some(first) => Err(ModelError::UnexpectedTensor {
                name: first.clone(),
                more: unused.len() - 1,
                source_desc: self.source.describe(),
            }),
            None => Ok(()),
        }
    }

    /// Checks that `name` is stored with shape `expected`.
    fn check_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let found = self
            .source
            .shape(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.source.describe(),
            })?;
        if found != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found,
                source_desc: self.source.describe(),
            });
        }
        Ok(())
    }

    /// Marks `name` as read.
    fn mark_used(&self, name: &str) {
        self.progress.inc(self.source.stored_bytes(name));
        self.used.borrow_mut().insert(name.to_string());
    }

    /// Reads `name`, checking that its shape is `expected`.
    fn host(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        self.check_shape(name, expected)?;
        let tensor = self.source.read_f32(name)?;
        self.check_finite(name, tensor.first_non_finite())?;
        self.mark_used(name);
        Ok(tensor)
    }

    /// Refuses tensor `name` when it holds a NaN or infinite value (`first`: its index and
    /// value), once per tensor at load: it would otherwise reach every logit silently.
    fn check_finite(&self, name: &str, first: Option<(usize, f32)>) -> Result<()> {
        match first {
            Some((index, value)) => Err(ModelError::NonFiniteTensor {
                name: name.to_string(),
                source_desc: self.source.describe(),
                value,
                index,
            }),
            None => Ok(()),
        }
    }

    /// The frozen weight `[d_in, d_out]` stored under `name` (`[d_out, d_in]`, or as is with
    /// `conv1d`) as block codes on the device: the file's own blocks where it holds a type
    /// they represent exactly, else its values quantized to `format`.
    fn packed(
        &self,
        name: &str,
        [d_in, d_out]: [usize; 2],
        conv1d: bool,
        format: PackFormat,
    ) -> Result<PackedWeight> {
        let codes = if self.random {
            random_codes(format, [d_out, d_in], name)
        } else if conv1d {
            let values = self.host(name, &[d_in, d_out])?.transposed();
            BlockCodes::quantize(format, &values.data, d_out, d_in)
        } else {
            self.check_shape(name, &[d_out, d_in])?;
            match self.source.read_codes(name)? {
                Some(codes) => {
                    self.check_finite(name, codes.first_non_finite())?;
                    self.mark_used(name);
                    codes
                }
                None => BlockCodes::quantize(
                    format,
                    &self.host(name, &[d_out, d_in])?.data,
                    d_out,
                    d_in,
                ),
            }
        };
        PackedWeight::upload(&codes, name, &self.device)
            .map_err(|e| ModelError::InvalidInput(e.to_string()))
    }

    /// A frozen tensor of `shape` stored under `name` in that layout (`transposed`: stored as
    /// the transpose of a 2-D `shape`), or made up when this loader makes tensors up.
    fn param<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        transposed: bool,
    ) -> Result<Param<Tensor<D>>> {
        let tensor = if self.random {
            let dist = Distribution::Uniform(-RANDOM_SCALE, RANDOM_SCALE);
            Tensor::random(shape, dist, &self.device)
        } else if transposed {
            let t = self.host(name, &[shape[1], shape[0]])?.transposed();
            upload(t.data, shape, &self.device)
        } else {
            upload(self.host(name, &shape)?.data, shape, &self.device)
        };
        // Base weights are frozen: adapters, not the model, are trained.
        Ok(Param::from_tensor(tensor).set_require_grad(false))
    }
}

/// Block codes of a made-up weight `[rows, cols]` (uniform in ±[`RANDOM_SCALE`], seeded by
/// `name`), quantized a row at a time on the host: drawing the whole weight in f32 first would
/// hold two f32 copies of a 1B model's embedding while it loads.
fn random_codes(format: PackFormat, [rows, cols]: [usize; 2], name: &str) -> BlockCodes {
    let seed = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut rng = StdRng::seed_from_u64(seed);
    let blocks = rows * cols / peft_core::packed::BLOCK;
    let mut codes = BlockCodes {
        format,
        rows,
        cols,
        codes: Vec::with_capacity(rows * cols),
        scales: Vec::with_capacity(blocks),
        offsets: Vec::with_capacity(blocks),
    };
    let mut row = vec![0.0f32; cols];
    for _ in 0..rows {
        row.iter_mut()
            .for_each(|v| *v = rng.random_range(-RANDOM_SCALE..RANDOM_SCALE) as f32);
        let quantized = BlockCodes::quantize(format, &row, 1, cols);
        codes.codes.extend(quantized.codes);
        codes.scales.extend(quantized.scales);
        codes.offsets.extend(quantized.offsets);
    }
    codes
}

fn upload<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// One module's place in the checkpoint: its Hugging Face module path (the name adapters
/// target and export writes) and the key prefix its tensors are stored under (the same, unless
/// the file leaves out a prefix, as GPT-2 files saved from `GPT2Model` leave out
/// `transformer.`).
#[derive(Clone)]
pub struct Weights<'l> {
    loader: &'l WeightLoader<'l>,
    path: String,
    key: String,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<'l> Weights<'l> {
    /// The scope of the child module `name`.
    pub fn pp(&self, name: impl Display) -> Self {
        let name = name.to_string();
        Self {
            loader: self.loader,
            path: join(&self.path, &name),
            key: join(&self.key, &name),
        }
    }

    /// The scope of the child module `name`, which the checkpoint's keys leave out.
    pub fn pp_unstored(&self, name: impl Display) -> Self {
        Self {
            loader: self.loader,
            path: join(&self.path, &name.to_string()),
            key: self.key.clone(),
        }
    }

    /// This scope's module path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the checkpoint holds tensor `name` of this scope.
    pub fn contains(&self, name: &str) -> bool {
        self.loader.source.shape(&join(&self.key, name)).is_some()
    }

    /// The frozen 1-D tensor `name` of length `len`.
    pub fn vector(&self, name: &str, len: usize) -> Result<Param<Tensor<1>>> {
        self.loader.param(&join(&self.key, name), [len], false)
    }

    /// The frozen 2-D tensor `name`, stored `[rows, cols]` and kept so (embeddings, Conv1D).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Param<Tensor<2>>> {
        self.loader
            .param(&join(&self.key, name), [rows, cols], false)
    }

    /// The embedding table `name` `[rows, width]` packed as the weight `[width, rows]` of the
    /// output head tied to it, when the loader quantizes: a GGUF's blocks as stored, other
    /// values in 8-bit codes whatever the format asked (the output head is where llama.cpp's
    /// 4-bit files keep more bits too); `None` when it does not.
    pub fn tied_table(
        &self,
        name: &str,
        rows: usize,
        width: usize,
    ) -> Result<Option<PackedWeight>> {
        if self.loader.quantize.is_none() {
            return Ok(None);
        }
        let name = join(&self.key, name);
        let table = self
            .loader
            .packed(&name, [width, rows], false, PackFormat::Q8)?;
        Ok(Some(table))
    }

    /// This scope as a PyTorch `nn.Linear` (weight stored `[out, in]`, kept `[in, out]`), with
    /// a bias when `bias`.
    pub fn linear(&self, d_in: usize, d_out: usize, bias: bool) -> Result<Projection> {
        let bias = match bias {
            true => Some(self.vector("bias", d_out)?),
            false => None,
        };
        self.projection([d_in, d_out], bias, WeightLayout::Linear)
    }

    /// This scope as a transformers `Conv1D` (weight stored `[in, out]`, always a bias).
    pub fn conv1d(&self, d_in: usize, d_out: usize) -> Result<Projection> {
        let bias = Some(self.vector("bias", d_out)?);
        self.projection([d_in, d_out], bias, WeightLayout::Conv1D)
    }

    /// This scope's weight `[in, out]` (stored as `layout` says) and `bias`, packed when the
    /// loader quantizes.
    fn projection(
        &self,
        shape: [usize; 2],
        bias: Option<Param<Tensor<1>>>,
        layout: WeightLayout,
    ) -> Result<Projection> {
        let name = join(&self.key, "weight");
        let conv1d = layout == WeightLayout::Conv1D;
        if let Some(format) = self.loader.quantize {
            let weight = self.loader.packed(&name, shape, conv1d, format)?;
            return Ok(Projection::packed(self.path.clone(), weight, bias, layout));
        }
        let weight = self.loader.param(&name, shape, !conv1d)?;
        Ok(Projection::new(self.path.clone(), weight, bias, layout))
    }
}
