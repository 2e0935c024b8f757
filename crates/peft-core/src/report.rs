//! Parameter counts, as PEFT counts them: each parameter once, even where it is shared (tied
//! embeddings).

use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// Number of float parameters (elements) in `module`, each shared parameter counted once.
pub fn count_parameters<M: Module>(module: &M) -> usize {
    let mut counter = Counter::default();
    module.visit(&mut counter);
    counter.total
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
    use crate::Projection;
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
        let head = Projection::tied_to(&embedding);
        let untied = Projection::new(Param::from_tensor(Tensor::zeros([3, 4], &device)), None);
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
