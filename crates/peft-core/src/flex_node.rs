//! How a hand-written flex kernel becomes an operation on Burn's dispatch tensors: the tensors'
//! flex storage, with or without autodiff (either checkpointing strategy), and a two-input
//! operation recorded as one node of the autodiff graph that keeps only the inputs its backward
//! step needs, as Burn's own operations do.

use std::fmt::Debug;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::{AutodiffBackend, DispatchKindConversion, Flex};
use burn::tensor::{DispatchTensor, Tensor};
use burn_flex::FlexTensor;

/// A two-input flex kernel and its backward step.
pub trait BinaryOp: Copy + Debug + Send + 'static {
    /// The output from the two inputs.
    fn forward(&self, a: &FlexTensor, b: &FlexTensor) -> FlexTensor;

    /// Which inputs backward needs, given which of them are tracked (a product needs the other
    /// input only): only those are kept until backward.
    fn kept(&self, tracked: [bool; 2]) -> [bool; 2];

    /// The gradients of `a` and `b` from the output's, each only where `wanted`, from the
    /// inputs [`Self::kept`] asked for.
    fn gradients(
        &self,
        inputs: [Option<FlexTensor>; 2],
        grad_output: &FlexTensor,
        wanted: [bool; 2],
    ) -> [Option<FlexTensor>; 2];
}

/// `Op` as the autodiff graph's backward step; its state is the kept inputs' nodes, whose
/// outputs the checkpointer gives back (or recomputes, under a checkpointing strategy).
#[derive(Debug, Clone, Copy)]
struct Node<Op>(Op);

impl<Op: BinaryOp> Backward<Flex, 2> for Node<Op> {
    type State = [Option<NodeId>; 2];

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
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

/// `op` on `a` and `b` when both are flex tensors (recorded for backward on an autodiff device);
/// `None` when they live elsewhere.
pub fn binary<Op: BinaryOp, const A: usize, const B: usize, const O: usize>(
    op: Op,
    a: &Tensor<A>,
    b: &Tensor<B>,
) -> Option<Tensor<O>> {
    on_autodiff::<Op, NoCheckpointing, A, B, O>(op, a, b)
        .or_else(|| on_autodiff::<Op, BalancedCheckpointing, A, B, O>(op, a, b))
        .or_else(|| {
            let a = a.clone().try_into_primitive::<Flex>().ok()?;
            let b = b.clone().try_into_primitive::<Flex>().ok()?;
            Some(Tensor::from_primitive::<Flex>(op.forward(&a, &b)))
        })
}

/// [`binary`] on `Autodiff<Flex, C>`.
fn on_autodiff<
    Op: BinaryOp,
    C: CheckpointStrategy,
    const A: usize,
    const B: usize,
    const O: usize,
>(
    op: Op,
    a: &Tensor<A>,
    b: &Tensor<B>,
) -> Option<Tensor<O>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let a = a.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let b = b.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let output = op.forward(a.primitive(), b.primitive());
    let prep = Node(op)
        .prepare::<C>([a.node(), b.node()])
        .compute_bound()
        .stateful();
    let output = match prep {
        OpsKind::Tracked(mut prep) => {
            let [keep_a, keep_b] = op.kept([a.is_tracked(), b.is_tracked()]);
            let ids = [
                keep_a.then(|| prep.checkpoint(&a)),
                keep_b.then(|| prep.checkpoint(&b)),
            ];
            prep.finish(ids, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
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
