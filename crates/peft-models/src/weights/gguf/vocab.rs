//! The tokenizer a GGUF describes in its `tokenizer.ggml.*` metadata, rebuilt as the
//! `tokenizer.json` Hugging Face ships for the same model and loaded with `tokenizers`.

use serde_json::{json, Map, Value};

use super::file::{GgufFile, MetaValue};
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// `tokenizer.ggml.token_type` of a control token (`<|im_end|>`, `<s>`): special in HF terms.
const TOKEN_TYPE_CONTROL: u64 = 3;
/// `tokenizer.ggml.token_type` of a user-defined added token.
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// Llama 3's split (its `tokenizer.json` `Split` pre-tokenizer).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's split.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values this crate rebuilds.
const SUPPORTED_PRE: &str =
    "default, gpt2, gpt-2, smollm, starcoder, refact, llama-bpe, llama3, llama-v3, dbrx, smaug-bpe, qwen2, deepseek-r1-qwen";

/// The tokenizer, or `Ok(None)` when the file has no `tokenizer.ggml.model`; an error names
/// the key when the file describes one this crate cannot rebuild.
pub fn tokenizer(file: &GgufFile) -> Result<Option<TextTokenizer>> {
    let Some(model) = file.metadata.get("tokenizer.ggml.model") else {
        return Ok(None);
    };
    if model.as_str() != Some("gpt2") {
        return Err(file.config_error(
            "tokenizer.ggml.model",
            format!("{model:?} is not supported; expected \"gpt2\" (byte-level BPE)"),
        ));
    }
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let merges = string_array(file, "tokenizer.ggml.merges")?;
    let types = match file.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|t| t.as_u64().unwrap_or(1))
                    .collect::<Vec<_>>()
            })
            .ok_or_else(|| file.config_error("tokenizer.ggml.token_type", "not an array".into()))?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(file.config_error(
            "tokenizer.ggml.token_type",
            format!("has {} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let pre = file
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
        file.config_error(
            "tokenizer.ggml.pre",
            format!("{pre:?} is not supported; expected one of {SUPPORTED_PRE}"),
        )
    })?;
    let token_at = |key: &str| -> Result<Option<(&str, usize)>> {
        match file.metadata.get(key).map(|v| v.as_u64()) {
            None => Ok(None),
            Some(Some(id)) if (id as usize) < tokens.len() => {
                Ok(Some((tokens[id as usize], id as usize)))
            }
            Some(_) => {
                Err(file.config_error(key, format!("not a token id below {}", tokens.len())))
            }
        }
    };
    let bos = token_at("tokenizer.ggml.bos_token_id")?;
    let eos = token_at("tokenizer.ggml.eos_token_id")?;
    let flag = |key: &str| {
        file.metadata
            .get(key)
            .and_then(MetaValue::as_bool)
            .unwrap_or(false)
    };
    let add_bos = bos.filter(|_| flag("tokenizer.ggml.add_bos_token"));
    let add_eos = eos.filter(|_| flag("tokenizer.ggml.add_eos_token"));

    let vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), json!(id)))
        .collect();
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(id, &t)| {
            json!({
                "id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": t == TOKEN_TYPE_CONTROL,
            })
        })
        .collect();
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(add_bos, add_eos),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
        },
    });
    let inner: tokenizers::Tokenizer =
        serde_json::from_value(tokenizer_json).map_err(|e| ModelError::Tokenizer {
            path: file.path().to_path_buf(),
            message: format!("the tokenizer in tokenizer.ggml.* does not load: {e}"),
        })?;
    let chat_template = file
        .metadata
        .get("tokenizer.chat_template")
        .and_then(MetaValue::as_str)
        .map(str::to_string);
    Ok(Some(TextTokenizer::new(
        inner,
        file.path().to_path_buf(),
        bos.map(|(t, _)| t.to_string()),
        eos.map(|(t, _)| t.to_string()),
        chat_template,
    )))
}

fn string_array<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let items = file
        .metadata
        .get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| file.config_error(key, "missing or not an array".into()))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| file.config_error(key, "holds a non-string item".into()))
        })
        .collect()
}

/// The pre-tokenizer HF's `tokenizer.json` uses for the family llama.cpp names `pre`, and
/// whether that family's BPE ignores merges for whole-vocabulary words (Llama 3 does).
/// llama.cpp's `llama-vocab.cpp` keeps the matching regex lists for each family.
fn pre_tokenizer(pre: &str) -> Option<(Value, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => (byte_level(true), false),
        // One digit per pre-token, then GPT-2's split: SmolLM's and StarCoder's tokenizer.json.
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe" => (split(LLAMA3_SPLIT), true),
        "qwen2" | "deepseek-r1-qwen" => (split(QWEN2_SPLIT), false),
        _ => return None,
    })
}

/// BOS/EOS (text and id) added around every encoded text when the file says so, else
/// byte-level offsets only (what SmolLM2's `tokenizer.json` has).
fn post_processor(bos: Option<(&str, usize)>, eos: Option<(&str, usize)>) -> Value {
    if bos.is_none() && eos.is_none() {
        return json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    }
    let template = |seq: &str| {
        let mut items = Vec::new();
        if let Some((b, _)) = bos {
            items.push(json!({"SpecialToken": {"id": b, "type_id": 0}}));
        }
        items.push(json!({"Sequence": {"id": seq, "type_id": 0}}));
        if let Some((e, _)) = eos {
            items.push(json!({"SpecialToken": {"id": e, "type_id": 0}}));
        }
        items
    };
    let mut pair = template("A");
    pair.extend(template("B"));
    let specials: Map<String, Value> = [bos, eos]
        .into_iter()
        .flatten()
        .map(|(t, id)| (t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]})))
        .collect();
    json!({"type": "TemplateProcessing", "single": template("A"), "pair": pair, "special_tokens": specials})
}
