//! Prefix tuning (Li & Liang 2021), as Hugging Face PEFT runs it on decoder-only models:
//! learned keys and values before every layer's. It touches no projection: the model asks its
//! model-wide adapter for the keys and values (`crate::model_adapters`).

mod config;
mod encoder;

pub use config::PrefixTuningConfig;
pub use encoder::{PrefixEncoder, PrefixMlp};

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::geometry::ModelGeometry;
    use crate::method::api::{MethodConfig, ModelLayer};
    use crate::testing::values;

    const LAYERS: usize = 2;
    const KV_HEADS: usize = 1;
    const HEAD_DIM: usize = 2;

    fn config(virtual_tokens: usize, projection: bool) -> PrefixTuningConfig {
        let mut c = PrefixTuningConfig::new(virtual_tokens, projection);
        let model = ModelGeometry {
            model_type: "llama".into(),
            num_layers: LAYERS,
            hidden_size: 4,
            num_heads: 2,
            num_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            vocab_size: 10,
            context_length: 32,
        };
        c.resolve(&model).unwrap();
        c
    }

    #[test]
    fn each_layer_gets_its_keys_then_its_values_from_the_table_as_peft_lays_them_out() {
        let device = Device::flex();
        let mut encoder = PrefixEncoder::init(&config(3, false), false, &device);
        // Row v of the table: [k0, v0, k1, v1] blocks of heads * head_dim, numbered from 100v.
        let width = LAYERS * 2 * KV_HEADS * HEAD_DIM;
        let table: Vec<f32> = (0..3 * width)
            .map(|i| (100 * (i / width) + i % width) as f32)
            .collect();
        encoder.embedding = burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(table, [3, width]),
            &device,
        ));
        let per_layer = encoder.prefix(2).unwrap();
        assert_eq!(per_layer.len(), LAYERS);
        let (k1, v1) = per_layer[1].clone();
        assert_eq!(k1.dims(), [2, KV_HEADS, 3, HEAD_DIM]);
        // Layer 1's keys are block 2 of each row, its values block 3; both batch rows alike.
        let row = |v: f32, block: f32| [100.0 * v + 2.0 * block, 100.0 * v + 2.0 * block + 1.0];
        let keys: Vec<f32> = (0..3).flat_map(|v| row(v as f32, 2.0)).collect();
        let vals: Vec<f32> = (0..3).flat_map(|v| row(v as f32, 3.0)).collect();
        assert_eq!(values(k1), [keys.clone(), keys].concat());
        assert_eq!(values(v1), [vals.clone(), vals].concat());
    }

    #[test]
    fn the_mlp_is_folded_into_the_saved_table_and_gone_after_loading_it() {
        let device = Device::flex();
        let mut encoder = PrefixEncoder::init(&config(4, true), false, &device);
        assert_eq!(encoder.id_scope(), "prompt_encoder/mlp");
        let saved = encoder.file_tensors(None).unwrap();
        let (name, table) = &saved[0];
        assert_eq!(name, "prompt_embeddings");
        assert_eq!(table.shape, [4, LAYERS * 2 * KV_HEADS * HEAD_DIM]);
        assert_eq!(table.data, values(encoder.table()));
        let file = table.clone();
        encoder
            .load_file_tensors(&mut |_, _| Ok(file.clone()))
            .unwrap();
        assert!(encoder.transform.is_none());
        assert_eq!(encoder.id_scope(), "prompt_encoder");
        assert_eq!(values(encoder.table()), file.data);
    }
}
