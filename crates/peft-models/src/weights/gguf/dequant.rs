//! GGML tensor types and their dequantization to f32, exactly as llama.cpp's
//! `dequantize_row_*` functions in `ggml-quants.c` compute it (same operations, same order,
//! in f32). Written here because no maintained Rust crate dequantizes GGUF without pulling in
//! a second tensor framework.

use half::{bf16, f16};
use peft_core::{BlockCodes, PackFormat};

/// Values per block of the legacy quantizations (`QK4_0`, `QK8_0`, ...).
const QK: usize = 32;
/// Values per super-block of the k-quantizations (`QK_K`).
const QK_K: usize = 256;
/// Bytes of the packed 6-bit scales and mins of Q4_K/Q5_K (`K_SCALE_SIZE`).
const K_SCALE_SIZE: usize = 12;

/// A storage type this crate can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)] // the names llama.cpp uses
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit, one f16 scale per 32 values.
    Q8_0,
    /// 4-bit, one f16 scale per 32 values, offset 8.
    Q4_0,
    /// 4-bit, f16 scale and minimum per 32 values.
    Q4_1,
    /// 5-bit, one f16 scale per 32 values, offset 16.
    Q5_0,
    /// 5-bit, f16 scale and minimum per 32 values.
    Q5_1,
    /// 4-bit k-quant: 256-value super-blocks of 8 sub-blocks with 6-bit scales and mins.
    Q4_K,
    /// 5-bit k-quant: as Q4_K with a fifth bit per value.
    Q5_K,
    /// 6-bit k-quant: 16 sub-blocks with 8-bit scales.
    Q6_K,
}

impl GgmlType {
    /// The types [`GgmlType::from_id`] accepts, for error messages.
    pub const SUPPORTED: &'static str =
        "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

    /// The type with GGML id `id`; otherwise the type's name (or its id) for the error message.
    pub fn from_id(id: u32) -> std::result::Result<Self, String> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => return Err(unsupported_name(other)),
        })
    }

    /// llama.cpp's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 => QK,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 2 + QK,
            Self::Q4_0 => 2 + QK / 2,
            Self::Q4_1 => 4 + QK / 2,
            Self::Q5_0 => 2 + 4 + QK / 2,
            Self::Q5_1 => 4 + 4 + QK / 2,
            Self::Q4_K => 4 + K_SCALE_SIZE + QK_K / 2,
            Self::Q5_K => 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2,
            Self::Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// Dequantizes whole blocks; `bytes.len()` must be a multiple of [`GgmlType::block_bytes`].
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::with_capacity(bytes.len() / self.block_bytes() * self.block_values());
        let block_fn: fn(&[u8], &mut Vec<f32>) = match self {
            Self::F32 => |b, y| y.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Self::F16 => |b, y| y.push(f16::from_le_bytes([b[0], b[1]]).to_f32()),
            Self::BF16 => |b, y| y.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            Self::Q8_0 => q8_0,
            Self::Q4_0 => q4_0,
            Self::Q4_1 => q4_1,
            Self::Q5_0 => q5_0,
            Self::Q5_1 => q5_1,
            Self::Q4_K => q4_k,
            Self::Q5_K => q5_k,
            Self::Q6_K => q6_k,
        };
        for block in bytes.chunks_exact(self.block_bytes()) {
            block_fn(block, &mut out);
        }
        out
    }
}

impl GgmlType {
    /// The blocks of a weight `[rows, cols]` as unsigned codes with a scale and offset each
    /// ([`BlockCodes`]: `value = code · scale + offset`), for the types that are exactly that
    /// (Q4_0, Q4_1, Q8_0); `None` for the others.
    pub fn block_codes(self, bytes: &[u8], rows: usize, cols: usize) -> Option<BlockCodes> {
        let blocks = bytes.len() / self.block_bytes();
        let (format, mut codes) = match self {
            Self::Q4_0 | Self::Q4_1 => (PackFormat::Q4, Vec::with_capacity(blocks * QK)),
            Self::Q8_0 => (PackFormat::Q8, Vec::with_capacity(blocks * QK)),
            _ => return None,
        };
        let (mut scales, mut offsets) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for b in bytes.chunks_exact(self.block_bytes()) {
            let d = half_at(b, 0);
            let (offset, qs) = match self {
                Self::Q4_0 => (-8.0 * d, &b[2..2 + QK / 2]),
                Self::Q4_1 => (half_at(b, 2), &b[4..4 + QK / 2]),
                _ => (-128.0 * d, &b[2..2 + QK]),
            };
            match format {
                PackFormat::Q4 => {
                    codes.extend(qs.iter().map(|&q| q & 0x0F));
                    codes.extend(qs.iter().map(|&q| q >> 4));
                }
                // A signed byte q as the unsigned code q + 128.
                PackFormat::Q8 => codes.extend(qs.iter().map(|&q| q ^ 0x80)),
            }
            scales.push(d);
            offsets.push(offset);
        }
        Some(BlockCodes {
            format,
            rows,
            cols,
            codes,
            scales,
            offsets,
        })
    }
}

fn unsupported_name(id: u32) -> String {
    let known = [
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| format!("ggml type id {id}"))
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `block_q8_0 { ggml_half d; int8_t qs[32]; }`: `y = qs[j] * d`.
fn q8_0(b: &[u8], y: &mut Vec<f32>) {
    let d = half_at(b, 0);
    y.extend(b[2..2 + QK].iter().map(|&q| (q as i8) as f32 * d));
}

/// `block_q4_0 { ggml_half d; uint8_t qs[16]; }`: low nibbles are values 0..16, high nibbles
/// 16..32, each `(q - 8) * d`.
fn q4_0(b: &[u8], y: &mut Vec<f32>) {
    let d = half_at(b, 0);
    let qs = &b[2..2 + QK / 2];
    y.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
    y.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// `block_q4_1 { ggml_half d; ggml_half m; uint8_t qs[16]; }`: `q * d + m`.
fn q4_1(b: &[u8], y: &mut Vec<f32>) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qs = &b[4..4 + QK / 2];
    y.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
    y.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// The fifth bits of a Q5 block: bit `j` of `qh` belongs to value `j`.
fn fifth_bits(qh: &[u8]) -> u32 {
    u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]])
}

/// `block_q5_0 { ggml_half d; uint8_t qh[4]; uint8_t qs[16]; }`: `(q | fifth bit << 4) - 16`, times d.
fn q5_0(b: &[u8], y: &mut Vec<f32>) {
    let d = half_at(b, 0);
    let qh = fifth_bits(&b[2..6]);
    let qs = &b[6..6 + QK / 2];
    let value =
        |j: usize, nibble: u8| ((nibble as u32 | (((qh >> j) & 1) << 4)) as i32 - 16) as f32 * d;
    y.extend(qs.iter().enumerate().map(|(j, &q)| value(j, q & 0x0F)));
    y.extend(qs.iter().enumerate().map(|(j, &q)| value(j + 16, q >> 4)));
}

/// `block_q5_1 { ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[16]; }`: `q * d + m`.
fn q5_1(b: &[u8], y: &mut Vec<f32>) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qh = fifth_bits(&b[4..8]);
    let qs = &b[8..8 + QK / 2];
    let value = |j: usize, nibble: u8| (nibble as u32 | (((qh >> j) & 1) << 4)) as f32 * d + m;
    y.extend(qs.iter().enumerate().map(|(j, &q)| value(j, q & 0x0F)));
    y.extend(qs.iter().enumerate().map(|(j, &q)| value(j + 16, q >> 4)));
}

/// llama.cpp's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j` (0..8).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qs[128]; }`.
fn q4_k(b: &[u8], y: &mut Vec<f32>) {
    let (d, min) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..4 + K_SCALE_SIZE];
    let qs = &b[4 + K_SCALE_SIZE..];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        y.extend(q.iter().map(|&v| d1 * (v & 0x0F) as f32 - m1));
        y.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - m2));
    }
}

/// `block_q5_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; }`.
fn q5_k(b: &[u8], y: &mut Vec<f32>) {
    let (d, min) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..4 + K_SCALE_SIZE];
    let qh = &b[4 + K_SCALE_SIZE..4 + K_SCALE_SIZE + QK_K / 8];
    let qs = &b[4 + K_SCALE_SIZE + QK_K / 8..];
    for (chunk, ql) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let high = |h: u8, mask: u8| if h & mask != 0 { 16 } else { 0 };
        y.extend(
            ql.iter()
                .zip(qh)
                .map(|(&l, &h)| d1 * ((l & 0x0F) + high(h, u1)) as f32 - m1),
        );
        y.extend(
            ql.iter()
                .zip(qh)
                .map(|(&l, &h)| d2 * ((l >> 4) + high(h, u2)) as f32 - m2),
        );
    }
}

/// `block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; }`.
fn q6_k(b: &[u8], y: &mut Vec<f32>) {
    let ql_all = &b[..QK_K / 2];
    let qh_all = &b[QK_K / 2..QK_K / 2 + QK_K / 4];
    let sc_all = &b[QK_K / 2 + QK_K / 4..QK_K / 2 + QK_K / 4 + QK_K / 16];
    let d = half_at(b, QK_K / 2 + QK_K / 4 + QK_K / 16);
    for half in 0..2 {
        let ql = &ql_all[64 * half..];
        let qh = &qh_all[32 * half..];
        let sc = &sc_all[8 * half..];
        let mut out = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
        y.extend_from_slice(&out);
    }
}

#[cfg(test)]
mod tests {
    //! Each type is checked on a block of arbitrary bytes against llama.cpp's formula for
    //! value `i` written out element by element (bit positions computed from `i`, not by the
    //! loops above), plus hand-computed values for the simple types.

    use super::GgmlType;
    use half::{bf16, f16};

    /// Deterministic arbitrary bytes.
    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect()
    }

    /// A block of `ty` with arbitrary quants and the given f16 fields at `offsets`.
    fn block(ty: GgmlType, halves: &[(usize, f32)], seed: u32) -> Vec<u8> {
        let mut b = bytes(ty.block_bytes(), seed);
        for &(at, value) in halves {
            b[at..at + 2].copy_from_slice(&f16::from_f32(value).to_le_bytes());
        }
        b
    }

    fn half(b: &[u8], at: usize) -> f32 {
        f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
    }

    /// Nibble `i` (0..32) of a legacy 32-value block: low nibbles first, then high.
    fn nibble(qs: &[u8], i: usize) -> u8 {
        if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        }
    }

    fn assert_same(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "value {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn floats() {
        let f32_bytes: Vec<u8> = [1.5f32, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(GgmlType::F32.dequantize(&f32_bytes), vec![1.5, -0.25]);
        // 0x3C00 = 1.0 and 0xC000 = -2.0 in IEEE half precision.
        assert_eq!(
            GgmlType::F16.dequantize(&[0x00, 0x3C, 0x00, 0xC0]),
            vec![1.0, -2.0]
        );
        // bfloat16 is the top half of an f32: 0x3F80 = 1.0, 0x4049 = 3.140625.
        assert_eq!(
            GgmlType::BF16.dequantize(&[0x80, 0x3F, 0x49, 0x40]),
            vec![1.0, 3.140625]
        );
        assert_eq!(bf16::from_f32(3.140625).to_bits(), 0x4049);
    }

    #[test]
    fn q8_0() {
        // Hand-computed: d = 0.5, qs = [-128, -1, 0, 1, 127, ...].
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for (i, q) in [-128i8, -1, 0, 1, 127].iter().enumerate() {
            b[2 + i] = *q as u8;
        }
        let y = GgmlType::Q8_0.dequantize(&b);
        assert_eq!(&y[..5], &[-64.0, -0.5, 0.0, 0.5, 63.5]);
        let b = block(GgmlType::Q8_0, &[(0, 0.037)], 1);
        let d = half(&b, 0);
        let want: Vec<f32> = (0..32).map(|i| (b[2 + i] as i8) as f32 * d).collect();
        assert_same(&GgmlType::Q8_0.dequantize(&b), &want);
    }

    #[test]
    fn q4_0() {
        // Hand-computed: d = 2, qs[0] = 0xF3: value 0 = (3 - 8) * 2 = -10, value 16 = (15 - 8) * 2 = 14.
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2] = 0xF3;
        let y = GgmlType::Q4_0.dequantize(&b);
        assert_eq!((y[0], y[16], y[1]), (-10.0, 14.0, -16.0));
        let b = block(GgmlType::Q4_0, &[(0, -0.11)], 2);
        let d = half(&b, 0);
        let want: Vec<f32> = (0..32)
            .map(|i| (nibble(&b[2..], i) as i32 - 8) as f32 * d)
            .collect();
        assert_same(&GgmlType::Q4_0.dequantize(&b), &want);
    }

    #[test]
    fn q4_1() {
        let b = block(GgmlType::Q4_1, &[(0, 0.07), (2, -0.9)], 3);
        let (d, m) = (half(&b, 0), half(&b, 2));
        let want: Vec<f32> = (0..32).map(|i| nibble(&b[4..], i) as f32 * d + m).collect();
        assert_same(&GgmlType::Q4_1.dequantize(&b), &want);
    }

    #[test]
    fn q5_0() {
        let b = block(GgmlType::Q5_0, &[(0, 0.021)], 4);
        let d = half(&b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let want: Vec<f32> = (0..32)
            .map(|i| {
                let q = nibble(&b[6..], i) as u32 | (((qh >> i) & 1) << 4);
                (q as i32 - 16) as f32 * d
            })
            .collect();
        assert_same(&GgmlType::Q5_0.dequantize(&b), &want);
    }

    #[test]
    fn q5_1() {
        let b = block(GgmlType::Q5_1, &[(0, 0.013), (2, 0.4)], 5);
        let (d, m) = (half(&b, 0), half(&b, 2));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let want: Vec<f32> = (0..32)
            .map(|i| (nibble(&b[8..], i) as u32 | (((qh >> i) & 1) << 4)) as f32 * d + m)
            .collect();
        assert_same(&GgmlType::Q5_1.dequantize(&b), &want);
    }

    /// The 6-bit scale and minimum of sub-block `sub` (0..8) of a Q4_K/Q5_K block, from the
    /// 12-byte layout: bytes 0..4 hold scales 0..4 (low 6 bits), bytes 4..8 mins 0..4, bytes
    /// 8..12 the low 4 bits of scales/mins 4..8 whose top 2 bits sit in bytes 0..8's top bits.
    fn k_scale_min(s: &[u8], sub: usize) -> (f32, f32) {
        if sub < 4 {
            ((s[sub] & 63) as f32, (s[sub + 4] & 63) as f32)
        } else {
            let scale = (s[sub + 4] & 0x0F) | ((s[sub - 4] >> 6) << 4);
            let min = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
            (scale as f32, min as f32)
        }
    }

    #[test]
    fn q4_k() {
        let b = block(GgmlType::Q4_K, &[(0, 0.003), (2, 0.011)], 6);
        let (d, dmin) = (half(&b, 0), half(&b, 2));
        let want: Vec<f32> = (0..256)
            .map(|i| {
                let (chunk, within) = (i / 64, i % 64);
                let (scale, min) = k_scale_min(&b[4..16], 2 * chunk + within / 32);
                let byte = b[16 + chunk * 32 + within % 32];
                let q = if within < 32 { byte & 0x0F } else { byte >> 4 };
                (d * scale) * q as f32 - dmin * min
            })
            .collect();
        assert_same(&GgmlType::Q4_K.dequantize(&b), &want);
    }

    #[test]
    fn q5_k() {
        let b = block(GgmlType::Q5_K, &[(0, 0.002), (2, 0.009)], 7);
        let (d, dmin) = (half(&b, 0), half(&b, 2));
        let want: Vec<f32> = (0..256)
            .map(|i| {
                let (chunk, within) = (i / 64, i % 64);
                let sub = 2 * chunk + within / 32;
                let (scale, min) = k_scale_min(&b[4..16], sub);
                let byte = b[48 + chunk * 32 + within % 32];
                let low = if within < 32 { byte & 0x0F } else { byte >> 4 };
                let high = (b[16 + within % 32] >> sub) & 1;
                (d * scale) * (low + 16 * high) as f32 - dmin * min
            })
            .collect();
        assert_same(&GgmlType::Q5_K.dequantize(&b), &want);
    }

    #[test]
    fn q6_k() {
        let b = block(GgmlType::Q6_K, &[(208, 0.0041)], 8);
        let d = half(&b, 208);
        let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
        let want: Vec<f32> = (0..256)
            .map(|i| {
                let (half_block, j) = (i / 128, i % 128);
                let (quarter, l) = (j / 32, j % 32);
                let low_byte = ql[64 * half_block + l + 32 * (quarter % 2)];
                let low = if quarter < 2 {
                    low_byte & 0x0F
                } else {
                    low_byte >> 4
                };
                let high = (qh[32 * half_block + l] >> (2 * quarter)) & 3;
                let q = (low | (high << 4)) as i32 - 32;
                let scale = scales[8 * half_block + l / 16 + 2 * quarter] as i8;
                d * scale as f32 * q as f32
            })
            .collect();
        assert_same(&GgmlType::Q6_K.dequantize(&b), &want);
    }

    #[test]
    fn unsupported_types_are_named() {
        assert_eq!(GgmlType::from_id(10), Err("Q2_K".to_string()));
        assert_eq!(GgmlType::from_id(99), Err("ggml type id 99".to_string()));
        assert_eq!(GgmlType::from_id(12), Ok(GgmlType::Q4_K));
    }
}
