//! Weight sources (files of named tensors) and the loader that turns them into parameters,
//! checking every name and shape and reporting what the checkpoint held but the model did not use.

use std::collections::BTreeSet;

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{ModelError, Result};

/// One tensor copied to the host and converted to f32.
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// A file (or set of files) of named tensors.
pub trait WeightSource {
    /// The file(s), for error messages.
    fn describe(&self) -> String;
    /// Every tensor name, in a stable order.
    fn names(&self) -> Vec<String>;
    /// The stored shape of `name`, if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Size in bytes of `name` as stored (for progress).
    fn stored_bytes(&self, name: &str) -> u64;
    /// Reads `name` and converts it to f32.
    fn read_f32(&self, name: &str) -> Result<HostTensor>;
}

/// Builds parameters from a [`WeightSource`], tracking which tensors were used.
pub struct WeightLoader<'a> {
    source: &'a dyn WeightSource,
    device: Device,
    used: BTreeSet<String>,
    progress: ProgressBar,
    random: bool,
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
    /// A loader that places parameters on `device`.
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
            used: BTreeSet::new(),
            progress,
            random: false,
        }
    }

    /// A loader that makes every tensor up, drawn on `device` (benchmarks: real shapes
    /// without a download). The architecture's code asks for names and shapes as when loading.
    pub fn random(device: &Device) -> WeightLoader<'static> {
        WeightLoader {
            source: &NoWeights,
            device: device.clone(),
            used: BTreeSet::new(),
            progress: ProgressBar::hidden(),
            random: true,
        }
    }

    /// A random frozen tensor of `shape`, when this loader makes tensors up.
    fn made_up<const D: usize>(&self, shape: [usize; D]) -> Option<Param<Tensor<D>>> {
        self.random.then(|| {
            let dist = Distribution::Uniform(-RANDOM_SCALE, RANDOM_SCALE);
            frozen(Tensor::random(shape, dist, &self.device))
        })
    }

    /// Whether the source holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.source.shape(name).is_some()
    }

    /// Reads `name`, checking that its shape is `expected`.
    pub fn host(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor> {
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
        let tensor = self.source.read_f32(name)?;
        self.progress.inc(self.source.stored_bytes(name));
        self.used.insert(name.to_string());
        Ok(tensor)
    }

    /// A 1-D parameter of length `len`.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Param<Tensor<1>>> {
        if let Some(p) = self.made_up([len]) {
            return Ok(p);
        }
        let t = self.host(name, &[len])?;
        Ok(frozen(self.upload(t.data, [len])))
    }

    /// A 2-D parameter stored as `[rows, cols]` and kept in that layout (embeddings, Conv1D).
    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Param<Tensor<2>>> {
        if let Some(p) = self.made_up([rows, cols]) {
            return Ok(p);
        }
        let t = self.host(name, &[rows, cols])?;
        Ok(frozen(self.upload(t.data, [rows, cols])))
    }

    /// A PyTorch `nn.Linear` weight stored `[out, in]`, returned as `[in, out]`.
    pub fn linear_weight(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Param<Tensor<2>>> {
        if let Some(p) = self.made_up([d_in, d_out]) {
            return Ok(p);
        }
        let t = self.host(name, &[d_out, d_in])?;
        Ok(Param::from_tensor(
            self.upload(transpose(&t.data, d_out, d_in), [d_in, d_out]),
        ))
    }

    fn upload<const D: usize>(&self, data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(data, shape), &self.device)
    }

    /// Ends loading: fails if the source held tensors nobody asked for, except those `ignorable`
    /// says may be dropped (e.g. cached attention masks in old GPT-2 checkpoints).
    pub fn finish(self, ignorable: impl Fn(&str) -> bool) -> Result<()> {
        self.progress.finish_and_clear();
        let unused: Vec<String> = self
            .source
            .names()
            .into_iter()
            .filter(|n| !self.used.contains(n) && !ignorable(n))
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
}

/// Base weights are frozen: adapters, not the model, are trained.
fn frozen<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t).set_require_grad(false)
}

/// Row-major transpose of a `[rows, cols]` matrix.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_moves_rows_to_columns() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }
}
