//! Parameter counts, as PEFT counts them (`print_trainable_parameters`): each parameter once,
//! even where it is shared (tied embeddings); trainable means the active adapter's tensors.

use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

use crate::host::ProjectionHost;

/// Number of float parameters (elements) in `module`, each shared parameter counted once.
pub fn count_parameters<M: Module>(module: &M) -> usize {
    let mut counter = Counter::default();
    module.visit(&mut counter);
    counter.total
}

/// Every parameter of a model, its packed weights (QLoRA's base, which are not parameters to
/// Burn) included: a packed embedding reads its tied head's table, counted once with it.
pub fn count_model_parameters<M: Module + ProjectionHost>(model: &M) -> usize {
    let packed: usize = model
        .projections()
        .iter()
        .filter(|(_, proj)| proj.base.is_packed())
        .map(|(_, proj)| proj.in_features() * proj.out_features())
        .sum();
    count_parameters(model) + packed
}

/// Trainable and total parameter counts of a model with adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterReport {
    /// Parameters of the active adapter (and its `modules_to_save` copies).
    pub trainable: usize,
    /// Every parameter: base, every adapter, every copy.
    pub total: usize,
}

impl ParameterReport {
    /// Counts `model`'s parameters.
    pub fn of<M: Module + ProjectionHost>(model: &M) -> Self {
        let mut trainable = 0;
        for (_, proj) in model.projections() {
            let Some(active) = proj.state.active.as_deref() else {
                continue;
            };
            trainable += proj
                .adapters
                .iter()
                .filter(|a| a.name == active)
                // Frozen parameters of a layer (AdaLoRA's `ranknum`) count in the total only.
                .map(|a| count_parameters(a) - a.adapter.frozen_parameters())
                .sum::<usize>();
            trainable += proj
                .saved
                .iter()
                .filter(|c| c.name == active)
                .map(count_parameters)
                .sum::<usize>();
        }
        trainable += model.model_adapters().active().map_or(0, count_parameters);
        Self {
            trainable,
            total: count_model_parameters(model),
        }
    }

    /// Trainable share in percent.
    pub fn trainable_percent(&self) -> f64 {
        100.0 * self.trainable as f64 / self.total.max(1) as f64
    }
}

impl std::fmt::Display for ParameterReport {
    /// PEFT's line: `trainable params: N || all params: M || trainable%: P`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            self.trainable,
            self.total,
            self.trainable_percent()
        )
    }
}

#[derive(Default)]
struct Counter {
    seen: HashSet<ParamId>,
    total: usize,
}

impl ModuleVisitor for Counter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.seen.insert(param.id) {
            self.total += param.shape().num_elements();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Projection, WeightLayout};
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct TiedPair {
        embedding: Param<Tensor<2>>,
        head: Projection,
    }

    #[test]
    fn tied_parameters_are_counted_once() {
        let device = Device::flex();
        let embedding = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.5f32; 12], [4, 3]),
            &device,
        ));
        let head = Projection::tied_to("lm_head", &embedding);
        let untied = Projection::new(
            "lm_head",
            Param::from_tensor(Tensor::zeros([3, 4], &device)),
            None,
            WeightLayout::Linear,
        );
        assert_eq!(
            count_parameters(&TiedPair {
                embedding: embedding.clone(),
                head
            }),
            12
        );
        assert_eq!(
            count_parameters(&TiedPair {
                embedding,
                head: untied
            }),
            24
        );
    }
}
