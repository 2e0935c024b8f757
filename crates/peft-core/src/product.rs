//! A linear layer's product `x · W + b`, on the fastest path the backend has.

use burn::nn::Linear;
use burn::tensor::module::linear as burn_linear;
use burn::tensor::Tensor;

/// `x` `[.., in]` times `weight` `[in, out]`, plus `bias` `[out]`: this crate's own kernel on
/// flex in f32 (`flex_matmul`, one autodiff node whose products skip burn-flex's zeroed and
/// copied outputs), Burn's `linear` on every other backend and type.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    #[cfg(feature = "flex")]
    {
        let mut dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let rows_of_x = x.clone().reshape([rows, dims[D - 1]]);
        if let Some(product) = crate::flex_matmul::matmul(&rows_of_x, &weight) {
            dims[D - 1] = weight.dims()[1];
            return plus_bias(product.reshape(dims), bias);
        }
    }
    burn_linear(x, weight, bias)
}

/// `x · weight + bias + scale · (branch · a) · b`, a LoRA-adapted projection on rows
/// `[rows, in]` (`a` `[in, r]`, `b` `[r, out]`), where `branch` is `x` after dropout (`None`:
/// `x` itself): on flex in f32 one autodiff node whose update is added into the base product
/// as `gemm` computes it (`flex_lora`); Burn's operations on every other backend and type.
pub fn lora_linear(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    branch: Option<Tensor<2>>,
    [a, b]: [Tensor<2>; 2],
    scale: f64,
) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if let Some(sum) =
        crate::flex_lora::lora_product(&x, &weight, branch.as_ref(), [&a, &b], scale as f32)
    {
        return plus_bias(sum, bias);
    }
    let update = low_rank_update(branch.unwrap_or(x.clone()), [a, b], scale);
    linear(x, weight, bias) + update
}

/// LoRA's update `scale · (x · a) · b` (`a` `[in, r]`, `b` `[r, out]`) as two products by
/// [`linear`].
pub fn low_rank_update<const D: usize>(
    x: Tensor<D>,
    [a, b]: [Tensor<2>; 2],
    scale: f64,
) -> Tensor<D> {
    linear(linear(x, a, None), b, None) * scale
}

/// `t` plus `bias` `[out]` on its last dimension, if there is one.
fn plus_bias<const D: usize>(t: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match bias {
        Some(bias) => t + bias.unsqueeze(),
        None => t,
    }
}

/// `acc + a · b` for tensors outside autodiff (a gradient summed over chunks): on flex in f32,
/// `gemm` adds the product into `acc`'s storage (`flex_matmul`), with no product tensor and
/// no separate pass for the sum; Burn's operations on every other backend and type.
pub fn add_product(acc: Tensor<2>, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    let acc = match crate::flex_matmul::add_product(acc, &a, &b) {
        Ok(sum) => return sum,
        Err(acc) => *acc,
    };
    acc + linear(a, b, None)
}

/// `layer` on the last dimension of `x`, by [`linear`].
pub fn forward_linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// `layer` on `x`'s last dimension with the leading dimensions folded into rows `[rows, in]`.
pub(crate) fn on_rows<const D: usize>(
    x: Tensor<D>,
    layer: impl FnOnce(Tensor<2>) -> Tensor<2>,
) -> Tensor<D> {
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let out = layer(x.reshape([rows, dims[D - 1]]));
    dims[D - 1] = out.dims()[1];
    out.reshape(dims)
}
