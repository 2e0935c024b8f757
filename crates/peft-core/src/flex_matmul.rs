//! `x · W` on the flex CPU backend as one autodiff node whose products, forward and backward,
//! are written straight into new tensors by the `gemm` crate (the one burn-flex multiplies
//! with).
//!
//! Written here because burn-flex 0.22.1 makes each product's output by allocating it zeroed as
//! bytes and copying that into a buffer of its own alignment (`FlexTensor::empty`), on the
//! calling thread while the product's workers wait: 12% of a SmolLM2 LoRA step's time. It also
//! runs products under 192³ multiply-adds on one thread, which is every product of a LoRA
//! branch (rank 16) at training shapes.

use std::ops::Range;

use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::flex_node::{binary, into_flex, FlexOp};

/// Multiply-adds from which a product is split over the CPU's threads.
const PARALLEL_FROM: usize = 1 << 20;

/// Rows up to which a product is written column-major and transposed after (see `product`).
const COLUMN_MAJOR_ROWS: usize = 128;

/// Rows up to which a product split over threads is split by columns (see `multiply_into`).
const COLUMN_SPLIT_ROWS: usize = 256;

/// Rows up to which a product whose right operand has contiguous columns (a transposed weight:
/// the input's gradient `dy · Wᵀ`, a tied head's logits) is split by columns (see
/// `multiply_into`).
const TRANSPOSED_COLUMN_SPLIT_ROWS: usize = 1024;

/// Columns of the output each thread takes at the least when a product is split by columns:
/// narrower outputs (a LoRA branch's rank) are split by rows.
const MIN_COLUMNS_PER_THREAD: usize = 64;

/// The columns of a block split by columns start at multiples of this (one AVX-512 vector of f32).
const COLUMN_ALIGN: usize = 16;

/// `x` `[rows, in]` times `weight` `[in, out]` for f32 tensors on flex, with or without
/// autodiff; `None` elsewhere, and the caller multiplies with Burn.
pub(crate) fn matmul(x: &Tensor<2>, weight: &Tensor<2>) -> Option<Tensor<2>> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return None;
    }
    binary(Matmul, x, weight)
}

/// [`matmul`] as a node of the autodiff graph; backward `dx = dy · Wᵀ`, `dW = xᵀ · dy`, each
/// only where wanted, so a frozen weight's input is not kept.
#[derive(Debug, Clone, Copy)]
struct Matmul;

impl FlexOp<2> for Matmul {
    fn forward(&self, [x, weight]: [&FlexTensor; 2]) -> FlexTensor {
        product(x, weight)
    }

    fn kept(&self, [x_tracked, weight_tracked]: [bool; 2]) -> [bool; 2] {
        // x's gradient needs the weight, the weight's needs x.
        [weight_tracked, x_tracked]
    }

    fn gradients(
        &self,
        [x, weight]: [Option<FlexTensor>; 2],
        grad_output: &FlexTensor,
        [want_x, want_weight]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let transposed = |t: Option<FlexTensor>| t.expect("kept for backward").transpose(0, 1);
        [
            want_x.then(|| product(grad_output, &transposed(weight))),
            want_weight.then(|| product(&transposed(x), grad_output)),
        ]
    }
}

/// `a` `[m, k]` times `b` `[k, n]` (any strides) into a new contiguous `[m, n]`.
fn product(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    sum_of_products(&[(a, b, 1.0)])
}

/// `Σ scale · a · b` over `terms` (each `a` `[m, k]`, `b` `[k, n]`, any strides, `k` their own)
/// into a new contiguous `[m, n]`: the first product written by `gemm`, the others added into
/// it as `gemm` computes them, with their scales folded into its multiplier, so that a sum of
/// products costs no tensor per term and no pass for the sum or the scales.
pub(crate) fn sum_of_products(terms: &[(&FlexTensor, &FlexTensor, f32)]) -> FlexTensor {
    let terms: Vec<_> = terms
        .iter()
        .map(|&(a, b, scale)| (positive_strides(a), positive_strides(b), scale))
        .collect();
    let (first_a, first_b, _) = terms.first().expect("sum_of_products: no terms");
    let (m, k) = (first_a.layout().shape()[0], first_a.layout().shape()[1]);
    let n = first_b.layout().shape()[1];
    // Left uninitialised: `gemm` with `read_dst` false writes every element (zeros when
    // `k` is 0), so zeroing it first would be one more pass over the output for nothing.
    let mut output: Vec<f32> = Vec::with_capacity(m * n);
    // `gemm` packs its left operand, and takes a row-major output as the transposed product,
    // whose left operand is `b`: the weight, packed again at every call (by every block's
    // thread, below).
    // For a few rows and a `b` whose columns are contiguous, the product is written column-major
    // instead, so that `gemm` packs the small `a` and reads `b` as it is, and the output is
    // transposed after: SmolLM2 LoRA q/v at 2x64 on flex, 681 / 672 -> 623 / 589 ms a step
    // (full fine-tuning 1443 / 1483 -> 1400 / 1385); neutral at 256 rows, slower at 512.
    let column_major = m <= COLUMN_MAJOR_ROWS && m < k && first_b.layout().strides()[0] == 1;
    let output_ptr = SendPtr(output.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    for (index, (a, b, scale)) in terms.iter().enumerate() {
        assert_eq!(
            [a.layout().shape()[0], b.layout().shape()[1]],
            [m, n],
            "sum_of_products: the terms' shapes differ"
        );
        // SAFETY: the output's capacity holds its `m × n` elements, row- or column-major; the
        // first term writes every one of them before the others read them.
        unsafe { multiply_into(a, b, output_ptr, column_major, index > 0, *scale) };
    }
    // SAFETY: every one of the output's `m × n` elements was written above.
    unsafe { output.set_len(m * n) };
    if column_major {
        // burn-flex's tiled copy of the transposed view.
        return FlexTensor::from_data(TensorData::new(output, [n, m]))
            .transpose(0, 1)
            .to_contiguous();
    }
    FlexTensor::from_data(TensorData::new(output, [m, n]))
}

/// `acc + a · b` for f32 tensors on flex outside autodiff, `gemm` adding the product into
/// `acc`'s storage (copied first where it is shared or a view): no product tensor, and no
/// separate pass for the sum, which Burn's would make on one thread. `Err(acc)` elsewhere.
pub(crate) fn add_product(
    acc: Tensor<2>,
    a: &Tensor<2>,
    b: &Tensor<2>,
) -> Result<Tensor<2>, Box<Tensor<2>>> {
    let all_f32 = [acc.dtype(), a.dtype(), b.dtype()]
        .iter()
        .all(|&dtype| dtype == DType::F32);
    let [m, n] = acc.dims();
    let shapes_fit = a.dims()[0] == m && b.dims()[1] == n && a.dims()[1] == b.dims()[0];
    let untracked = !(acc.is_tracked() || a.is_tracked() || b.is_tracked());
    if !(all_f32 && shapes_fit && untracked) {
        return Err(Box::new(acc));
    }
    let (Some((sum, wrap)), Some((a, _)), Some((b, _))) =
        (into_flex(&acc), into_flex(a), into_flex(b))
    else {
        return Err(Box::new(acc));
    };
    // The only other handle on the sum's storage goes, so that it is written in place.
    drop(acc);
    let (a, b) = (positive_strides(&a), positive_strides(&b));
    // A contiguous `sum` comes back as another handle on the same storage: the first one goes.
    let mut sum = {
        let contiguous = sum.to_contiguous();
        drop(sum);
        contiguous
    };
    let output_ptr = SendPtr(sum.storage_mut::<f32>().as_mut_ptr());
    // SAFETY: `sum` is a contiguous, row-major `m × n` buffer held by nothing else.
    unsafe { multiply_into(&a, &b, output_ptr, false, true, 1.0) };
    Ok(wrap(sum))
}

/// Writes `scale · a · b`, `a` `[m, k]`, `b` `[k, n]` (non-negative strides), into the `m × n`
/// output at `output`, row-major or `column_major`, or adds it to the values there when
/// `accumulate`.
///
/// # Safety
/// `output` must address `m × n` elements at the layout given, which nothing else reads or
/// writes meanwhile; with `accumulate`, initialised ones.
unsafe fn multiply_into(
    a: &FlexTensor,
    b: &FlexTensor,
    output: SendPtr,
    column_major: bool,
    accumulate: bool,
    scale: f32,
) {
    let (m, k) = (a.layout().shape()[0], a.layout().shape()[1]);
    let n = b.layout().shape()[1];
    assert_eq!(k, b.layout().shape()[0], "matmul: inner dimensions differ");
    let (a_rows, a_cols) = (a.layout().strides()[0], a.layout().strides()[1]);
    let (b_rows, b_cols) = (b.layout().strides()[0], b.layout().strides()[1]);
    let a_values = &a.storage::<f32>()[a.layout().start_offset()..];
    let b_values = &b.storage::<f32>()[b.layout().start_offset()..];
    let (dst_cs, dst_rs) = if column_major {
        (m as isize, 1)
    } else {
        (1, n as isize)
    };
    // `gemm` computes `dst = alpha · dst + beta · a · b`, reading `dst` only when asked to.
    let alpha = if accumulate { 1.0f32 } else { 0.0 };
    let block = |rows: Range<usize>, cols: Range<usize>| {
        // SAFETY: `rows` and `cols` lie inside `m` and `n`; the pointers address their rows of
        // `a`, their columns of `b` and their block of the output, at the strides given, which
        // the tensors' layouts (non-negative strides) and the caller's output guarantee to be
        // inside their buffers; blocks run at once are disjoint.
        unsafe {
            gemm::gemm(
                rows.len(),
                cols.len(),
                k,
                output
                    .get()
                    .offset(rows.start as isize * dst_rs + cols.start as isize * dst_cs),
                dst_cs,
                dst_rs,
                accumulate,
                a_values.as_ptr().offset(rows.start as isize * a_rows),
                a_cols,
                a_rows,
                b_values.as_ptr().offset(cols.start as isize * b_cols),
                b_cols,
                b_rows,
                alpha,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };
    // Products from `PARALLEL_FROM` multiply-adds are split into one block per thread, each a
    // single-threaded `gemm`, rather than given to `gemm`'s own threading: that packs the
    // weight's transpose (the input's gradient `dy · Wᵀ`) on the calling thread alone while
    // the workers wait, and synchronises its threads at every block of the inner dimension.
    // SmolLM2 LoRA on flex, alternate runs (split by rows): all linear layers 4x128 2644 / 2553
    // -> 2267 / 2362 ms a step, q/v 2x64 636 / 635 -> 572 / 555, q/v 8x256 8824 / 8831 -> 8447
    // / 8585; full fine-tuning 4x128 within noise.
    // Up to `COLUMN_SPLIT_ROWS` rows the blocks are columns: `gemm` packs the weight for every
    // block, and with a few rows that copy costs as much as the product (16% of a Qwen2.5-0.5B
    // LoRA step at 2x64 was packing, each thread packing the whole weight for its 64 rows);
    // split by columns, each thread packs only its own columns. 128 rows, two threads,
    // GFLOP/s by rows -> by columns: 896 x 4864 245 -> 282, 4864 x 896 253 -> 277, the head's
    // gradient 151936 x 896 240 -> 273; the head's logits, column-major, 275 -> 302. At 512
    // rows columns were ahead only on the input's gradients, whose right operand is a
    // transposed weight (4864 x 896 263 -> 299, 896 x 4864 289 -> 312), and even at 2048 rows;
    // those are split by columns up to `TRANSPOSED_COLUMN_SPLIT_ROWS`, the rest by rows. Release
    // builds, alternate runs, LoRA q/v 4x128: Qwen2.5-0.5B 3519 / 3497 -> 3437 / 3448 ms a
    // step, GPT-2 1061 / 1070 -> 1037 / 1026; SmolLM2 all-linear 4x128 1535 / 1535 -> 1531 / 1526.
    let threads = rayon::current_num_threads();
    if m * n * k < PARALLEL_FROM || threads < 2 {
        block(0..m, 0..n);
    } else if (m <= COLUMN_SPLIT_ROWS || (m <= TRANSPOSED_COLUMN_SPLIT_ROWS && b_rows == 1))
        && n >= threads * MIN_COLUMNS_PER_THREAD
    {
        let cols_per_block = n.div_ceil(threads).next_multiple_of(COLUMN_ALIGN);
        (0..n)
            .into_par_iter()
            .step_by(cols_per_block)
            .for_each(|start| block(0..m, start..(start + cols_per_block).min(n)));
    } else {
        let rows_per_block = m.div_ceil(threads);
        (0..m)
            .into_par_iter()
            .step_by(rows_per_block)
            .for_each(|start| block(start..(start + rows_per_block).min(m), 0..n));
    }
}

/// The output's pointer, shared by the threads that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: the threads given it write disjoint blocks (see `multiply_into`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `tensor`, copied into a contiguous one if some stride is negative (a flipped view).
fn positive_strides(tensor: &FlexTensor) -> FlexTensor {
    if tensor.layout().has_positive_strides() {
        tensor.clone()
    } else {
        tensor.to_contiguous()
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::testing::{assert_relatively_close, values};

    #[test]
    fn value_and_gradients_equal_burns_product() {
        let device = Device::flex().autodiff();
        // Large enough to be split over the threads (into blocks of rows, the last one
        // shorter, or, with few rows or a transposed weight, of columns), and small; fewer
        // rows than the inner dimension, written column-major where the right operand's
        // columns are contiguous, split or not.
        for (rows, inner, out) in [
            (301, 70, 90),
            (5, 3, 4),
            (20, 70, 90),
            (100, 200, 120),
            (64, 150, 300),
            (200, 100, 300),
            (300, 40, 200),
        ] {
            let x =
                Tensor::<2>::random([rows, inner], Distribution::Default, &device).require_grad();
            let w =
                Tensor::<2>::random([out, inner], Distribution::Default, &device).require_grad();
            let upstream = Tensor::<2>::random([rows, out], Distribution::Default, &device);

            // A transposed view, as a tied output head is.
            let ours = matmul(&x, &w.clone().transpose()).expect("flex f32 under autodiff");
            let our_grads = (ours.clone() * upstream.clone()).sum().backward();
            let burns = x.clone().matmul(w.clone().transpose());
            let burn_grads = (burns.clone() * upstream).sum().backward();

            assert_relatively_close(values(ours), values(burns), "value");
            for (name, t) in [("x", &x), ("w", &w)] {
                let got = values(t.grad(&our_grads).expect("a gradient"));
                let want = values(t.grad(&burn_grads).expect("a gradient"));
                assert_relatively_close(got, want, name);
            }
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_inference_multiplies() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([4, 3], Distribution::Default, &device).require_grad();
        let weight = Tensor::<2>::random([3, 2], Distribution::Default, &device);
        let grads = matmul(&x, &weight).expect("flex").sum().backward();
        assert!(weight.grad(&grads).is_none());
        assert!(x.grad(&grads).is_some());

        let plain = Device::flex();
        let x = Tensor::<2>::random([4, 3], Distribution::Default, &plain);
        let weight = Tensor::<2>::random([3, 2], Distribution::Default, &plain);
        let ours = matmul(&x, &weight).expect("flex without autodiff");
        assert_relatively_close(values(ours), values(x.matmul(weight)), "inference");
    }

    #[test]
    fn declines_other_types() {
        let device = Device::flex();
        let x = Tensor::<2>::zeros([2, 3], &device).cast(DType::BF16);
        assert!(matmul(&x, &Tensor::<2>::zeros([3, 2], &device)).is_none());
    }

    #[test]
    fn add_product_sums_into_the_accumulator_and_leaves_a_shared_one_alone() {
        let device = Device::flex().autodiff();
        // Split over the threads (2^21 multiply-adds), `a` a transposed view as the loss's.
        let acc = Tensor::<2>::random([96, 2048], Distribution::Default, &device);
        let a = Tensor::<2>::random([11, 96], Distribution::Default, &device).transpose();
        let b = Tensor::<2>::random([11, 2048], Distribution::Default, &device);
        let want = values(acc.clone() + a.clone().matmul(b.clone()));
        let before = values(acc.clone());
        let kept = acc.clone();
        let sum = add_product(acc, &a, &b).expect("flex f32, untracked");
        assert_relatively_close(values(sum), want, "sum");
        assert_eq!(values(kept), before, "the shared accumulator changed");

        let tracked = Tensor::<2>::zeros([96, 2048], &device).require_grad();
        assert!(add_product(tracked, &a, &b).is_err());
    }
}
