//! Datasheet peak throughput of common NVIDIA GPUs, so that `bench` reports model FLOP
//! utilisation on them without `--peak-tflops`.

use crate::cmd::dtype::Dtype;

/// One GPU: the words its name contains and its dense (no sparsity) peaks in TFLOP/s.
struct Gpu {
    /// Consecutive words of the name the driver reports (`NVIDIA H100 PCIe`).
    words: &'static [&'static str],
    /// FP32 on the CUDA cores.
    f32: f64,
    /// FP16/BF16 on the tensor cores, FP32 accumulation.
    half: f64,
}

const fn gpu(words: &'static [&'static str], f32: f64, half: f64) -> Gpu {
    Gpu { words, f32, half }
}

/// Name words, FP32 and BF16/FP16 peaks; more specific names first (`H100 PCIe` before `H100`).
const GPUS: &[Gpu] = &[
    gpu(&["H200", "NVL"], 60.0, 835.0),
    gpu(&["H200"], 67.0, 989.0),
    gpu(&["GH200"], 67.0, 989.0),
    gpu(&["H100", "PCIe"], 51.0, 756.0),
    gpu(&["H100", "NVL"], 60.0, 835.0),
    gpu(&["H100"], 67.0, 989.0),
    gpu(&["A100"], 19.5, 312.0),
    gpu(&["L40S"], 91.6, 362.0),
    gpu(&["A10"], 31.2, 125.0),
    gpu(&["RTX", "4090"], 82.6, 165.2),
    gpu(&["RTX", "3090"], 35.6, 71.0),
];

/// The peak TFLOP/s for `dtype` of the GPU named in `device` (`cuda (NVIDIA H200)`,
/// `wgpu (NVIDIA GeForce RTX 4090)`), or `None` for a device not in the table (and CPUs).
pub fn known_peak_tflops(device: &str, dtype: Dtype) -> Option<f64> {
    let words: Vec<&str> = device
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let gpu = GPUS.iter().find(|gpu| {
        words.windows(gpu.words.len()).any(|window| {
            window
                .iter()
                .zip(gpu.words)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
        })
    })?;
    Some(match dtype {
        Dtype::F32 => gpu.f32,
        Dtype::F16 | Dtype::Bf16 => gpu.half,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_found_by_whole_words_of_their_name() {
        assert_eq!(
            known_peak_tflops("cuda (NVIDIA H200)", Dtype::Bf16),
            Some(989.0)
        );
        assert_eq!(
            known_peak_tflops("cuda (NVIDIA H200 NVL)", Dtype::Bf16),
            Some(835.0)
        );
        assert_eq!(
            known_peak_tflops("cuda (NVIDIA H100 PCIe)", Dtype::F32),
            Some(51.0)
        );
        assert_eq!(
            known_peak_tflops("cuda (NVIDIA H100 80GB HBM3)", Dtype::F16),
            Some(989.0)
        );
        assert_eq!(
            known_peak_tflops("cuda (NVIDIA A100-SXM4-80GB)", Dtype::Bf16),
            Some(312.0)
        );
        assert_eq!(
            known_peak_tflops("wgpu (NVIDIA GeForce RTX 4090)", Dtype::F32),
            Some(82.6)
        );
        // A10 is a word of "NVIDIA A10", not of "A100".
        assert_eq!(
            known_peak_tflops("cuda (NVIDIA A10)", Dtype::Bf16),
            Some(125.0)
        );
        assert_eq!(known_peak_tflops("flex (CPU)", Dtype::F32), None);
        assert_eq!(
            known_peak_tflops("wgpu (llvmpipe (LLVM 15.0.6, 256 bits))", Dtype::F32),
            None
        );
    }
}
