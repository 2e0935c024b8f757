//! Token (and learned position) embeddings, and the output head tied to a token embedding.

use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Int, Tensor, TensorData};
use peft_core::{PackedWeight, Projection, WeightLayout};

use crate::error::Result;
use crate::weights::Weights;

/// An embedding's table.
// One or two per model, so the packed variant's size does not matter; Burn's `Module` has no
// implementation for `Box` to shrink it with.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum EmbeddingTable {
    /// `[rows, width]` in the device's float type.
    Dense(Param<Tensor<2>>),
    /// Packed as the weight `[width, rows]` of the output head tied to it (QLoRA's base),
    /// sharing the head's device memory.
    Packed(PackedWeight),
}

/// An embedding table `[rows, width]` (`nn.Embedding`).
#[derive(Module, Debug)]
pub struct Embedding {
    /// The table.
    pub weight: EmbeddingTable,
}

impl Embedding {
    /// The table of the module at `vb`, `[rows, width]`.
    pub fn load(vb: &Weights, rows: usize, width: usize) -> Result<Self> {
        Ok(Self {
            weight: EmbeddingTable::Dense(vb.matrix("weight", rows, width)?),
        })
    }

    /// The token embedding at `vb` and the output head at module path `head` that reuses it
    /// (tied embeddings). When the loader quantizes, both read one packed table.
    pub fn load_tied(
        vb: &Weights,
        head: &str,
        rows: usize,
        width: usize,
    ) -> Result<(Self, Projection)> {
        if let Some(table) = vb.tied_table("weight", rows, width)? {
            let head = Projection::packed(head, table.clone(), None, WeightLayout::Linear);
            let embedding = Self {
                weight: EmbeddingTable::Packed(table),
            };
            return Ok((embedding, head));
        }
        let table = vb.matrix("weight", rows, width)?;
        let head = Projection::tied_to(head, &table);
        let embedding = Self {
            weight: EmbeddingTable::Dense(table),
        };
        Ok((embedding, head))
    }

    /// Rows `ids` `[batch, seq]`, as `[batch, seq, width]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        match &self.weight {
            EmbeddingTable::Dense(table) => embedding(table.val(), ids),
            EmbeddingTable::Packed(table) => {
                let [batch, seq] = ids.dims();
                let rows = table.columns(ids.reshape([batch * seq]));
                rows.reshape([batch, seq, self.width()])
            }
        }
    }

    /// Number of rows (the vocabulary, for token embeddings).
    pub fn rows(&self) -> usize {
        match &self.weight {
            EmbeddingTable::Dense(table) => table.dims()[0],
            EmbeddingTable::Packed(table) => table.dims()[1],
        }
    }

    /// Width of a row.
    pub fn width(&self) -> usize {
        match &self.weight {
            EmbeddingTable::Dense(table) => table.dims()[1],
            EmbeddingTable::Packed(table) => table.dims()[0],
        }
    }

    /// Where the table lives.
    pub fn device(&self) -> Device {
        match &self.weight {
            EmbeddingTable::Dense(table) => table.device(),
            EmbeddingTable::Packed(table) => table.device(),
        }
    }

    /// The dense table, unless it is packed.
    pub fn dense(&self) -> Option<&Param<Tensor<2>>> {
        match &self.weight {
            EmbeddingTable::Dense(table) => Some(table),
            EmbeddingTable::Packed(_) => None,
        }
    }

    /// Rows `ids`, `[ids.len(), width]`, detached.
    pub fn rows_of(&self, ids: &[u32]) -> Tensor<2> {
        let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &self.device());
        let rows = self.forward(ids);
        let [_, n, d] = rows.dims();
        rows.reshape([n, d]).detach()
    }
}
