//! How a hand-written flex kernel becomes an operation on Burn's dispatch tensors: the tensors'
//! flex storage, with or without autodiff (either checkpointing strategy), and an operation on
//! any number of inputs recorded as one node of the autodiff graph that keeps only the
//! inputs its backward step needs, as Burn's own operations do.

use std::fmt::Debug;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::Backend;
use burn::backend::{AutodiffBackend, DispatchKindConversion, Flex};
use burn::tensor::{BackendPrimitive, DispatchTensor, Float, Tensor};
use burn_flex::FlexTensor;

/// A flex kernel on `N` inputs and its backward step.
pub trait FlexOp<const N: usize>: Copy + Debug + Send + 'static {
    /// The output from the inputs.
    fn forward(&self, inputs: [&FlexTensor; N]) -> FlexTensor;

    /// Which inputs backward needs, given which of them are tracked (a product needs the other
    /// input only): only those are kept until backward.
    fn kept(&self, tracked: [bool; N]) -> [bool; N];

    /// The inputs' gradients from the output's, each only where `wanted`, from the inputs
    /// [`Self::kept`] asked for.
    fn gradients(
        &self,
        inputs: [Option<FlexTensor>; N],
        grad_output: &FlexTensor,
        wanted: [bool; N],
    ) -> [Option<FlexTensor>; N];
}

/// `Op` as the autodiff graph's backward step; its state is the kept inputs' nodes, whose
/// outputs the checkpointer gives back (or recomputes, under a checkpointing strategy).
#[derive(Debug, Clone, Copy)]
struct Node<Op>(Op);

impl<Op: FlexOp<N>, const N: usize> Backward<Flex, N> for Node<Op> {
    type State = [Option<NodeId>; N];

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let inputs = ops
            .state
            .map(|id| id.map(|id| checkpointer.retrieve_node_output(id)));
        let grad_output = grads.consume::<Flex>(&ops.node);
        let wanted = ops.parents.each_ref().map(Option::is_some);
        let gradients = self.0.gradients(inputs, &grad_output, wanted);
        for (node, gradient) in ops.parents.into_iter().zip(gradients) {
            if let (Some(node), Some(gradient)) = (node, gradient) {
                grads.register::<Flex>(node.id, gradient);
            }
        }
    }
}

/// `op` on `x` when it is a flex tensor (recorded for backward on an autodiff device); `None`
/// when it lives elsewhere.
pub fn unary<Op: FlexOp<1>, const D: usize, const O: usize>(
    op: Op,
    x: &Tensor<D>,
) -> Option<Tensor<O>> {
    apply(op, [x.clone().into_dispatch()])
}

/// `op` on `a` and `b` when both are flex tensors (recorded for backward on an autodiff device);
/// `None` when they live elsewhere.
pub fn binary<Op: FlexOp<2>, const A: usize, const B: usize, const O: usize>(
    op: Op,
    a: &Tensor<A>,
    b: &Tensor<B>,
) -> Option<Tensor<O>> {
    apply(op, [a.clone().into_dispatch(), b.clone().into_dispatch()])
}

/// `op` on `a`, `b` and `c` when all are flex tensors (recorded for backward on an autodiff
/// device); `None` when they live elsewhere.
pub fn ternary<Op: FlexOp<3>, const A: usize, const B: usize, const C: usize, const O: usize>(
    op: Op,
    a: &Tensor<A>,
    b: &Tensor<B>,
    c: &Tensor<C>,
) -> Option<Tensor<O>> {
    let inputs = [
        a.clone().into_dispatch(),
        b.clone().into_dispatch(),
        c.clone().into_dispatch(),
    ];
    apply(op, inputs)
}

/// `op` on `inputs`, all of rank `D`, when all are flex tensors (recorded for backward on an
/// autodiff device); `None` when they live elsewhere.
pub fn nary<Op: FlexOp<N>, const N: usize, const D: usize, const O: usize>(
    op: Op,
    inputs: [&Tensor<D>; N],
) -> Option<Tensor<O>> {
    apply(op, inputs.map(|t| t.clone().into_dispatch()))
}

/// `op` on `inputs`, whatever their ranks, on flex with or without autodiff.
fn apply<Op: FlexOp<N>, const N: usize, const O: usize>(
    op: Op,
    inputs: [DispatchTensor; N],
) -> Option<Tensor<O>> {
    on_autodiff::<Op, NoCheckpointing, N, O>(op, &inputs)
        .or_else(|| on_autodiff::<Op, BalancedCheckpointing, N, O>(op, &inputs))
        .or_else(|| {
            let inputs = float_primitives::<Flex, N>(&inputs)?;
            Some(Tensor::from_primitive::<Flex>(
                op.forward(inputs.each_ref()),
            ))
        })
}

/// [`apply`] on `Autodiff<Flex, C>`.
fn on_autodiff<Op: FlexOp<N>, C: CheckpointStrategy, const N: usize, const O: usize>(
    op: Op,
    inputs: &[DispatchTensor; N],
) -> Option<Tensor<O>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let inputs = float_primitives::<Autodiff<Flex, C>, N>(inputs)?;
    let output = op.forward(inputs.each_ref().map(|t| t.primitive()));
    let prep = Node(op)
        .prepare::<C>(inputs.each_ref().map(|t| t.node()))
        .compute_bound()
        .stateful();
    let output = match prep {
        OpsKind::Tracked(mut prep) => {
            let kept = op.kept(inputs.each_ref().map(|t| t.is_tracked()));
            let ids = std::array::from_fn(|i| kept[i].then(|| prep.checkpoint(&inputs[i])));
            prep.finish(ids, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
}

/// The float primitives of `B` under `inputs`, if every one lives on `B`.
fn float_primitives<B: Backend, const N: usize>(
    inputs: &[DispatchTensor; N],
) -> Option<[B::FloatTensorPrimitive; N]>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    let primitives = inputs
        .iter()
        .map(|t| {
            let tensor = <DispatchTensor as DispatchKindConversion<B>>::try_into_backend(t.clone());
            <Float as BackendPrimitive<B>>::try_into_primitive(tensor.ok()?).ok()
        })
        .collect::<Option<Vec<_>>>()?;
    primitives.try_into().ok()
}

/// A flex tensor's storage and the function that makes a tensor of the same kind again.
pub type Unwrapped<const D: usize> = (FlexTensor, fn(FlexTensor) -> Tensor<D>);

/// `tensor`'s flex storage, whether it lives on autodiff (either checkpointing strategy) or not;
/// a tensor made again from it is untracked. Works on a clone: drop `tensor` before writing into
/// the storage, so that it is not copied.
pub fn into_flex<const D: usize>(tensor: &Tensor<D>) -> Option<Unwrapped<D>> {
    untracked::<NoCheckpointing, D>(tensor)
        .or_else(|| untracked::<BalancedCheckpointing, D>(tensor))
        .or_else(|| {
            let flex = tensor.clone().try_into_primitive::<Flex>().ok()?;
            Some((flex, |flex| Tensor::from_primitive::<Flex>(flex)))
        })
}

/// [`into_flex`] for `Autodiff<Flex, C>`.
fn untracked<C: CheckpointStrategy, const D: usize>(tensor: &Tensor<D>) -> Option<Unwrapped<D>>
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
