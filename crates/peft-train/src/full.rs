//! Full fine-tuning: every weight of the model trained (the baseline the PEFT methods are
//! measured against). Parameter ids are made stable, so that a checkpoint's optimizer state
//! finds its weights again in the model reloaded from it; a head tied to the token embedding
//! trains as transformers trains it, one weight receiving the gradients of both its uses.

use burn::module::{Module, Param, ParamId};
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use peft_core::{Projection, ProjectionHost};
use peft_models::CausalLm;

/// The scope of the stable parameter ids of a fully trained model.
const ID_SCOPE: &str = "full";

/// A head tied to the token embedding, while training. The head keeps its own contiguous
/// copy of the embedding's transpose for a fast forward pass (as the loaded model does),
/// under its own id: its gradient is added to the embedding's before the optimizer step, and
/// the copy is refreshed after it, so the pair trains as one weight without the optimizer
/// keeping state for two.
#[derive(Clone, Copy, Debug)]
pub struct TiedHead {
    head: ParamId,
    embedding: ParamId,
}

/// `lm` with every weight trainable under stable ids, and its tied head when it has one.
pub fn prepare(lm: CausalLm) -> (CausalLm, Option<TiedHead>) {
    let embedding_id = |lm: &CausalLm| lm.token_embedding().dense().map(|table| table.id);
    let tied = dense_id(lm.lm_head()).is_some() && dense_id(lm.lm_head()) == embedding_id(&lm);
    // Ids from each parameter's path: the head's differs from the embedding's from here on.
    let lm = peft_core::with_stable_ids(lm.unfreeze(), ID_SCOPE);
    let tied_head = match (tied, dense_id(lm.lm_head()), embedding_id(&lm)) {
        (true, Some(head), Some(embedding)) => Some(TiedHead { head, embedding }),
        _ => None,
    };
    (lm, tied_head)
}

/// The id of a projection's base weight, unless it is packed (and so not a parameter).
fn dense_id(projection: &Projection) -> Option<ParamId> {
    projection.base.as_dense().map(|layer| layer.weight.id)
}

impl TiedHead {
    /// Adds the head's gradient `[hidden, vocab]`, transposed, to the embedding's: the
    /// gradient of the one tied weight.
    pub fn fold_gradients(&self, grads: &mut GradientsParams) {
        let Some(head) = grads.remove::<2>(self.head) else {
            return;
        };
        // Transposed into a contiguous copy first: adding a transposed view element by element
        // is a strided, single-threaded pass on the CPU backends, and the copy is a tiled one
        // (SmolLM2 full fine-tuning at 2x64 on flex: 1423 -> 1310 ms a step).
        let head = contiguous_transpose(head);
        let sum = match grads.remove::<2>(self.embedding) {
            Some(embedding) => embedding + head,
            None => head,
        };
        grads.register(self.embedding, sum);
    }

    /// Sets the head's weight to the embedding's transpose after an optimizer step (on the
    /// device: a contiguous copy, made by reshaping the transposed view).
    pub fn refresh(&self, lm: &mut CausalLm) {
        let Some(table) = lm.token_embedding().dense() else {
            return;
        };
        let copy = contiguous_transpose(table.val());
        if let Some(head) = self.head_mut(lm) {
            head.weight = head.weight.clone().map(|old| match old.is_require_grad() {
                true => copy.detach().require_grad(),
                false => copy.detach(),
            });
        }
    }

    /// `lm` with its head tied again (the embedding's id and value), as the source model had
    /// it: written once when saved, as transformers writes a tied model.
    pub fn retie(&self, mut lm: CausalLm) -> CausalLm {
        let Some(table) = lm.token_embedding().dense() else {
            return lm;
        };
        let copy = contiguous_transpose(table.val());
        if let Some(head) = self.head_mut(&mut lm) {
            head.weight = Param::initialized(self.embedding, copy.detach());
        }
        lm
    }

    fn head_mut<'a>(&self, lm: &'a mut CausalLm) -> Option<&'a mut Linear> {
        lm.projections_mut()
            .into_iter()
            .filter_map(|(_, projection)| projection.base.as_dense_mut())
            .find(|layer| layer.weight.id == self.head)
    }
}

/// `[vocab, hidden]` → `[hidden, vocab]`, laid out contiguously: CPU backends multiply by a
/// strided view far more slowly. Reshaping a transposed view copies it on the device.
fn contiguous_transpose(weight: Tensor<2>) -> Tensor<2> {
    let [rows, cols] = weight.dims();
    weight
        .transpose()
        .reshape([rows * cols])
        .reshape([cols, rows])
}
