//! Full fine-tuning: every weight of the model trained (the baseline the PEFT methods are
//! measured against). Parameter ids are made stable, so that a checkpoint's optimizer state
//! finds its weights again in the model reloaded from it; a head tied to the token embedding
//! trains as transformers trains it, one weight receiving the gradients of both its uses.

use burn::module::{Module, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use peft_core::ProjectionHost;
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
    let tied = lm.lm_head().base.weight.id == lm.token_embedding().weight.id;
    // Ids from each parameter's path: the head's differs from the embedding's from here on.
    let lm = peft_core::with_stable_ids(lm.unfreeze(), ID_SCOPE);
    let tied_head = tied.then(|| TiedHead {
        head: lm.lm_head().base.weight.id,
        embedding: lm.token_embedding().weight.id,
    });
    (lm, tied_head)
}

impl TiedHead {
    /// Adds the head's gradient `[hidden, vocab]`, transposed, to the embedding's: the
    /// gradient of the one tied weight.
    pub fn fold_gradients(&self, grads: &mut GradientsParams) {
        let Some(head) = grads.remove::<2>(self.head) else {
            return;
        };
        let head = head.transpose();
        let sum = match grads.remove::<2>(self.embedding) {
            Some(embedding) => embedding + head,
            None => head,
        };
        grads.register(self.embedding, sum);
    }

    /// Sets the head's weight to the embedding's transpose after an optimizer step (on the
    /// device: a contiguous copy, made by reshaping the transposed view).
    pub fn refresh(&self, lm: &mut CausalLm) {
        let copy = contiguous_transpose(lm.token_embedding().weight.val());
        if let Some(head) = self.head_mut(lm) {
            head.base.weight = head
                .base
                .weight
                .clone()
                .map(|old| match old.is_require_grad() {
                    true => copy.detach().require_grad(),
                    false => copy.detach(),
                });
        }
    }

    /// `lm` with its head tied again (the embedding's id and value), as the source model had
    /// it: written once when saved, as transformers writes a tied model.
    pub fn retie(&self, mut lm: CausalLm) -> CausalLm {
        let copy = contiguous_transpose(lm.token_embedding().weight.val());
        if let Some(head) = self.head_mut(&mut lm) {
            head.base.weight = Param::initialized(self.embedding, copy.detach());
        }
        lm
    }

    fn head_mut<'a>(&self, lm: &'a mut CausalLm) -> Option<&'a mut peft_core::Projection> {
        lm.projections_mut()
            .into_iter()
            .map(|(_, projection)| projection)
            .find(|projection| projection.base.weight.id == self.head)
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
