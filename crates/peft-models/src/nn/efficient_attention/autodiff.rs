//! The attention as one node of Burn's autodiff graph, with [`super::blocks`]' backward pass:
//! the node keeps the queries, keys and values (which their producers keep anyway) and the mask,
//! and no `[.., rows, keys]` tensor.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::Backend;

use super::blocks::{self, Inputs};

/// [`blocks::forward`] on `Autodiff<B, C>`'s tensors, recorded with [`AttentionBackward`].
pub(super) fn attention<B: Backend, C: CheckpointStrategy>(
    query: FloatTensor<Autodiff<B, C>>,
    key: FloatTensor<Autodiff<B, C>>,
    value: FloatTensor<Autodiff<B, C>>,
    mask: BoolTensor<B>,
    scale: f64,
    block_elements: usize,
) -> FloatTensor<Autodiff<B, C>> {
    let prep = AttentionBackward
        .prepare::<C>([query.node(), key.node(), value.node()])
        .compute_bound()
        .stateful();
    let inputs = |query: FloatTensor<Autodiff<B, C>>,
                  key: FloatTensor<Autodiff<B, C>>,
                  value: FloatTensor<Autodiff<B, C>>| Inputs {
        query: query.into_primitive(),
        key: key.into_primitive(),
        value: value.into_primitive(),
        mask: mask.clone(),
        scale,
        block_elements,
    };
    match prep {
        OpsKind::Tracked(mut prep) => {
            let ids = [
                prep.checkpoint(&query),
                prep.checkpoint(&key),
                prep.checkpoint(&value),
            ];
            let inputs = inputs(query, key, value);
            let output = blocks::forward::<B>(&inputs);
            let state = AttentionState {
                ids,
                mask: inputs.mask,
                scale,
                block_elements,
            };
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(blocks::forward::<B>(&inputs(query, key, value))),
    }
}

/// The backward step of [`attention`].
#[derive(Debug)]
struct AttentionBackward;

/// What [`AttentionBackward`] keeps from the forward pass.
#[derive(Clone, Debug)]
struct AttentionState<B: Backend> {
    /// The query's, key's and value's nodes, whose outputs the checkpointer gives back.
    ids: [NodeId; 3],
    mask: BoolTensor<B>,
    scale: f64,
    block_elements: usize,
}

impl<B: Backend> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let AttentionState {
            ids: [query, key, value],
            mask,
            scale,
            block_elements,
        } = ops.state;
        let inputs = Inputs {
            query: checkpointer.retrieve_node_output(query),
            key: checkpointer.retrieve_node_output(key),
            value: checkpointer.retrieve_node_output(value),
            mask,
            scale,
            block_elements,
        };
        let grad_output = grads.consume::<B>(&ops.node);
        let [query_node, key_node, value_node] = ops.parents;
        let wanted = [
            query_node.is_some(),
            key_node.is_some(),
            value_node.is_some(),
        ];
        let gradients = blocks::backward::<B>(&inputs, grad_output, wanted);
        let pairs = [
            (query_node, gradients.query),
            (key_node, gradients.key),
            (value_node, gradients.value),
        ];
        for (node, gradient) in pairs {
            if let (Some(node), Some(gradient)) = (node, gradient) {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}
