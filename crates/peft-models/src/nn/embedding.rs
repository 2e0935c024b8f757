//! Token (and learned position) embeddings.

use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::Result;
use crate::weights::Weights;

/// An embedding table `[rows, width]` (`nn.Embedding`).
#[derive(Module, Debug)]
pub struct Embedding {
    /// The table.
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    /// The table of the module at `vb`, `[rows, width]`.
    pub fn load(vb: &Weights, rows: usize, width: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.matrix("weight", rows, width)?,
        })
    }

    /// Rows `ids` `[batch, seq]`, as `[batch, seq, width]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        embedding(self.weight.val(), ids)
    }

    /// Number of rows (the vocabulary, for token embeddings).
    pub fn rows(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Rows `ids`, `[ids.len(), width]`, detached.
    pub fn rows_of(&self, ids: &[u32]) -> Tensor<2> {
        let table = self.weight.val();
        let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &table.device());
        let rows = embedding(table, ids);
        let [_, n, d] = rows.dims();
        rows.reshape([n, d]).detach()
    }
}
