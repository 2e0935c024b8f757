//! One chunk of the cross-entropy in a single parallel pass over the logits, in place: each
//! row's maximum, exponentials, sum, loss and `softmax − one_hot`. Composed of tensor operations
//! it was five vocabulary-wide single-threaded steps (subtract, exp, divide, scatter, and their
//! outputs' allocation), 13% of the calling thread's time in a SmolLM2 LoRA step.

use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::math::exp_nonpositive;
use super::simd::widest;
use peft_core::flex_node::into_flex;

/// For `logits` `[rows, vocab]` in f32 on flex (with or without autodiff) and one target per row:
/// the sum over rows of `logsumexp(row) − row[target]`, and `softmax(row) − one_hot(target)` in
/// the logits' own storage. The logits come back as the error when they are not a flex f32
/// tensor or a target is out of range: the caller then composes the same from tensor operations.
pub(crate) fn cross_entropy_rows(
    logits: Tensor<2>,
    targets: &[i64],
) -> Result<(f64, Tensor<2>), Box<Tensor<2>>> {
    let [rows, vocab] = logits.dims();
    let in_range = targets
        .iter()
        .all(|&t| usize::try_from(t).is_ok_and(|t| t < vocab));
    if rows != targets.len() || vocab == 0 || logits.dtype() != DType::F32 || !in_range {
        return Err(Box::new(logits));
    }
    let Some((mut flex, wrap)) = into_flex(&logits) else {
        return Err(Box::new(logits));
    };
    // The only other handle on the storage goes, so that the pass below writes in place.
    drop(logits);
    if !flex.is_contiguous() || flex.layout().start_offset() != 0 {
        flex = flex.to_contiguous();
    }
    let storage = flex.storage_mut::<f32>();
    let loss = storage
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| widest(|| row_in_place(row, target as usize)))
        .sum();
    Ok((loss, wrap(flex)))
}

/// Lanes of the row loops below: wide enough for the compiler to vectorise them (AVX-512 has
/// sixteen).
const LANES: usize = 16;

/// One row: its loss `ln Σ exp(x − max) + max − x[target]`, and the row replaced by its softmax
/// with 1 taken from the target's entry.
#[inline(always)]
fn row_in_place(row: &mut [f32], target: usize) -> f64 {
    let target_logit = row[target];
    let max = lane_fold(row, f32::NEG_INFINITY, f32::max);
    let mut sums = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, sum) in chunk.iter_mut().zip(&mut sums) {
            *x = exp_nonpositive(*x - max);
            *sum += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inverse);
    row[target] -= 1.0;
    f64::from(sum).ln() + f64::from(max) - f64::from(target_logit)
}

/// `values` folded with `op` in [`LANES`] independent lanes, then the lanes together.
#[inline(always)]
fn lane_fold(values: &[f32], start: f32, op: fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [start; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder().iter().fold(start, |a, &b| op(a, b));
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, x);
        }
    }
    lanes.iter().fold(rest, |a, &b| op(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_gives_the_loss_and_softmax_minus_one_hot() {
        let logits: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 23) as f32 * 0.9 - 9.0)
            .collect();
        let target = 5;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
        let want_loss = sum.ln() + max - logits[target] as f64;
        let mut row = logits.clone();
        let loss = row_in_place(&mut row, target);
        assert!(
            (loss - want_loss).abs() < 1e-6,
            "{loss} against {want_loss}"
        );
        for (i, (&got, &x)) in row.iter().zip(&logits).enumerate() {
            let want = (x as f64 - max).exp() / sum - f64::from(u8::from(i == target));
            assert!(
                (got as f64 - want).abs() < 1e-6,
                "entry {i}: {got} against {want}"
            );
        }
    }

    #[test]
    fn takes_flex_f32_logits_with_or_without_autodiff_and_refuses_bad_targets() {
        let device = burn::tensor::Device::flex();
        let logits = Tensor::<2>::zeros([2, 3], &device);
        assert!(cross_entropy_rows(logits.clone(), &[0, 3]).is_err());
        assert!(cross_entropy_rows(logits.clone(), &[0]).is_err());
        let tracked = Tensor::<2>::zeros([2, 3], &device.clone().autodiff());
        assert!(
            cross_entropy_rows(tracked, &[0, 2]).is_ok(),
            "flex under autodiff"
        );
        let (loss, grad) = cross_entropy_rows(logits, &[0, 2]).expect("flex f32");
        assert!((loss - 2.0 * 3f64.ln()).abs() < 1e-6);
        let grad: Vec<f32> = grad.into_data().iter::<f32>().collect();
        let third = 1.0 / 3.0;
        let want = [third - 1.0, third, third, third, third, third - 1.0];
        assert!(grad.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6));
    }
}
