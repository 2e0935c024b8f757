//! A LoRA-adapted projection `x · W + s · (x' · A) · B` on the flex CPU backend as one autodiff
//! node (`x'` is `x`, or `x` after dropout): the update added into the base product by `gemm`
//! as it computes it, and backward's two gradients of the input summed the same way.
//!
//! Written here because, as separate operations, the update costs a `[rows, out]` tensor for
//! the product, a pass that scales it and one that adds it to the base product (and backward
//! one that scales the output's gradient and one that sums the input's two gradients), each a
//! new tensor and a pass over memory on one thread. Release builds, alternate runs, LoRA on
//! every linear layer at 4x128: SmolLM2 1700 / 1672 -> 1490 / 1531 ms a step, GPT-2 1233 /
//! 1238 -> 1144 / 1153; at 2x64, Qwen2.5-0.5B 1389 / 1321 -> 1276 / 1301. LoRA on q/v: SmolLM2
//! 2x64 423 / 419 -> 415 / 415, 4x128 1525 / 1491 / 1530 -> 1502 / 1455 / 1446; Qwen2.5-0.5B
//! 4x128 medians of five alternate runs 3987 -> 4078, the one row found slower (its peak 54 MB
//! lower).

use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;

use crate::flex_matmul::sum_of_products;
use crate::flex_node::{into_flex, nary, FlexOp};

/// `x` `[rows, in]` times `weight` `[in, out]` plus `scale · (branch · a) · b` (`a` `[in, r]`,
/// `b` `[r, out]`), where `branch` is `x` after dropout (`None`: `x` itself), for f32 tensors on
/// flex, with or without autodiff; `None` elsewhere, and the caller computes it with Burn.
pub(crate) fn lora_product(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    branch: Option<&Tensor<2>>,
    [a, b]: [&Tensor<2>; 2],
    scale: f32,
) -> Option<Tensor<2>> {
    let branch_input = branch.unwrap_or(x);
    let inputs = [x, weight, a, b, branch_input];
    if inputs.iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    // `branch · a` `[rows, r]`, which backward needs for `b`'s gradient: computed here outside
    // autodiff and handed to the node as one more, untracked, input; the node's own backward
    // step gives the branch input and `a` their gradients.
    let (branch_flex, wrap) = into_flex(branch_input)?;
    let (a_flex, _) = into_flex(a)?;
    let down = wrap(sum_of_products(&[(&branch_flex, &a_flex, 1.0)]));
    let op = LoraProduct {
        scale,
        dropout: branch.is_some(),
    };
    nary(op, [x, weight, a, b, branch_input, &down])
}

/// The node: inputs `[x, weight, a, b, branch, down]`, `down = branch · a`; without dropout
/// `branch` is `x`, and its gradient is summed into `x`'s.
#[derive(Debug, Clone, Copy)]
struct LoraProduct {
    scale: f32,
    dropout: bool,
}

impl FlexOp<6> for LoraProduct {
    fn forward(&self, [x, weight, _, b, _, down]: [&FlexTensor; 6]) -> FlexTensor {
        sum_of_products(&[(x, weight, 1.0), (down, b, self.scale)])
    }

    fn kept(&self, tracked: [bool; 6]) -> [bool; 6] {
        let [x, weight, a, b, branch, _] = tracked;
        let branch = branch || (x && !self.dropout);
        [
            // x for the weight's gradient, the weight for x's.
            weight,
            x,
            // `a` for the branch input's gradient, which multiplies `d(down) = s · dy · bᵀ`,
            // as does `a`'s.
            branch,
            a || branch,
            // The branch input for `a`'s gradient, `down` for `b`'s.
            a,
            b,
        ]
    }

    fn gradients(
        &self,
        [x, weight, a, b, branch, down]: [Option<FlexTensor>; 6],
        dy: &FlexTensor,
        [want_x, want_weight, want_a, want_b, want_branch, _]: [bool; 6],
    ) -> [Option<FlexTensor>; 6] {
        let kept = |t: Option<FlexTensor>| t.expect("kept for backward");
        let transposed = |t: &FlexTensor| t.clone().transpose(0, 1);
        let s = self.scale;
        let want_branch = want_branch || (want_x && !self.dropout);
        // `d(down) = s · dy · bᵀ` `[rows, r]`.
        let down_grad =
            (want_a || want_branch).then(|| sum_of_products(&[(dy, &transposed(&kept(b)), s)]));
        let grad_b = want_b.then(|| sum_of_products(&[(&transposed(&kept(down)), dy, s)]));
        let grad_a = want_a.then(|| {
            let down_grad = down_grad.as_ref().expect("computed for a");
            sum_of_products(&[(&transposed(&kept(branch)), down_grad, 1.0)])
        });
        // The branch input's gradient `d(down) · aᵀ`, added into `x`'s `dy · weightᵀ` when
        // the branch input is `x`.
        let a_transposed = want_branch.then(|| transposed(&kept(a)));
        let branch_term = down_grad.as_ref().zip(a_transposed.as_ref());
        let grad_x = want_x.then(|| {
            let weight_transposed = transposed(&kept(weight));
            match branch_term.filter(|_| !self.dropout) {
                Some((down_grad, a_t)) => {
                    sum_of_products(&[(dy, &weight_transposed, 1.0), (down_grad, a_t, 1.0)])
                }
                None => sum_of_products(&[(dy, &weight_transposed, 1.0)]),
            }
        });
        let grad_branch = branch_term
            .filter(|_| self.dropout)
            .map(|(down_grad, a_t)| sum_of_products(&[(down_grad, a_t, 1.0)]));
        let grad_weight = want_weight.then(|| sum_of_products(&[(&transposed(&kept(x)), dy, 1.0)]));
        [grad_x, grad_weight, grad_a, grad_b, grad_branch, None]
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::testing::{assert_relatively_close, values};

    fn random(shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::random(shape, Distribution::Default, device)
    }

    #[test]
    fn value_and_gradients_equal_burns_operations() {
        let device = Device::flex().autodiff();
        let scale = 0.75;
        // Split over the threads or not, written column-major or not (few rows and a
        // transposed weight); the branch input `x` itself or another tensor (dropout's output);
        // `x` tracked or not (the first layer's input), the weight frozen or trained.
        for (rows, inner, out, rank, dropout, x_tracked, weight_trained) in [
            (301, 70, 90, 4, false, true, false),
            (5, 3, 4, 2, true, true, true),
            (64, 150, 300, 16, false, true, true),
            (300, 256, 512, 16, true, true, false),
            (40, 96, 64, 8, false, false, false),
            (40, 96, 64, 8, true, false, false),
        ] {
            let x = random([rows, inner], &device).set_require_grad(x_tracked);
            // A transposed view, as a tied output head is.
            let stored = random([out, inner], &device).set_require_grad(weight_trained);
            let weight = || stored.clone().transpose();
            let a = random([inner, rank], &device).require_grad();
            let b = random([rank, out], &device).require_grad();
            let mask = random([rows, inner], &device);
            let upstream = random([rows, out], &device);
            // Made for each graph (so is the weight's transpose): backward consumes the nodes it
            // goes through.
            let branch = || dropout.then(|| x.clone() * mask.clone());

            let ours = lora_product(&x, &weight(), branch().as_ref(), [&a, &b], scale)
                .expect("flex f32 under autodiff");
            let our_grads = (ours.clone() * upstream.clone()).sum().backward();
            let branch_input = branch().unwrap_or(x.clone());
            let update = branch_input.matmul(a.clone()).matmul(b.clone()) * scale;
            let burns = x.clone().matmul(weight()) + update;
            let burn_grads = (burns.clone() * upstream).sum().backward();

            let case = format!("{rows}x{inner}x{out} r{rank}, dropout {dropout}, x {x_tracked}");
            assert_relatively_close(values(ours), values(burns), &format!("{case}: value"));
            for (name, t) in [("x", &x), ("a", &a), ("b", &b), ("weight", &stored)] {
                let got = t.grad(&our_grads).map(values);
                let want = t.grad(&burn_grads).map(values);
                assert_eq!(got.is_some(), want.is_some(), "{case}: {name}'s gradient");
                if let (Some(got), Some(want)) = (got, want) {
                    assert_relatively_close(got, want, &format!("{case}: {name}'s gradient"));
                }
            }
        }
    }

    #[test]
    fn computes_without_autodiff_and_declines_other_types() {
        let device = Device::flex();
        let [x, weight, a, b] =
            [[7, 5], [5, 6], [5, 2], [2, 6]].map(|shape| random(shape, &device));
        let ours = lora_product(&x, &weight, None, [&a, &b], 2.0).expect("flex f32");
        let want =
            x.clone().matmul(weight.clone()) + x.clone().matmul(a.clone()).matmul(b.clone()) * 2.0;
        assert_relatively_close(values(ours), values(want), "inference");

        let half = x.cast(DType::BF16);
        assert!(lora_product(&half, &weight, None, [&a, &b], 2.0).is_none());
    }
}
