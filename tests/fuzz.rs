//! Fuzz targets that run inside the ordinary test build with a fixed case budget (proptest, a
//! fixed seed; `PROPTEST_CASES=100000 cargo test --workspace --test fuzz` runs them longer by
//! hand): every reader of user files either loads its input or refuses it with an error, and
//! never panics, aborts or hangs. The GGUF reader's target is in `tests/gguf.rs`, beside the
//! writer of the file it mutates; the mask/position property is in `tests/batched_generation.rs`.

mod common;

use std::cell::RefCell;
use std::path::Path;

use common::*;
use peft_models::chat::{apply_chat_template, ChatMessage};
use peft_models::{load_model, TextTokenizer};
use peft_train::data::{read_jsonl, Tokenization};
use proptest::prelude::*;
use serde_json::Value;

/// Cases per target in CI: each is a file written and read back, a few milliseconds.
const CASES: u32 = 192;

/// Copies a fixture folder (`case/sub`) into `dir`.
fn copy_folder(case: &str, sub: &str, dir: &Path) {
    for entry in std::fs::read_dir(case_dir(case).join(sub)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
}

/// Any JSON value a hand-edited or hostile config might hold at one key.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e30..1e30f64).prop_map(Value::from),
        prop_oneof![Just(0.0), Just(-1.0), Just(1e-300), Just(f64::MAX)].prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `text` (a JSON object) with the value at its `key_index`-th key (modulo the number of
/// keys, plus one slot for a new key) replaced by `value`.
fn replace_value(text: &str, key_index: usize, value: Value) -> String {
    let mut json: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
    let keys: Vec<String> = json.keys().cloned().collect();
    let key = keys
        .get(key_index % (keys.len() + 1))
        .cloned()
        .unwrap_or_else(|| "added_by_fuzz".into());
    json.insert(key, value);
    serde_json::to_string(&json).unwrap()
}

#[test]
fn safetensors_weights_with_mutated_bytes_load_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_folder("llama-base", "base", dir.path());
    let path = dir.path().join("model.safetensors");
    let original = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let device = ndarray_device();
    fuzz_runner(CASES)
        .run(&byte_edits(), |edits| {
            std::fs::write(&path, mutate(&original, header, &edits)).unwrap();
            let _ = load_model(dir.path(), &device);
            Ok(())
        })
        .unwrap();
}

#[test]
fn config_json_with_any_value_at_any_key_loads_or_is_refused() {
    let device = ndarray_device();
    for case in ["llama-base", "gpt2-base"] {
        let dir = tempfile::tempdir().unwrap();
        copy_folder(case, "base", dir.path());
        let path = dir.path().join("config.json");
        let original = std::fs::read_to_string(&path).unwrap();
        fuzz_runner(CASES)
            .run(&(any::<usize>(), json_value()), |(key, value)| {
                std::fs::write(&path, replace_value(&original, key, value)).unwrap();
                let _ = load_model(dir.path(), &device);
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn adapter_config_json_with_any_value_at_any_key_attaches_or_is_refused() {
    let device = ndarray_device();
    for case in ["llama-lora", "llama-ia3", "llama-prefix", "gpt2-lora"] {
        let dir = tempfile::tempdir().unwrap();
        copy_folder(case, "adapter", dir.path());
        let path = dir.path().join("adapter_config.json");
        let original = std::fs::read_to_string(&path).unwrap();
        // The runner takes a `Fn`: the model that adapters attach to is borrowed per case.
        let base = RefCell::new(load_model(&case_dir(case).join("base"), &device).unwrap());
        fuzz_runner(CASES / 2)
            .run(&(any::<usize>(), json_value()), |(key, value)| {
                std::fs::write(&path, replace_value(&original, key, value)).unwrap();
                let model = &mut base.borrow_mut().model;
                if peft_core::load_adapter(model, "fuzz", dir.path()).is_ok() {
                    peft_core::unload_adapter(model, "fuzz").unwrap();
                }
                Ok(())
            })
            .unwrap();
    }
}

/// One line of a data file: a record of the shapes the reader knows with any values, or
/// arbitrary text.
fn data_line() -> impl Strategy<Value = String> {
    let message = (
        prop_oneof![Just("user"), Just("assistant"), Just("system"), Just("x")],
        json_value(),
    )
        .prop_map(|(role, content)| serde_json::json!({"role": role, "content": content}));
    prop_oneof![
        json_value().prop_map(|v| serde_json::json!({"text": v}).to_string()),
        (json_value(), json_value())
            .prop_map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string()),
        proptest::collection::vec(message, 0..4)
            .prop_map(|m| serde_json::json!({"messages": m}).to_string()),
        ".{0,40}",
    ]
}

#[test]
fn jsonl_lines_of_any_shape_tokenize_or_are_refused_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    let tokenizer = TextTokenizer::from_folder(&case_dir("llama-base").join("base")).unwrap();
    let tokenization = Tokenization {
        tokenizer: &tokenizer,
        eos_id: 0,
        seq_len: 64,
        vocab_size: 384,
    };
    fuzz_runner(CASES)
        .run(&proptest::collection::vec(data_line(), 0..6), |lines| {
            std::fs::write(&path, lines.join("\n")).unwrap();
            if let Ok(records) = read_jsonl(&path) {
                let _ = tokenization.examples(&path, &records);
            }
            Ok(())
        })
        .unwrap();
}

/// Pieces of Jinja, valid and broken, that a chat template may be made of.
const TEMPLATE_PIECES: [&str; 16] = [
    "{% for m in messages %}",
    "{% endfor %}",
    "{{ m['role'] }}: {{ m['content'] }}\n",
    "{% if add_generation_prompt %}assistant:{% endif %}",
    "{{ messages[0]['content'].strip() }}",
    "{{ raise_exception('no') }}",
    "{% for i in range(1000000000) %}{% endfor %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ bos_token }}",
    "{{ messages | length }}",
    "{% if",
    "}}",
    "{{ messages[-1]['content'][::-1] }}",
    "{% set x = messages[0] %}{{ x.role.upper() }}",
    "{{ (messages | map(attribute='content') | join(' ')) * 3 }}",
    "plain text ",
];

#[test]
fn chat_templates_of_any_pieces_render_or_are_refused() {
    let tokenizer =
        RefCell::new(TextTokenizer::from_folder(&case_dir("llama-base").join("base")).unwrap());
    let message = (
        prop_oneof![
            Just("user".to_string()),
            Just("assistant".to_string()),
            ".{0,6}"
        ],
        ".{0,20}",
    )
        .prop_map(|(role, content)| ChatMessage::new(&role, &content));
    let strategy = (
        proptest::collection::vec(0..TEMPLATE_PIECES.len(), 0..7),
        proptest::collection::vec(message, 0..4),
        any::<bool>(),
    );
    fuzz_runner(CASES)
        .run(&strategy, |(pieces, messages, prompt)| {
            let template: String = pieces.iter().map(|&i| TEMPLATE_PIECES[i]).collect();
            let mut tokenizer = tokenizer.borrow_mut();
            tokenizer.chat_template = Some(template);
            let _ = apply_chat_template(&tokenizer, &messages, prompt);
            Ok(())
        })
        .unwrap();
}

#[test]
fn byte_level_tokenizers_round_trip_any_text() {
    for case in ["llama-base", "gpt2-base"] {
        let tokenizer = TextTokenizer::from_folder(&case_dir(case).join("base")).unwrap();
        fuzz_runner(CASES)
            .run(&any::<String>(), |text| {
                let ids = tokenizer.encode(&text, false).unwrap();
                prop_assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn a_template_that_crashes_the_engine_is_an_error() {
    // Found by the target above: minijinja 2.24 indexes past a reversed empty string.
    let mut tokenizer = TextTokenizer::from_folder(&case_dir("llama-base").join("base")).unwrap();
    tokenizer.chat_template = Some("{{ messages[0]['content'][::-1] }}".into());
    let err = apply_chat_template(&tokenizer, &[ChatMessage::new("user", "")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("crashed"), "{err}");
}
