//! Between Burn's dispatch tensors and flex's own storage, with or without autodiff.

use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::Autodiff;
use burn::backend::{AutodiffBackend, DispatchKindConversion, Flex};
use burn::tensor::{DispatchTensor, Tensor};
use burn_flex::FlexTensor;

/// A flex tensor's storage and the function that makes a tensor of the same kind again.
type Unwrapped<const D: usize> = (FlexTensor, fn(FlexTensor) -> Tensor<D>);

/// `tensor`'s flex storage, whether it lives on autodiff (either checkpointing strategy) or not.
/// Works on a clone: drop `tensor` before writing into the storage, so that it is not copied.
pub(super) fn into_flex<const D: usize>(tensor: &Tensor<D>) -> Option<Unwrapped<D>> {
    with_autodiff::<NoCheckpointing, D>(tensor)
        .or_else(|| with_autodiff::<BalancedCheckpointing, D>(tensor))
        .or_else(|| {
            let flex = tensor.clone().try_into_primitive::<Flex>().ok()?;
            Some((flex, |flex| Tensor::from_primitive::<Flex>(flex)))
        })
}

/// [`into_flex`] for `Autodiff<Flex, C>`; the result is untracked, as the logits here are.
fn with_autodiff<C: CheckpointStrategy, const D: usize>(tensor: &Tensor<D>) -> Option<Unwrapped<D>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let primitive = tensor
        .clone()
        .try_into_primitive::<Autodiff<Flex, C>>()
        .ok()?;
    Some((Autodiff::<Flex, C>::inner(primitive), |flex| {
        Tensor::from_primitive::<Autodiff<Flex, C>>(Autodiff::<Flex, C>::from_inner(flex))
    }))
}
