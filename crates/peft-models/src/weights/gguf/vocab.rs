//! The tokenizer a GGUF describes in its `tokenizer.ggml.*` metadata (byte-level BPE or
//! SentencePiece BPE), rebuilt as the `tokenizer.json` Hugging Face ships for the same model
//! and loaded with `tokenizers`.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::file::{GgufFile, MetaValue};
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// `tokenizer.ggml.token_type` of an ordinary piece, the only kind BPE merges.
const TOKEN_TYPE_NORMAL: u64 = 1;
/// `tokenizer.ggml.token_type` of SentencePiece's unknown piece (`<unk>`).
const TOKEN_TYPE_UNKNOWN: u64 = 2;
/// `tokenizer.ggml.token_type` of a control token (`<|im_end|>`, `<s>`): special in HF terms.
const TOKEN_TYPE_CONTROL: u64 = 3;
/// `tokenizer.ggml.token_type` of a user-defined added token.
const TOKEN_TYPE_USER_DEFINED: u64 = 4;
/// `tokenizer.ggml.token_type` of a SentencePiece byte piece (`<0x0A>`).
const TOKEN_TYPE_BYTE: u64 = 6;

/// Llama 3's split (its `tokenizer.json` `Split` pre-tokenizer).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's split.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values this crate rebuilds.
const SUPPORTED_PRE: &str =
    "default, gpt2, gpt-2, smollm, starcoder, refact, llama-bpe, llama3, llama-v3, dbrx, smaug-bpe, qwen2, deepseek-r1-qwen";

/// How the file's tokenizer family fills in a `tokenizer.json`: everything but the vocabulary's
/// added tokens and the post-processor, which both families build alike.
struct Family {
    normalizer: Value,
    pre_tokenizer: Value,
    decoder: Value,
    model: Value,
    /// The post-processor when neither BOS nor EOS is added.
    plain_post_processor: Value,
    /// Whether llama.cpp adds BOS when `tokenizer.ggml.add_bos_token` is absent.
    adds_bos_by_default: bool,
}

/// The tokenizer, or `Ok(None)` when the file has no `tokenizer.ggml.model`; an error names
/// the key when the file describes one this crate cannot rebuild.
pub fn tokenizer(file: &GgufFile) -> Result<Option<TextTokenizer>> {
    let Some(model) = file.metadata.get("tokenizer.ggml.model") else {
        return Ok(None);
    };
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let types = token_types(file, tokens.len())?;
    let family = match model.as_str() {
        Some("gpt2") => byte_level_bpe(file, &tokens)?,
        Some("llama") => sentencepiece_bpe(file, &tokens, &types)?,
        _ => {
            return Err(file.config_error(
                "tokenizer.ggml.model",
                format!(
                    "{model:?} is not supported; expected \"gpt2\" (byte-level BPE) or \
                     \"llama\" (SentencePiece BPE)"
                ),
            ))
        }
    };
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
    let flag = |key: &str, default: bool| {
        file.metadata
            .get(key)
            .and_then(MetaValue::as_bool)
            .unwrap_or(default)
    };
    let add_bos = bos.filter(|_| flag("tokenizer.ggml.add_bos_token", family.adds_bos_by_default));
    let add_eos = eos.filter(|_| flag("tokenizer.ggml.add_eos_token", false));

    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| {
            matches!(
                t,
                TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
            )
        })
        .map(|(id, &t)| {
            json!({
                "id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": t != TOKEN_TYPE_USER_DEFINED,
            })
        })
        .collect();
    let post_processor = match (add_bos, add_eos) {
        (None, None) => family.plain_post_processor,
        _ => template_post_processor(add_bos, add_eos),
    };
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": family.normalizer,
        "pre_tokenizer": family.pre_tokenizer,
        "post_processor": post_processor,
        "decoder": family.decoder,
        "model": family.model,
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

/// `tokenizer.ggml.token_type`, one per token (all normal when absent).
fn token_types(file: &GgufFile, tokens: usize) -> Result<Vec<u64>> {
    let key = "tokenizer.ggml.token_type";
    let Some(value) = file.metadata.get(key) else {
        return Ok(vec![TOKEN_TYPE_NORMAL; tokens]);
    };
    let types: Vec<u64> = value
        .as_array()
        .ok_or_else(|| file.config_error(key, "not an array".into()))?
        .iter()
        .map(|t| t.as_u64().unwrap_or(TOKEN_TYPE_NORMAL))
        .collect();
    if types.len() != tokens {
        return Err(file.config_error(
            key,
            format!("has {} entries for {tokens} tokens", types.len()),
        ));
    }
    Ok(types)
}

/// GPT-2's byte-level BPE (`tokenizer.ggml.model` `gpt2`): merges stored in the file, the
/// pre-tokenizer of the family `tokenizer.ggml.pre` names.
fn byte_level_bpe(file: &GgufFile, tokens: &[&str]) -> Result<Family> {
    let merges = string_array(file, "tokenizer.ggml.merges")?;
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
    Ok(Family {
        normalizer: Value::Null,
        pre_tokenizer,
        decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        model: json!({
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab_map(tokens), "merges": merges,
        }),
        plain_post_processor: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
        adds_bos_by_default: false,
    })
}

/// SentencePiece BPE (`tokenizer.ggml.model` `llama`: Llama 2, Mistral, Gemma) as the
/// `tokenizer.json` transformers' `LlamaTokenizerFast` has: spaces as `▁` with one prepended
/// (unless `tokenizer.ggml.add_space_prefix` is false), BPE over the normal pieces with merges
/// ranked by the merged piece's score (`tokenizer.ggml.scores`) as transformers' converter ranks
/// them, `<0xXX>` byte pieces for what the vocabulary lacks.
fn sentencepiece_bpe(file: &GgufFile, tokens: &[&str], types: &[u64]) -> Result<Family> {
    let key = "tokenizer.ggml.scores";
    let scores: Vec<f64> = file
        .metadata
        .get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| file.config_error(key, "missing or not an array".into()))?
        .iter()
        .map(|v| v.as_f64().filter(|s| s.is_finite()))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            file.config_error(key, "holds an item that is not a finite number".into())
        })?;
    if scores.len() != tokens.len() {
        return Err(file.config_error(
            key,
            format!("has {} entries for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let add_space_prefix = file
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(MetaValue::as_bool)
        .unwrap_or(true);
    let unknown = types.iter().position(|&t| t == TOKEN_TYPE_UNKNOWN);
    let byte_fallback = types.contains(&TOKEN_TYPE_BYTE);
    let mut normalizers = Vec::new();
    let mut decoders = vec![json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "})];
    if byte_fallback {
        decoders.push(json!({"type": "ByteFallback"}));
    }
    decoders.push(json!({"type": "Fuse"}));
    if add_space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    Ok(Family {
        normalizer: json!({"type": "Sequence", "normalizers": normalizers}),
        pre_tokenizer: Value::Null,
        decoder: json!({"type": "Sequence", "decoders": decoders}),
        model: json!({
            "type": "BPE", "dropout": null, "unk_token": unknown.map(|id| tokens[id]),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": byte_fallback, "ignore_merges": false,
            "vocab": vocab_map(tokens), "merges": score_ranked_merges(tokens, types, &scores),
        }),
        plain_post_processor: Value::Null,
        adds_bos_by_default: true,
    })
}

/// The BPE merges of a SentencePiece vocabulary as transformers' converter derives them: every
/// split of a normal piece into two normal pieces, ranked by the whole piece's score (highest
/// first), then by its id.
fn score_ranked_merges(tokens: &[&str], types: &[u64], scores: &[f64]) -> Vec<String> {
    let normal: HashMap<&str, usize> = (0..tokens.len())
        .filter(|&id| types[id] == TOKEN_TYPE_NORMAL)
        .map(|id| (tokens[id], id))
        .collect();
    let mut ranked: Vec<(f64, usize, &str, &str)> = Vec::new();
    for (&piece, &id) in &normal {
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if normal.contains_key(left) && normal.contains_key(right) {
                ranked.push((-scores[id], id, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2)));
    ranked
        .into_iter()
        .map(|(_, _, left, right)| format!("{left} {right}"))
        .collect()
}

fn vocab_map(tokens: &[&str]) -> Map<String, Value> {
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), json!(id)))
        .collect()
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

/// BOS/EOS (text and id) added around every encoded text.
fn template_post_processor(bos: Option<(&str, usize)>, eos: Option<(&str, usize)>) -> Value {
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
