//! Per-layer activation checkpointing, as transformers' `gradient_checkpointing_enable` does it:
//! the forward pass runs without autodiff and keeps only each decoder layer's input; backward
//! then goes one layer at a time from the last, recomputing that layer with autodiff and taking
//! its gradients against the gradient of its output through the surrogate `Σ output ⊙ G`
//! (exact, as in the chunked loss). Only one layer's activations are alive at a time, for one
//! more forward pass per step. Burn 0.22's own `gradient_checkpointing()` strategy recomputes
//! element-wise operations only and keeps every product's output, which does not bound the
//! activations by the layer.

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

impl CausalLm {
    /// [`crate::loss::lm_loss`] of the model on `input_ids` against `labels`, times `scale`,
    /// and its gradients, computed layer by layer (see the module's documentation). Dropout is
    /// not replayed: the recomputed layers draw new masks, so the gradients are exact only
    /// without dropout (the trainer refuses dropout with checkpointing). A prefix-tuning
    /// adapter, whose keys and values enter every layer, runs without checkpointing.
    pub fn layerwise_backward(
        &self,
        input_ids: Tensor<2, Int>,
        padding_mask: Option<&Tensor<2, Int>>,
        labels: &HostLabels,
        scale: f32,
    ) -> LayerwiseGradients {
        self.visit_architecture(LayerwiseBackward {
            input_ids,
            padding_mask,
            labels,
            scale,
        })
    }
}

/// [`CausalLm::layerwise_backward`]'s arguments.
struct LayerwiseBackward<'a> {
    input_ids: Tensor<2, Int>,
    padding_mask: Option<&'a Tensor<2, Int>>,
    labels: &'a HostLabels,
    scale: f32,
}

impl ArchitectureVisitor for LayerwiseBackward<'_> {
    type Output = LayerwiseGradients;

    fn visit<A: Architecture>(self, model: &A) -> LayerwiseGradients {
        layerwise_backward(
            model,
            self.input_ids,
            self.padding_mask,
            self.labels,
            self.scale,
        )
    }
}

/// [`CausalLm::layerwise_backward`] on the concrete architecture.
fn layerwise_backward<A: Architecture>(
    model: &A,
    input_ids: Tensor<2, Int>,
    padding_mask: Option<&Tensor<2, Int>>,
    labels: &HostLabels,
    scale: f32,
) -> LayerwiseGradients {
    if model.model_adapters().prefix_active() {
        let hidden = model.hidden_states(
            model.token_embedding().forward(input_ids),
            padding_mask,
            None,
        );
        let loss =
            loss_of_hidden(hidden, model.lm_head(), labels, CHUNK_ELEMENTS).mul_scalar(scale);
        let grads = loss.backward();
        return LayerwiseGradients {
            loss: loss.detach(),
            passes: vec![grads],
        };
    }
    let layers = model.num_layers();

    // Forward without autodiff, keeping each layer's input.
    let frozen = model.valid();
    let ids = input_ids.clone().inner();
    let mask = padding_mask.map(|m| m.clone().inner());
    let embeddings = frozen.token_embedding().forward(ids);
    let (mut x, frozen_inputs) = frozen.decoder_input(embeddings, mask.as_ref(), None);
    let mut layer_inputs = Vec::with_capacity(layers);
    for index in 0..layers {
        layer_inputs.push(x.clone());
        x = frozen.decoder_layer(index, x, &frozen_inputs, None);
    }

    // The final norm, the head and the loss, from the last layer's output.
    let last = x.autodiff().require_grad();
    let hidden = model.final_norm(last.clone());
    let loss = loss_of_hidden(hidden, model.lm_head(), labels, CHUNK_ELEMENTS).mul_scalar(scale);
    let grads = loss.backward();
    let mut grad = last.grad(&grads);
    let mut passes = Vec::with_capacity(layers + 2);
    passes.push(grads);

    // Each layer from the last, recomputed with autodiff from its input.
    let embeddings = model.token_embedding().forward(input_ids);
    let (first, inputs) = model.decoder_input(embeddings, padding_mask, None);
    for (index, input) in layer_inputs.into_iter().enumerate().rev() {
        let Some(output_grad) = grad.take() else {
            break;
        };
        let input = input.autodiff().require_grad();
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
