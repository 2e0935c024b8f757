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
use peft_models::load_model;
use peft_models::ModelConfig;

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
