//! Frozen weights kept block-quantized on the device (QLoRA's base): 4- or 8-bit codes packed
//! into 32-bit words, with a scale and an offset per block of 32 input values, expanded to
//! f32 only when a product needs them and dropped after it.
//!
//! Every GGUF block type this keeps (Q4_0, Q4_1, Q8_0) is `value = code · scale + offset`
//! with an unsigned code, so one layout holds them all exactly: Q4_0's `(q − 8)·d` is
//! `q·d − 8d`, Q8_0's `q·d` with a signed byte is `(q + 128)·d − 128d`. Expansion uses only
//! integer shifts and masks and one multiply-add, which every backend has; a hand-written
//! layout rather than Burn's block quantisation because Burn's schemes are symmetric (no
//! offset, so not Q4_1, SmolLM2's type) and flex and ndarray store them without computing.

use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use half::f16;

use crate::error::{PeftError, Result};

/// Values per block, sharing one scale and offset (ggml's `QK`).
pub const BLOCK: usize = 32;

/// The width of a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackFormat {
    /// 4-bit codes (GGUF Q4_0 and Q4_1).
    Q4,
    /// 8-bit codes (GGUF Q8_0).
    Q8,
}

impl PackFormat {
    /// Bits per code.
    pub fn bits(self) -> usize {
        match self {
            Self::Q4 => 4,
            Self::Q8 => 8,
        }
    }

    /// Codes in one 32-bit word.
    fn per_word(self) -> usize {
        32 / self.bits()
    }

    /// Words holding one block.
    fn words_per_block(self) -> usize {
        BLOCK / self.per_word()
    }

    fn max_code(self) -> u32 {
        (1 << self.bits()) - 1
    }
}

/// A weight `[out, in]` (PyTorch's `nn.Linear` layout) as block codes on the host: row `r`'s
/// values `c` are `codes[r·in + c] · scales[r·in/32 + c/32] + offsets[...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockCodes {
    /// Code width.
    pub format: PackFormat,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features), a multiple of [`BLOCK`].
    pub cols: usize,
    /// One unsigned code per value, row-major.
    pub codes: Vec<u8>,
    /// One scale per block, row-major `[rows, cols / 32]`.
    pub scales: Vec<f32>,
    /// One offset per block, laid out as `scales`.
    pub offsets: Vec<f32>,
}

impl BlockCodes {
    /// Quantizes `values` `[rows, cols]` as llama.cpp quantizes to Q4_1 (`Q4`: per block
    /// `d = (max − min)/15`, `m = min`) or Q8_0 (`Q8`: `d = max|x|/127`), scales and offsets
    /// rounded to f16 as those files store them.
    pub fn quantize(format: PackFormat, values: &[f32], rows: usize, cols: usize) -> Self {
        let blocks = values.len() / BLOCK;
        let mut codes = Vec::with_capacity(values.len());
        let (mut scales, mut offsets) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for block in values.chunks_exact(BLOCK) {
            let (scale, offset) = match format {
                PackFormat::Q4 => {
                    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    (half((max - min) / 15.0), half(min))
                }
                PackFormat::Q8 => {
                    let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let d = half(amax / 127.0);
                    (d, -128.0 * d)
                }
            };
            let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
            codes.extend(block.iter().map(|&v| {
                let code = ((v - offset) * inverse).round();
                code.clamp(0.0, format.max_code() as f32) as u8
            }));
            scales.push(scale);
            offsets.push(offset);
        }
        Self {
            format,
            rows,
            cols,
            codes,
            scales,
            offsets,
        }
    }

    /// The first NaN or infinite scale or offset, with the row-major index of the first value
    /// of its block: such a block expands to NaN or infinite weights.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        self.scales
            .iter()
            .zip(&self.offsets)
            .enumerate()
            .find_map(|(block, (&s, &o))| {
                let bad = [s, o].into_iter().find(|v| !v.is_finite());
                bad.map(|v| (block * BLOCK, v))
            })
    }

    /// The values `[rows, cols]`, row-major (what a dequantizing loader produces).
    pub fn values(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &code)| {
                let block = i / BLOCK;
                code as f32 * self.scales[block] + self.offsets[block]
            })
            .collect()
    }

    /// The same codes with rows reordered: row `r` of the result is row `order[r]` of these.
    pub fn reorder_rows(&self, order: &[usize]) -> Self {
        let per_row = self.cols / BLOCK;
        let mut out = Self {
            codes: Vec::with_capacity(self.codes.len()),
            scales: Vec::with_capacity(self.scales.len()),
            offsets: Vec::with_capacity(self.offsets.len()),
            ..*self
        };
        for &r in order {
            out.codes
                .extend_from_slice(&self.codes[r * self.cols..(r + 1) * self.cols]);
            out.scales
                .extend_from_slice(&self.scales[r * per_row..(r + 1) * per_row]);
            out.offsets
                .extend_from_slice(&self.offsets[r * per_row..(r + 1) * per_row]);
        }
        out
    }
}

fn half(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// A frozen weight `[in, out]` held as block codes on the device.
///
/// `words` is `[in/32, W, out]`, `W` the words per block: code `p` of the block of inputs
/// `32b..32b+32` in output column `o` sits in word `[b, p mod W, o]` at bit `(p div W)·bits`,
/// so that expanding is shift, mask and stack, with no transpose.
#[derive(Module, Debug)]
pub struct PackedWeight {
    /// Packed codes, `[in/32, W, out]`, 32-bit integers.
    pub words: Tensor<3, Int>,
    /// Scale per block, `[in/32, 1, out]`.
    pub scales: Tensor<3>,
    /// Offset per block, `[in/32, 1, out]`.
    pub offsets: Tensor<3>,
    /// Code width.
    #[module(skip)]
    pub format: PackFormat,
}

impl PackedWeight {
    /// Uploads `codes` (a weight stored `[out, in]`) as the weight `[in, out]` it is the
    /// transpose of; `name` names it in errors.
    pub fn upload(codes: &BlockCodes, name: &str, device: &Device) -> Result<Self> {
        let (rows, cols) = (codes.rows, codes.cols);
        if cols % BLOCK != 0 || codes.codes.len() != rows * cols {
            return Err(PeftError::State(format!(
                "{name}: a [{rows}, {cols}] weight cannot be packed in blocks of {BLOCK} input values; \
                 its input width must be a multiple of {BLOCK}"
            )));
        }
        let format = codes.format;
        let (blocks, per_block, per_word) =
            (cols / BLOCK, format.words_per_block(), format.per_word());
        // 32-bit words as the backends' i32 (every backend has it): expansion masks after
        // shifting, so the sign bit does not matter.
        let mut words = vec![0i32; blocks * per_block * rows];
        for r in 0..rows {
            for c in 0..cols {
                let (b, p) = (c / BLOCK, c % BLOCK);
                let (k, s) = (p % per_block, p / per_block);
                let code = codes.codes[r * cols + c] as u32;
                words[(b * per_block + k) * rows + r] |= (code << (s * format.bits())) as i32;
            }
        }
        debug_assert_eq!(per_block * per_word, BLOCK);
        let per_block_values = |v: &[f32]| {
            let mut out = vec![0.0f32; blocks * rows];
            for r in 0..rows {
                for b in 0..blocks {
                    out[b * rows + r] = v[r * blocks + b];
                }
            }
            Tensor::from_data(TensorData::new(out, [blocks, 1, rows]), device)
        };
        Ok(Self {
            words: Tensor::from_data(
                TensorData::new(words, [blocks, per_block, rows]),
                (device, DType::I32),
            ),
            scales: per_block_values(&codes.scales),
            offsets: per_block_values(&codes.offsets),
            format,
        })
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        let [blocks, _, out] = self.words.dims();
        [blocks * BLOCK, out]
    }

    /// Where it lives.
    pub fn device(&self) -> Device {
        self.words.device()
    }

    /// Bytes it takes on the device.
    pub fn stored_bytes(&self) -> usize {
        let [blocks, per_block, out] = self.words.dims();
        4 * blocks * out * (per_block + 2)
    }

    /// The weight `[in, out]` in f32, made now (and freed when the caller drops it).
    pub fn dequantize(&self) -> Tensor<2> {
        self.expand(
            self.words.clone(),
            self.scales.clone(),
            self.offsets.clone(),
        )
    }

    /// Output columns `ids` of the weight, as rows `[ids.len(), in]` in f32: the rows of an
    /// embedding table `[vocab, in]` stored as the weight of the output head tied to it.
    pub fn columns(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        let pick = |t: Tensor<3>| t.select(2, ids.clone());
        let words = self.words.clone().select(2, ids.clone());
        self.expand(words, pick(self.scales.clone()), pick(self.offsets.clone()))
            .transpose()
    }

    /// Output columns `start..start + len` of the weight, `[in, len]` in f32 (a slice of a
    /// packed output head).
    pub fn column_range(&self, start: usize, len: usize) -> Tensor<2> {
        self.expand(
            self.words.clone().narrow(2, start, len),
            self.scales.clone().narrow(2, start, len),
            self.offsets.clone().narrow(2, start, len),
        )
    }

    /// Codes `words` `[blocks, W, n]` with their scales and offsets as values `[in, n]`.
    fn expand(&self, words: Tensor<3, Int>, scales: Tensor<3>, offsets: Tensor<3>) -> Tensor<2> {
        let [blocks, _, n] = words.dims();
        let bits = self.format.bits();
        let mask = self.format.max_code() as i64;
        let shifted: Vec<Tensor<3, Int>> = (0..self.format.per_word())
            .map(|s| {
                words
                    .clone()
                    .bitwise_right_shift_scalar((s * bits) as i64)
                    .bitwise_and_scalar(mask)
            })
            .collect();
        // [blocks, codes per word, W, n] → [blocks, 32, n]: code p = s·W + k.
        let codes = Tensor::stack::<4>(shifted, 1).reshape([blocks, BLOCK, n]);
        let values = codes.float() * scales + offsets;
        values.reshape([blocks * BLOCK, n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    fn sample(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.4) * (1.0 + (i % 5) as f32))
            .collect()
    }

    fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols)
            .flat_map(|c| (0..rows).map(move |r| (r, c)))
            .map(|(r, c)| v[r * cols + c])
            .collect()
    }

    #[test]
    fn expanding_on_the_device_gives_the_host_values_exactly() {
        let device = Device::default();
        for format in [PackFormat::Q4, PackFormat::Q8] {
            let (rows, cols) = (5, 64);
            let codes = BlockCodes::quantize(format, &sample(rows, cols), rows, cols);
            let packed = PackedWeight::upload(&codes, "w", &device).unwrap();
            assert_eq!(packed.dims(), [cols, rows]);
            let expected = transpose(&codes.values(), rows, cols);
            assert_eq!(values(packed.dequantize()), expected, "{format:?}");
        }
    }

    #[test]
    fn columns_are_the_rows_of_the_table_the_weight_was_stored_as() {
        let device = Device::default();
        let (rows, cols) = (6, 64);
        let codes = BlockCodes::quantize(PackFormat::Q8, &sample(rows, cols), rows, cols);
        let packed = PackedWeight::upload(&codes, "w", &device).unwrap();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(vec![4i64, 1, 4], [3]), &device);
        let table = codes.values();
        let expected: Vec<f32> = [4, 1, 4]
            .iter()
            .flat_map(|&r| table[r * cols..(r + 1) * cols].to_vec())
            .collect();
        assert_eq!(values(packed.columns(ids)), expected);
    }

    #[test]
    fn quantization_error_is_within_half_a_step() {
        for (format, steps) in [(PackFormat::Q4, 15.0), (PackFormat::Q8, 254.0)] {
            let (rows, cols) = (3, 96);
            let original = sample(rows, cols);
            let codes = BlockCodes::quantize(format, &original, rows, cols);
            for (block, (x, y)) in original
                .chunks(BLOCK)
                .zip(codes.values().chunks(BLOCK))
                .enumerate()
            {
                let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let step = codes.scales[block];
                assert!(
                    step <= amax * 2.0 / steps * 1.001,
                    "{format:?}: step {step}"
                );
                for (a, b) in x.iter().zip(y) {
                    // Half a step, plus the f16 rounding of scale and offset.
                    assert!(
                        (a - b).abs() <= 0.5 * step + amax / 512.0,
                        "{format:?}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_width_that_is_not_whole_blocks_is_refused_by_name() {
        let codes = BlockCodes::quantize(PackFormat::Q8, &sample(2, 32), 2, 32);
        let bad = BlockCodes {
            cols: 16,
            rows: 4,
            ..codes
        };
        let err = PackedWeight::upload(&bad, "model.layers.0.q_proj.weight", &Device::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.0.q_proj.weight") && err.contains("multiple of 32"),
            "{err}"
        );
    }

    #[test]
    fn a_non_finite_scale_is_found_with_its_block() {
        let mut codes = BlockCodes::quantize(PackFormat::Q4, &sample(2, 64), 2, 64);
        assert_eq!(codes.first_non_finite(), None);
        codes.offsets[3] = f32::NAN;
        let (index, value) = codes.first_non_finite().unwrap();
        assert_eq!(index, 3 * BLOCK);
        assert!(value.is_nan());
    }

    #[test]
    fn reordered_rows_expand_to_the_reordered_values() {
        let (rows, cols) = (4, 32);
        let codes = BlockCodes::quantize(PackFormat::Q4, &sample(rows, cols), rows, cols);
        let order = [2, 0, 3, 1];
        let moved = codes.reorder_rows(&order).values();
        let original = codes.values();
        for (r, &from) in order.iter().enumerate() {
            assert_eq!(
                moved[r * cols..(r + 1) * cols],
                original[from * cols..(from + 1) * cols]
            );
        }
    }
}
