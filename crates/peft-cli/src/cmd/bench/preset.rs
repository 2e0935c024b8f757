//! The model shapes a benchmark row runs: real architectures' `config.json`, random weights.

use serde::Serialize;

/// Benchmark model shapes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize)]
pub enum Preset {
    /// The fixtures' LLaMA: 2 layers, hidden 64, GQA 4/2, vocabulary 384.
    #[serde(rename = "tiny")]
    Tiny,
    /// GPT-2 small: 12 layers, hidden 768, vocabulary 50257.
    #[value(name = "gpt2-124m")]
    #[serde(rename = "gpt2-124m")]
    Gpt2_124m,
    /// SmolLM2-135M: LLaMA, 30 layers, hidden 576, GQA 9/3, vocabulary 49152, tied.
    #[value(name = "smollm2-135m")]
    #[serde(rename = "smollm2-135m")]
    Smollm2_135m,
    /// Qwen2.5-0.5B: Qwen2 (q/k/v biases), 24 layers, hidden 896, GQA 14/2, vocabulary
    /// 151936, tied.
    #[value(name = "qwen2.5-0.5b")]
    #[serde(rename = "qwen2.5-0.5b")]
    Qwen25_05b,
    /// Llama 3.2 1B: 16 layers, hidden 2048, GQA 32/8, vocabulary 128256, tied.
    #[value(name = "llama-1b")]
    #[serde(rename = "llama-1b")]
    Llama1b,
}

impl Preset {
    /// The architecture's `config.json`.
    pub fn config_json(self) -> &'static str {
        match self {
            Self::Tiny => {
                r#"{"model_type":"llama","hidden_size":64,"intermediate_size":160,
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
                "vocab_size":384,"max_position_embeddings":2048,"rms_norm_eps":1e-6,
                "tie_word_embeddings":false}"#
            }
            Self::Gpt2_124m => {
                r#"{"model_type":"gpt2","n_embd":768,"n_layer":12,"n_head":12,
                "vocab_size":50257,"n_positions":1024,"activation_function":"gelu_new"}"#
            }
            Self::Smollm2_135m => {
                r#"{"model_type":"llama","hidden_size":576,"intermediate_size":1536,
                "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,
                "vocab_size":49152,"max_position_embeddings":8192,"rms_norm_eps":1e-5,
                "rope_theta":100000,"tie_word_embeddings":true}"#
            }
            Self::Qwen25_05b => {
                r#"{"model_type":"qwen2","hidden_size":896,"intermediate_size":4864,
                "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
                "vocab_size":151936,"max_position_embeddings":32768,"rms_norm_eps":1e-6,
                "rope_theta":1000000.0,"tie_word_embeddings":true,"sliding_window":32768,
                "use_sliding_window":false}"#
            }
            Self::Llama1b => {
                r#"{"model_type":"llama","hidden_size":2048,"intermediate_size":8192,
                "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,
                "head_dim":64,"vocab_size":128256,"max_position_embeddings":131072,
                "rms_norm_eps":1e-5,"rope_theta":500000,"tie_word_embeddings":true,
                "rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,
                "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#
            }
        }
    }
}
