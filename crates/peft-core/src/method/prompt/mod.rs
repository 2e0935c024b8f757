//! Prompt tuning (Lester et al. 2021), as Hugging Face PEFT runs it on decoder-only models:
//! learned embeddings before the input's. It touches no projection: the model asks its
//! model-wide adapter for the embeddings (`crate::model_adapters`).

mod config;
mod embedding;

pub use config::{PromptInit, PromptTuningConfig};
pub use embedding::PromptEmbedding;

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::geometry::ModelGeometry;
    use crate::method::api::{MethodConfig, ModelContext, ModelLayer};

    fn geometry() -> ModelGeometry {
        ModelGeometry {
            model_type: "llama".into(),
            num_layers: 2,
            hidden_size: 3,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 3,
            vocab_size: 10,
            context_length: 32,
        }
    }

    #[test]
    fn the_width_comes_from_the_model_and_a_wrong_one_is_refused_by_name() {
        let mut c = PromptTuningConfig::new(2);
        c.resolve(&geometry()).unwrap();
        assert_eq!(c.shape(), (2, 3));
        let mut wrong = PromptTuningConfig::new(2);
        wrong.dims.token_dim = Some(5);
        let err = wrong.resolve(&geometry()).unwrap_err().to_string();
        assert!(err.contains("token_dim") && err.contains("is 5"), "{err}");
    }

    #[test]
    fn text_init_repeats_the_texts_token_embeddings_to_length() {
        let device = Device::flex();
        let mut c = PromptTuningConfig::new(5);
        c.prompt_tuning_init = PromptInit::Text;
        c.prompt_tuning_init_text = Some("hi".into());
        c.init_token_ids = Some(vec![7, 9]);
        c.resolve(&geometry()).unwrap();
        // Token i's embedding is [i, i, i].
        let embed = |ids: &[u32]| {
            let data: Vec<f32> = ids.iter().flat_map(|&i| [i as f32; 3]).collect();
            Tensor::from_data(TensorData::new(data, [ids.len(), 3]), &device)
        };
        let model = ModelContext {
            geometry: geometry(),
            device: device.clone(),
            embed_ids: &embed,
        };
        let prompt = PromptEmbedding::new(&c, &model, false).unwrap();
        let rows: Vec<f32> = prompt.embedding.val().into_data().iter::<f32>().collect();
        let expected: Vec<f32> = [7.0, 9.0, 7.0, 9.0, 7.0]
            .iter()
            .flat_map(|&i| [i; 3])
            .collect();
        assert_eq!(rows, expected);
    }
}
