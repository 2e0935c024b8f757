//! Per-layer activation checkpointing, as transformers' `gradient_checkpointing_enable` does it:
//! the forward pass records no graph and keeps only each decoder layer's input; backward then
//! goes one layer at a time from the last, recomputing that layer with autodiff and taking its
//! gradients against the gradient of its output through the surrogate `Σ output ⊙ G` (exact, as
//! in the chunked loss). Only one layer's activations are alive at a time, for one more forward
//! pass per step. Dropout is replayed as `torch.utils.checkpoint` replays it: the device's
//! random generator is seeded with the same value before a layer's forward pass and before its
//! recomputation, so both draw the same masks. Burn 0.22's own `gradient_checkpointing()`
//! strategy recomputes element-wise operations only and keeps every product's output, which does
//! not bound the activations by the layer.

use burn::tensor::{Gradients, Int, Tensor};

use crate::arch::{Architecture, ArchitectureVisitor};
use crate::loss::{loss_of_hidden, HostLabels, CHUNK_ELEMENTS};
use crate::registry::CausalLm;

/// The loss of one batch and its gradients, taken in several backward passes.
pub struct LayerwiseGradients {
    /// The loss `[1]`, without a graph.
    pub loss: Tensor<1>,
    /// One set of gradients per backward pass: the final norm's and the output head's, then
    /// each layer's from the last, then those of what made the first layer's input (the
    /// embeddings, prompt tuning's tokens). Summed per parameter they are the loss's.
    pub passes: Vec<Gradients>,
}

/// What the random generator is seeded with before decoder layer `layer` runs, in its forward
/// pass and again in its recomputation, for a step whose dropout seed is `seed`: SplitMix64 of
/// the two, so that every layer and every step draws its own masks.
pub fn layer_seed(seed: u64, layer: usize) -> u64 {
    let mut z = seed ^ (layer as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl CausalLm {
    /// [`crate::loss::lm_loss`] of the model on `input_ids` against `labels`, times `scale`,
    /// and its gradients, computed layer by layer (see the module's documentation); decoder
    /// layer `i` runs with the random generator seeded with [`layer_seed`]`(dropout_seed, i)`.
    /// A prefix-tuning adapter, whose keys and values enter every layer, runs without
    /// checkpointing (the trainer refuses it).
    pub fn layerwise_backward(
        &self,
        input_ids: Tensor<2, Int>,
        padding_mask: Option<&Tensor<2, Int>>,
        labels: &HostLabels,
        scale: f32,
        dropout_seed: u64,
    ) -> LayerwiseGradients {
        self.visit_architecture(LayerwiseBackward {
            input_ids,
            padding_mask,
            labels,
            scale,
            dropout_seed,
        })
    }
}

/// [`CausalLm::layerwise_backward`]'s arguments.
struct LayerwiseBackward<'a> {
    input_ids: Tensor<2, Int>,
    padding_mask: Option<&'a Tensor<2, Int>>,
    labels: &'a HostLabels,
    scale: f32,
    dropout_seed: u64,
}

impl ArchitectureVisitor for LayerwiseBackward<'_> {
    type Output = LayerwiseGradients;

    fn visit<A: Architecture>(self, model: &A) -> LayerwiseGradients {
        layerwise_backward(model, self)
    }
}

/// [`CausalLm::layerwise_backward`] on the concrete architecture.
fn layerwise_backward<A: Architecture>(model: &A, args: LayerwiseBackward) -> LayerwiseGradients {
    let LayerwiseBackward {
        input_ids,
        padding_mask,
        labels,
        scale,
        dropout_seed,
    } = args;
    let loss_of =
        |hidden| loss_of_hidden(hidden, model.lm_head(), labels, CHUNK_ELEMENTS).mul_scalar(scale);
    if model.model_adapters().prefix_active() {
        let embeddings = model.token_embedding().forward(input_ids);
        let loss = loss_of(model.hidden_states(embeddings, padding_mask, None));
        let grads = loss.backward();
        return LayerwiseGradients {
            loss: loss.detach(),
            passes: vec![grads],
        };
    }
    let device = input_ids.device();
    let layers = model.num_layers();

    // The first layer's input, its graph kept for the last pass; what every layer reads beside
    // its input (positions, the mask) holds no graph and serves both passes below.
    let embeddings = model.token_embedding().forward(input_ids);
    let (first, inputs) = model.decoder_input(embeddings, padding_mask, None);

    // Forward with no tensor tracked (no graph is recorded; dropout still draws), keeping each
    // layer's input.
    let untracked = model.clone().no_grad();
    let mut x = first.clone().detach();
    let mut layer_inputs = Vec::with_capacity(layers);
    for index in 0..layers {
        layer_inputs.push(x.clone());
        device.seed(layer_seed(dropout_seed, index));
        x = untracked.decoder_layer(index, x, &inputs, None);
    }

    // The final norm, the head and the loss, from the last layer's output.
    let last = x.require_grad();
    let loss = loss_of(model.final_norm(last.clone()));
    let grads = loss.backward();
    let mut grad = last.grad(&grads);
    let mut passes = Vec::with_capacity(layers + 2);
    passes.push(grads);

    // Each layer from the last, recomputed with autodiff from its input and the same seed.
    for (index, input) in layer_inputs.into_iter().enumerate().rev() {
        let Some(output_grad) = grad.take() else {
            break;
        };
        let input = input.require_grad();
        device.seed(layer_seed(dropout_seed, index));
        let output = model.decoder_layer(index, input.clone(), &inputs, None);
        let grads = (output * output_grad.autodiff()).sum().backward();
        grad = input.grad(&grads);
        passes.push(grads);
    }

    // What made the first layer's input, where it trains.
    if let Some(first_grad) = grad.filter(|_| first.is_tracked()) {
        passes.push((first * first_grad.autodiff()).sum().backward());
    }
    LayerwiseGradients {
        loss: loss.detach(),
        passes,
    }
}
