//! GGUF import: a tiny LLaMA written by this test as GGUF (F32, and Q8_0 quantized here) loads
//! to the same logits as the same weights in a safetensors folder; q/k rows permuted the way
//! llama.cpp's converter stores them are undone; a GGUF without `output.weight` ties the head;
//! the tokenizer rebuilt from `tokenizer.ggml.*` (byte-level BPE and SentencePiece) encodes like
//! the `tokenizer.json` it came from; each family (Qwen2, Qwen3, Gemma, Phi-3, Llama 3.1 RoPE)
//! gives transformers' logits; unsupported tensor types, tokenizers and forged headers are
//! refused by name.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::train::Learner;
use common::*;
use half::f16;
use peft_core::{load_adapter, PackFormat, ProjectionHost};
use peft_models::weights::gguf::{tokenizer, GgufFile};
use peft_models::{load_model, load_model_as, BaseFormat, TextTokenizer};
use peft_train::adamw;
use peft_train::config::Schedule;
use peft_train::model::{TrainableLm, Trained};
use peft_train::schedule::{learning_rates, WarmupSchedule};
use peft_train::step::step_gradients;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

const F32: u32 = 0;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q8_0: u32 = 8;
const Q2_K: u32 = 10;

/// One GGUF metadata value, as the test writes it.
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// A GGUF v3 file written from scratch, following the specification in ggml's docs/gguf.md.
#[derive(Default)]
struct GgufWriter {
    metadata: Vec<(String, Meta)>,
    /// Name, dimensions innermost first, type id, bytes.
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufWriter {
    /// Sets `key` (replacing an earlier value).
    fn meta(&mut self, key: &str, value: Meta) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
    }

    fn bytes(&self) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            match value {
                Meta::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::Bool(v) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*v as u8);
                }
                Meta::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Meta::Strs(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|s| put_str(&mut out, s));
                }
                Meta::I32s(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|v| out.extend(v.to_le_bytes()));
                }
                Meta::F32s(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(6u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|v| out.extend(v.to_le_bytes()));
                }
            }
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(ALIGN) * ALIGN;
        }
        let data_start = out.len().div_ceil(ALIGN) * ALIGN;
        out.resize(data_start, 0);
        for ((_, _, _, data), at) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + at, 0);
            out.extend(data);
        }
        out
    }
}

/// llama.cpp's `quantize_row_q8_0_ref`: per 32 values, d = max|x| / 127 stored as f16 and
/// q = round(x / d). Returns the blocks and the values they dequantize to.
fn quantize_q8_0(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut dequantized = Vec::new();
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let d16 = f16::from_f32(d);
        bytes.extend(d16.to_le_bytes());
        for &v in block {
            let q = (v * id).round() as i8;
            bytes.push(q as u8);
            dequantized.push(q as f32 * d16.to_f32());
        }
    }
    (bytes, dequantized)
}

/// llama.cpp's `quantize_row_q4_0_ref` (`signed`: d = max / -8 of the value of largest
/// magnitude, q = min(15, trunc(x/d + 8.5)), value (q − 8)·d) or `quantize_row_q4_1_ref` (d =
/// (max − min)/15, m = min, q = min(15, trunc((x − m)/d + 0.5)), value q·d + m). Returns the
/// blocks and the values they dequantize to.
fn quantize_q4(values: &[f32], signed: bool) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut dequantized = vec![0.0; values.len()];
    for (b, block) in values.chunks_exact(32).enumerate() {
        let (d, m) = if signed {
            let max = block
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            (max / -8.0, 0.0)
        } else {
            let min = block.iter().copied().fold(f32::INFINITY, f32::min);
            let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            ((max - min) / 15.0, min)
        };
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (d16, m16) = (f16::from_f32(d), f16::from_f32(m));
        bytes.extend(d16.to_le_bytes());
        if !signed {
            bytes.extend(m16.to_le_bytes());
        }
        let code = |x: f32| match signed {
            true => ((x * id + 8.5) as i8).min(15) as u8,
            false => (((x - m) * id + 0.5) as i8).min(15) as u8,
        };
        let value = |q: u8| match signed {
            true => (q as i32 - 8) as f32 * d16.to_f32(),
            false => q as f32 * d16.to_f32() + m16.to_f32(),
        };
        for j in 0..16 {
            let (lo, hi) = (code(block[j]), code(block[j + 16]));
            bytes.push(lo | (hi << 4));
            dequantized[b * 32 + j] = value(lo);
            dequantized[b * 32 + j + 16] = value(hi);
        }
    }
    (bytes, dequantized)
}

/// `convert_hf_to_gguf.py`'s `permute`: within each head, HF row `i * half + j` goes to
/// llama.cpp row `2j + i`.
fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let (hf, gguf) = (h * head_dim + i * half + j, h * head_dim + 2 * j + i);
                out[gguf * cols..(gguf + 1) * cols].copy_from_slice(&w[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

/// llama.cpp's name for a transformers LLaMA tensor.
fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
    let (layer, module) = rest.split_once('.').expect("layer index");
    let (module, suffix) = module.rsplit_once('.').expect("weight or bias");
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "self_attn.qkv_proj" => "attn_qkv",
        "mlp.gate_up_proj" => "ffn_up",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        other => panic!("unexpected tensor {other}"),
    };
    format!("blk.{layer}.{g}.{suffix}")
}

struct Tensor2 {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn read_fixture_weights(case: &str) -> BTreeMap<String, Tensor2> {
    let path = case_dir(case).join("base/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32);
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (
                name,
                Tensor2 {
                    shape: view.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

/// How the test GGUF stores the model.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    F32,
    Q8_0,
    Q4_0,
    Q4_1,
    /// F32 without `output.weight`: the head is the embedding.
    Tied,
}

/// A GGUF of architecture `arch` with the model metadata of `config` (a fixture's
/// `config.json`, epsilon 1e-5) and the fixture tokenizer, without tensors.
fn model_gguf(config: &serde_json::Value, arch: &str) -> GgufWriter {
    let mut gguf = GgufWriter::default();
    gguf.meta("general.architecture", Meta::Str(arch.into()));
    for (key, value) in [
        ("block_count", "num_hidden_layers"),
        ("context_length", "max_position_embeddings"),
        ("embedding_length", "hidden_size"),
        ("feed_forward_length", "intermediate_size"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
    ] {
        let v = config[value].as_u64().unwrap() as u32;
        gguf.meta(&format!("{arch}.{key}"), Meta::U32(v));
    }
    if let Some(head_dim) = config["head_dim"].as_u64() {
        let key = format!("{arch}.attention.key_length");
        gguf.meta(&key, Meta::U32(head_dim as u32));
    }
    let theta = config["rope_parameters"]["rope_theta"].as_f64().unwrap();
    gguf.meta(&format!("{arch}.rope.freq_base"), Meta::F32(theta as f32));
    let key = format!("{arch}.attention.layer_norm_rms_epsilon");
    gguf.meta(&key, Meta::F32(1e-5));
    add_tokenizer(&mut gguf);
    gguf
}

/// Writes the fixture's LLaMA as GGUF in `dir/model.gguf`, and the weights the GGUF holds
/// (after quantization) as a Hugging Face folder `dir/hf`.
fn write_case(dir: &Path, variant: Variant) {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(case_dir("llama-base").join("base/config.json")).unwrap(),
    )
    .unwrap();
    let (heads, kv_heads) = (4usize, 2usize);
    assert_eq!(config["num_attention_heads"], heads);
    assert_eq!(config["num_key_value_heads"], kv_heads);
    let mut gguf = model_gguf(&config, "llama");

    let mut hf_tensors: BTreeMap<String, Tensor2> = BTreeMap::new();
    for (name, t) in read_fixture_weights("llama-base") {
        if variant == Variant::Tied && name == "lm_head.weight" {
            continue;
        }
        let (rows, cols) = (t.shape[0], *t.shape.last().unwrap());
        let (stored, values) = match variant {
            _ if t.shape.len() != 2 => (
                (F32, t.values.iter().flat_map(|v| v.to_le_bytes()).collect()),
                t.values.clone(),
            ),
            Variant::Q8_0 => {
                let (bytes, deq) = quantize_q8_0(&t.values);
                ((Q8_0, bytes), deq)
            }
            Variant::Q4_0 | Variant::Q4_1 => {
                let signed = variant == Variant::Q4_0;
                let (bytes, deq) = quantize_q4(&t.values, signed);
                ((if signed { Q4_0 } else { Q4_1 }, bytes), deq)
            }
            Variant::F32 | Variant::Tied => (
                (F32, t.values.iter().flat_map(|v| v.to_le_bytes()).collect()),
                t.values.clone(),
            ),
        };
        // Quantization works within rows, so permuting rows before or after it is the same.
        let permuted_heads = match name.as_str() {
            n if n.ends_with("q_proj.weight") => Some(heads),
            n if n.ends_with("k_proj.weight") => Some(kv_heads),
            _ => None,
        };
        let stored_bytes = match permuted_heads {
            None => stored.1,
            Some(h) => {
                let rows_bytes = stored.1.len() / rows;
                let index: Vec<f32> = (0..rows).map(|r| r as f32).collect();
                let order = permute_rows(&index, rows, 1, h);
                order
                    .iter()
                    .flat_map(|&r| {
                        stored.1[r as usize * rows_bytes..(r as usize + 1) * rows_bytes].to_vec()
                    })
                    .collect()
            }
        };
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        gguf.tensors
            .push((gguf_name(&name), dims, stored.0, stored_bytes));
        hf_tensors.insert(
            name,
            Tensor2 {
                shape: vec![rows, cols].into_iter().take(t.shape.len()).collect(),
                values,
            },
        );
    }
    std::fs::write(dir.join("model.gguf"), gguf.bytes()).unwrap();

    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    let mut config = config;
    config["tie_word_embeddings"] = (variant == Variant::Tied).into();
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let data: BTreeMap<String, Vec<u8>> = hf_tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = hf_tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, t.shape.clone(), &data[n]).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &hf.join("model.safetensors")).unwrap();
}

/// The fixture's byte-level BPE as `tokenizer.ggml.*` metadata (llama.cpp's `gpt2` model).
fn add_tokenizer(gguf: &mut GgufWriter) {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(case_dir("llama-base").join("base/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (token, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = token.clone();
    }
    let merges: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
            other => other.as_str().unwrap().to_string(),
        })
        .collect();
    // Token 0 (<|endoftext|>) is a control token; the rest are normal.
    let types: Vec<i32> = (0..tokens.len())
        .map(|i| if i == 0 { 3 } else { 1 })
        .collect();
    gguf.meta("tokenizer.ggml.model", Meta::Str("gpt2".into()));
    gguf.meta("tokenizer.ggml.pre", Meta::Str("default".into()));
    gguf.meta("tokenizer.ggml.tokens", Meta::Strs(tokens));
    gguf.meta("tokenizer.ggml.token_type", Meta::I32s(types));
    gguf.meta("tokenizer.ggml.merges", Meta::Strs(merges));
    gguf.meta("tokenizer.ggml.eos_token_id", Meta::U32(0));
    gguf.meta("tokenizer.ggml.bos_token_id", Meta::U32(0));
    gguf.meta("tokenizer.ggml.add_bos_token", Meta::Bool(false));
    gguf.meta(
        "tokenizer.chat_template",
        Meta::Str("{{ messages[0]['content'] }}".into()),
    );
}

fn logits_of(path: &Path) -> Vec<f32> {
    let device = ndarray_device();
    let expected = Expected::load("llama-base");
    let ids = expected.i64("input_ids");
    let mask = expected.i64("attention_mask");
    let loaded = load_model(path, &device).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    to_vec(loaded.model.forward(
        int_tensor(&ids, &device),
        Some(&int_tensor(&mask, &device)),
        None,
    ))
}

fn check_variant(variant: Variant) -> f32 {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), variant);
    let mask = Expected::load("llama-base").i64("attention_mask");
    let gguf = logits_of(&dir.path().join("model.gguf"));
    let safetensors = logits_of(&dir.path().join("hf"));
    max_abs_diff_masked(&gguf, &safetensors, &mask.values, 384)
}

#[test]
fn f32_gguf_gives_the_logits_of_the_same_weights_in_safetensors() {
    let err = check_variant(Variant::F32);
    eprintln!("F32 GGUF vs safetensors: max abs logit difference {err:e}");
    assert!(err <= 1e-6, "{err:e}");
    // And the fixture itself is what the GGUF reproduces (transformers' logits).
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), Variant::F32);
    let expected = Expected::load("llama-base");
    let mask = expected.i64("attention_mask");
    let reference = expected.f32("logits_base");
    let gguf = logits_of(&dir.path().join("model.gguf"));
    let err = max_abs_diff_masked(&gguf, &reference.values, &mask.values, 384);
    assert!(err <= LOGITS_TOLERANCE, "GGUF vs transformers: {err:e}");
}

/// The `rope_freqs` tensor `convert_hf_to_gguf.py` writes for Llama 3.1 scaling: per inverse
/// frequency, 1 where it is kept, `factor` where divided, a smooth blend between.
fn converter_rope_freqs(config: &serde_json::Value) -> Vec<f32> {
    let rope = &config["rope_parameters"];
    let value = |key: &str| rope[key].as_f64().unwrap();
    let (base, factor) = (value("rope_theta"), value("factor"));
    let (low, high) = (value("low_freq_factor"), value("high_freq_factor"));
    let old_context = value("original_max_position_embeddings");
    let dim = config["head_dim"].as_u64().unwrap() as usize;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let wavelength = 2.0 * std::f64::consts::PI * base.powf(i as f64 / dim as f64);
            if wavelength < old_context / high {
                1.0
            } else if wavelength > old_context / low {
                factor as f32
            } else {
                let smooth = (old_context / wavelength - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

/// The base weights of fixture `case` as llama.cpp's converter writes a GGUF of architecture
/// `arch`: `<arch>.*` metadata, q/k rows permuted for LLaMA only, Gemma's norm gains plus one,
/// Llama 3.1's RoPE scaling as a `rope_freqs` tensor.
fn fixture_gguf(case: &str, arch: &str) -> GgufWriter {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(case_dir(case).join("base/config.json")).unwrap(),
    )
    .unwrap();
    let mut gguf = model_gguf(&config, arch);
    let heads = |key: &str| config[key].as_u64().unwrap() as usize;
    for (name, t) in read_fixture_weights(case) {
        // llama.cpp's Gemma converter stores RMSNorm gains plus one.
        let plus = if arch == "gemma" && name.ends_with("norm.weight") {
            1.0
        } else {
            0.0
        };
        let values: Vec<f32> = t.values.iter().map(|v| v + plus).collect();
        let permuted_heads = match name.as_str() {
            _ if arch != "llama" => None,
            n if n.ends_with("q_proj.weight") => Some(heads("num_attention_heads")),
            n if n.ends_with("k_proj.weight") => Some(heads("num_key_value_heads")),
            _ => None,
        };
        let values = match permuted_heads {
            Some(h) => permute_rows(&values, t.shape[0], t.shape[1], h),
            None => values,
        };
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        gguf.tensors.push((gguf_name(&name), dims, F32, bytes));
    }
    if config["rope_parameters"]["rope_type"] == "llama3" {
        let factors = converter_rope_freqs(&config);
        let dims = vec![factors.len() as u64];
        let bytes = factors.iter().flat_map(|v| v.to_le_bytes()).collect();
        gguf.tensors
            .push(("rope_freqs.weight".into(), dims, F32, bytes));
    }
    gguf
}

/// Qwen2, Qwen3, Gemma, Phi-3 and Llama 3.1 as llama.cpp's converter writes them (`<arch>.*`
/// metadata, q/k rows permuted for LLaMA only, biases and per-head norms under their GGUF
/// names, Gemma's norm gains plus one and no `output.weight`, Phi-3's fused `attn_qkv` and
/// `ffn_up`, Llama 3.1's RoPE scaling as a `rope_freqs` tensor) give transformers' logits of
/// the fixture, and the Hugging Face folder saved from each gives them again.
#[test]
fn family_ggufs_give_transformers_logits() {
    for (case, arch) in [
        ("qwen2-lora", "qwen2"),
        ("qwen3-lora", "qwen3"),
        ("gemma-lora", "gemma"),
        ("phi3-lora", "phi3"),
        ("llama31-rope-lora", "llama"),
    ] {
        let mut gguf = fixture_gguf(case, arch);
        if arch == "phi3" {
            // Phi-3's window, here as long as the input (the fixture has none).
            gguf.meta("phi3.attention.sliding_window", Meta::U32(16));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, gguf.bytes()).unwrap();
        let device = ndarray_device();
        let loaded = load_model(&path, &device).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(loaded.config.model_type(), arch);
        let window = loaded
            .config
            .describe()
            .into_iter()
            .find(|(k, _)| *k == "sliding window");
        assert_eq!(
            window.map(|(_, v)| v),
            (arch == "phi3").then(|| "16".to_string())
        );
        let hf = dir.path().join("hf");
        peft_models::save_hf_folder(&loaded, &hf).unwrap();
        let expected = Expected::load(case);
        let (ids, mask) = (expected.i64("input_ids"), expected.i64("attention_mask"));
        let reference = expected.f32("logits_base");
        for (what, loaded) in [
            ("GGUF", loaded),
            ("its HF folder", load_model(&hf, &device).unwrap()),
        ] {
            let logits = to_vec(loaded.model.forward(
                int_tensor(&ids, &device),
                Some(&int_tensor(&mask, &device)),
                None,
            ));
            let err = max_abs_diff_masked(&logits, &reference.values, &mask.values, 384);
            eprintln!("{case} {what}: max abs logit error vs transformers {err:e}");
            assert!(
                err <= LOGITS_TOLERANCE,
                "{case} {what} vs transformers: {err:e}"
            );
        }
    }
}

#[test]
fn q8_0_gguf_gives_the_logits_of_its_dequantized_weights_in_safetensors() {
    let err = check_variant(Variant::Q8_0);
    eprintln!("Q8_0 GGUF vs safetensors: max abs logit difference {err:e}");
    assert!(err <= 1e-6, "{err:e}");
}

#[test]
fn gguf_without_output_weight_ties_the_head_to_the_embedding() {
    let err = check_variant(Variant::Tied);
    assert!(err <= 1e-6, "{err:e}");
}

#[test]
fn tokenizer_rebuilt_from_gguf_metadata_encodes_like_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), Variant::F32);
    let device = ndarray_device();
    let loaded = load_model(&dir.path().join("model.gguf"), &device).unwrap();
    let from_gguf = loaded.tokenizer().unwrap();
    let reference = TextTokenizer::from_folder(&case_dir("llama-base").join("base")).unwrap();
    for text in [
        "Hello world, 123!",
        "  two  spaces\nand a line",
        "<|endoftext|>x",
        "café ½",
    ] {
        assert_eq!(
            from_gguf.encode(text, true).unwrap(),
            reference.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(from_gguf.eos_token.as_deref(), Some("<|endoftext|>"));
    assert_eq!(loaded.eos_token_ids, vec![0]);
    assert_eq!(
        from_gguf.chat_template.as_deref(),
        Some("{{ messages[0]['content'] }}")
    );
}

/// `tests/data/spm` (written by its `make.py`): a SentencePiece BPE model with byte fallback as
/// a Llama-style `tokenizer.json` and as llama.cpp's converter puts it in `tokenizer.ggml.*`.
fn spm_data() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spm")
}

/// A GGUF holding only the SentencePiece tokenizer of `tests/data/spm`, as llama.cpp's
/// `_set_vocab_sentencepiece` writes it.
fn sentencepiece_gguf() -> GgufWriter {
    let vocab: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spm_data().join("gguf_vocab.json")).unwrap())
            .unwrap();
    let strings = |key: &str| -> Vec<String> {
        let items = vocab[key].as_array().unwrap();
        items
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let id = |key: &str| Meta::U32(vocab[key].as_u64().unwrap() as u32);
    let mut gguf = GgufWriter::default();
    gguf.meta("general.architecture", Meta::Str("llama".into()));
    gguf.meta("tokenizer.ggml.model", Meta::Str("llama".into()));
    gguf.meta("tokenizer.ggml.pre", Meta::Str("default".into()));
    gguf.meta("tokenizer.ggml.tokens", Meta::Strs(strings("tokens")));
    let scores = vocab["scores"].as_array().unwrap();
    let scores = scores.iter().map(|v| v.as_f64().unwrap() as f32).collect();
    gguf.meta("tokenizer.ggml.scores", Meta::F32s(scores));
    let types = vocab["token_type"].as_array().unwrap();
    let types = types.iter().map(|v| v.as_i64().unwrap() as i32).collect();
    gguf.meta("tokenizer.ggml.token_type", Meta::I32s(types));
    gguf.meta("tokenizer.ggml.bos_token_id", id("bos_token_id"));
    gguf.meta("tokenizer.ggml.eos_token_id", id("eos_token_id"));
    gguf.meta("tokenizer.ggml.unknown_token_id", id("unknown_token_id"));
    gguf
}

fn gguf_tokenizer(gguf: &GgufWriter) -> peft_models::Result<TextTokenizer> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.gguf");
    std::fs::write(&path, gguf.bytes()).unwrap();
    let file = GgufFile::open(&path)?;
    Ok(tokenizer(&file)?.expect("the file has a tokenizer"))
}

/// `ours` encodes (with and without special tokens) and decodes like `reference` on text with
/// spaces (leading, repeated, trailing), newlines and tabs, digits, accents, other scripts and
/// emoji, special tokens in the text, and the empty text.
fn assert_same_encoding(ours: &TextTokenizer, reference: &tokenizers::Tokenizer) {
    let texts = [
        "Ship to: Fatima Haddad, Dublin. Items: 8 purple backpacks.",
        " leading space, two  spaces, trailing ",
        "lines\nand\ttabs\n\n",
        "digits 20261206 and 3.14159",
        "Café crème à Genève, Grüße aus München",
        "bytes: 日本語 ✓ 🚀 ½",
        "<s>special</s> tokens",
        "",
    ];
    for text in texts {
        for special in [false, true] {
            let want = reference.encode(text, special).unwrap().get_ids().to_vec();
            assert_eq!(ours.encode(text, special).unwrap(), want, "{text:?}");
        }
        let ids = ours.encode(text, false).unwrap();
        assert_eq!(
            ours.decode(&ids, false).unwrap(),
            reference.decode(&ids, false).unwrap(),
            "{text:?}"
        );
    }
}

/// SentencePiece GGUFs (`tokenizer.ggml.model` `llama`: Llama 2, Mistral, Gemma) encode and
/// decode like the `tokenizers` crate on the Llama-style `tokenizer.json` of the same model,
/// byte fallback included.
#[test]
fn sentencepiece_gguf_tokenizer_encodes_like_a_llama_tokenizer_json() {
    let reference = tokenizers::Tokenizer::from_file(spm_data().join("tokenizer.json")).unwrap();
    let from_gguf = gguf_tokenizer(&sentencepiece_gguf()).unwrap();
    assert_same_encoding(&from_gguf, &reference);
    // Byte fallback is what encodes characters no vocabulary has (Egyptian hieroglyphs, four
    // UTF-8 bytes each): <0xXX> pieces that decode back to the text.
    let ids = from_gguf.encode("𓀀𓀁", false).unwrap();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| reference.id_to_token(id).unwrap())
        .collect();
    assert_eq!(
        pieces.iter().filter(|p| p.starts_with("<0x")).count(),
        8,
        "{pieces:?}"
    );
    assert_eq!(from_gguf.decode(&ids, false).unwrap(), "𓀀𓀁");
    // BOS is added by default, as llama.cpp adds it for SentencePiece vocabularies.
    assert_eq!(from_gguf.encode("x", true).unwrap()[0], 1);
    assert_eq!(from_gguf.eos_token.as_deref(), Some("</s>"));
}

/// Gemma's SentencePiece GGUFs say `tokenizer.ggml.add_space_prefix = false`: no `▁` is
/// prepended, as in Gemma's `tokenizer.json` (the Llama one without `Prepend` and `Strip`).
#[test]
fn sentencepiece_gguf_without_space_prefix_encodes_like_gemmas_tokenizer_json() {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spm_data().join("tokenizer.json")).unwrap()).unwrap();
    let normalizers = json["normalizer"]["normalizers"].as_array_mut().unwrap();
    normalizers.retain(|n| n["type"] != "Prepend");
    let decoders = json["decoder"]["decoders"].as_array_mut().unwrap();
    decoders.retain(|d| d["type"] != "Strip");
    let reference: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    let mut gguf = sentencepiece_gguf();
    gguf.meta("tokenizer.ggml.add_space_prefix", Meta::Bool(false));
    let from_gguf = gguf_tokenizer(&gguf).unwrap();
    assert_same_encoding(&from_gguf, &reference);
    assert_ne!(
        from_gguf.encode("hello", false).unwrap(),
        gguf_tokenizer(&sentencepiece_gguf())
            .unwrap()
            .encode("hello", false)
            .unwrap(),
        "the space prefix changes the first piece"
    );
}

/// An architecture, a RoPE scaling type or per-frequency factors this crate cannot read are
/// refused with the key and the value, nothing loaded.
#[test]
fn unknown_architectures_and_rope_scalings_are_refused_by_key() {
    let mut falcon = fixture_gguf("llama31-rope-lora", "llama");
    falcon.meta("general.architecture", Meta::Str("falcon".into()));
    let mut yarn = fixture_gguf("qwen2-lora", "qwen2");
    yarn.meta("qwen2.rope.scaling.type", Meta::Str("yarn".into()));
    let mut odd = fixture_gguf("llama31-rope-lora", "llama");
    for (name, _, _, bytes) in odd.tensors.iter_mut() {
        if name == "rope_freqs.weight" {
            // Divisors that rise and fall again: no Llama-3 scaling gives them.
            bytes[4..8].copy_from_slice(&5.0f32.to_le_bytes());
            bytes[8..12].copy_from_slice(&1.0f32.to_le_bytes());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for (gguf, needles) in [
        (falcon, ["general.architecture", "falcon"]),
        (yarn, ["qwen2.rope.scaling.type", "yarn"]),
        (odd, ["rope_freqs.weight", "Llama 3.1"]),
    ] {
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, gguf.bytes()).unwrap();
        let err = load_model(&path, &ndarray_device())
            .err()
            .map(|e| e.to_string());
        let err = err.expect("refused");
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }
}

/// Tokenizer families and pre-tokenizers this crate cannot rebuild, and SentencePiece files
/// without usable scores, are refused naming the key and the value.
#[test]
fn unknown_tokenizer_families_are_refused_by_key() {
    let mut unknown_model = sentencepiece_gguf();
    unknown_model.meta("tokenizer.ggml.model", Meta::Str("t5".into()));
    let mut unknown_pre = GgufWriter::default();
    add_tokenizer(&mut unknown_pre);
    unknown_pre.meta("tokenizer.ggml.pre", Meta::Str("chatglm-bpe".into()));
    let mut no_scores = sentencepiece_gguf();
    no_scores
        .metadata
        .retain(|(k, _)| k != "tokenizer.ggml.scores");
    let mut short_scores = sentencepiece_gguf();
    short_scores.meta("tokenizer.ggml.scores", Meta::F32s(vec![0.0; 3]));
    for (gguf, needles) in [
        (unknown_model, ["tokenizer.ggml.model", "t5"]),
        (unknown_pre, ["tokenizer.ggml.pre", "chatglm-bpe"]),
        (no_scores, ["tokenizer.ggml.scores", "missing"]),
        (short_scores, ["tokenizer.ggml.scores", "3 entries"]),
    ] {
        let Err(err) = gguf_tokenizer(&gguf) else {
            panic!("{needles:?}: accepted")
        };
        let err = err.to_string();
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }
}

#[test]
fn unsupported_tensor_types_and_bad_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut gguf = GgufWriter::default();
    gguf.meta("general.architecture", Meta::Str("llama".into()));
    gguf.tensors.push((
        "blk.0.attn_q.weight".into(),
        vec![256, 1],
        Q2_K,
        vec![0; 84],
    ));
    let path = dir.path().join("q2k.gguf");
    std::fs::write(&path, gguf.bytes()).unwrap();
    let err = load_model(&path, &ndarray_device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("Q2_K"),
        "{err}"
    );

    let truncated = dir.path().join("truncated.gguf");
    let mut bytes = GgufWriter::default();
    bytes.meta("general.architecture", Meta::Str("llama".into()));
    std::fs::write(&truncated, &bytes.bytes()[..20]).unwrap();
    let err = load_model(&truncated, &ndarray_device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated.gguf") && err.contains("end of file"),
        "{err}"
    );

    let mut missing = GgufWriter::default();
    missing.meta("general.architecture", Meta::Str("llama".into()));
    let path = dir.path().join("no-metadata.gguf");
    std::fs::write(&path, missing.bytes()).unwrap();
    let err = load_model(&path, &ndarray_device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("llama.embedding_length"), "{err}");
}

/// A GGUF v3 header with `kv` metadata entries and `tensors` tensor infos, given as raw
/// bytes, followed by `data` bytes at the default 32-byte alignment.
fn raw_gguf(kv: (u64, &[u8]), tensors: (u64, &[u8]), data: usize) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(tensors.0.to_le_bytes());
    out.extend(kv.0.to_le_bytes());
    out.extend(kv.1);
    out.extend(tensors.1);
    out.resize(out.len().div_ceil(32) * 32 + data, 0);
    out
}

/// One tensor info: name, dimensions innermost first, type, offset.
fn tensor_info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_str(&mut out, name);
    out.extend((dims.len() as u32).to_le_bytes());
    dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
    out.extend(ty.to_le_bytes());
    out.extend(offset.to_le_bytes());
    out
}

#[test]
fn forged_headers_are_refused_without_overflow_or_unbounded_recursion() {
    let dir = tempfile::tempdir().unwrap();
    // Arrays nested 100,000 deep once overflowed the stack.
    let mut deep = Vec::new();
    put_str(&mut deep, "deep");
    deep.extend(9u32.to_le_bytes());
    for _ in 0..100_000 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    // An array whose count of u64 items is more than the file could hold.
    let mut long = Vec::new();
    put_str(&mut long, "long");
    long.extend(9u32.to_le_bytes());
    long.extend(10u32.to_le_bytes());
    long.extend((1u64 << 40).to_le_bytes());
    let embd = |offset: u64| tensor_info("token_embd.weight", &[64, 4], F32, offset);
    let twice = [embd(0), embd(1024)].concat();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "deep",
            raw_gguf((1, &deep), (0, &[]), 0),
            "nested more than",
        ),
        (
            "long",
            raw_gguf((1, &long), (0, &[]), 64),
            "longer than the file",
        ),
        // An offset that wraps around 2^64 once read the header as weights.
        (
            "wrap",
            raw_gguf((0, &[]), (1, &embd(u64::MAX - 31)), 1024),
            "lies outside the file",
        ),
        (
            "huge",
            raw_gguf(
                (0, &[]),
                (
                    1,
                    &tensor_info(
                        "token_embd.weight",
                        &[1 << 32, 1 << 32, 1 << 10, 64],
                        F32,
                        0,
                    ),
                ),
                64,
            ),
            "overflow",
        ),
        (
            "twice",
            raw_gguf((0, &[]), (2, &twice), 2048),
            "listed twice",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let err = load_model(&path, &ndarray_device())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{name}.gguf")) && err.contains(needle),
            "{name}: {err}"
        );
    }
}

/// Fuzz target (fixed case budget, see `tests/fuzz.rs`): a valid Q8_0 model with bytes of its
/// header or data changed, or cut short, loads or is refused, dequantized or kept packed
/// (`--quantize`); it never panics or aborts.
#[test]
fn mutated_gguf_files_load_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), Variant::Q8_0);
    let path = dir.path().join("model.gguf");
    let original = std::fs::read(&path).unwrap();
    // The header ends after the last tensor info (name "...weight", type and offset).
    let header = original.windows(6).rposition(|w| w == b"weight").unwrap() + 18;
    let device = ndarray_device();
    fuzz_runner(192)
        .run(&byte_edits(), |edits| {
            std::fs::write(&path, mutate(&original, header, &edits)).unwrap();
            let _ = load_model(&path, &device);
            let packed = BaseFormat {
                quantize: Some(PackFormat::Q8),
                dtype: None,
            };
            let _ = load_model_as(&path, &device, packed);
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_gguf_model_saves_as_a_hugging_face_folder_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), Variant::Q8_0);
    let device = ndarray_device();
    let loaded = load_model(&dir.path().join("model.gguf"), &device).unwrap();
    let out = dir.path().join("exported");
    peft_models::save_hf_folder(&loaded, &out).unwrap();
    let mask = Expected::load("llama-base").i64("attention_mask");
    let err = max_abs_diff_masked(
        &logits_of(&out),
        &logits_of(&dir.path().join("model.gguf")),
        &mask.values,
        384,
    );
    assert!(err <= 1e-6, "{err:e}");
    let reloaded = load_model(&out, &device).unwrap();
    let text = "Hello world, 123!";
    assert_eq!(
        reloaded.tokenizer().unwrap().encode(text, true).unwrap(),
        loaded.tokenizer().unwrap().encode(text, true).unwrap()
    );
    assert_eq!(reloaded.eos_token_ids, vec![0]);
}

/// The logits of the model at `path` loaded with its linear weights packed as `format`
/// blocks: every projection, and with a `tied` head the embedding too.
fn packed_logits(path: &Path, format: PackFormat, tied: bool) -> Vec<f32> {
    let device = ndarray_device();
    let expected = Expected::load("llama-base");
    let format = BaseFormat {
        quantize: Some(format),
        dtype: None,
    };
    let loaded = load_model_as(path, &device, format).unwrap();
    let projections = loaded.model.projections();
    assert!(projections.iter().all(|(_, p)| p.base.is_packed()));
    // A tied head and the embedding read one packed table; an untied embedding stays f32.
    let embedding_packed = loaded.model.token_embedding().dense().is_none();
    assert_eq!(embedding_packed, tied, "{}", path.display());
    to_vec(loaded.model.forward(
        int_tensor(&expected.i64("input_ids"), &device),
        Some(&int_tensor(&expected.i64("attention_mask"), &device)),
        None,
    ))
}

/// QLoRA's base: a GGUF's Q4_0, Q4_1 and Q8_0 blocks kept packed on the device give the
/// logits of the same file dequantized to f32 at load (the blocks expand exactly; 1e-5 allows
/// for the order of the sums). An f32 checkpoint quantized as it loads lands within the error
/// of the same quantization written by llama.cpp's reference quantizer.
#[test]
fn packed_gguf_blocks_give_the_logits_of_the_dequantized_model() {
    let mask = Expected::load("llama-base").i64("attention_mask");
    let reference = logits_of(&case_dir("llama-base").join("base"));
    let mut gguf_error = BTreeMap::new();
    for (variant, name, format) in [
        (Variant::Q4_0, "Q4_0", PackFormat::Q4),
        (Variant::Q4_1, "Q4_1", PackFormat::Q4),
        (Variant::Q8_0, "Q8_0", PackFormat::Q8),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_case(dir.path(), variant);
        let path = dir.path().join("model.gguf");
        let dense = logits_of(&path);
        let packed = packed_logits(&path, format, false);
        let err = max_abs_diff_masked(&packed, &dense, &mask.values, 384);
        let own = max_abs_diff_masked(&dense, &reference, &mask.values, 384);
        eprintln!("{name}: packed vs dequantized {err:e}; dequantized vs f32 {own:e}");
        assert!(err <= 1e-5, "{name}: packed logits differ by {err:e}");
        gguf_error.insert(format!("{format:?}"), own);
    }
    // A head tied to the embedding: one packed table for both (8-bit codes, as the rest here).
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), Variant::Tied);
    let path = dir.path().join("model.gguf");
    let tied = max_abs_diff_masked(
        &packed_logits(&path, PackFormat::Q8, true),
        &logits_of(&path),
        &mask.values,
        384,
    );
    eprintln!("tied F32 GGUF packed: {tied:e} from its f32 logits");
    assert!(tied > 0.0 && tied <= 2.0 * gguf_error["Q8"], "{tied:e}");
    for format in [PackFormat::Q4, PackFormat::Q8] {
        let packed = packed_logits(&case_dir("llama-base").join("base"), format, false);
        let err = max_abs_diff_masked(&packed, &reference, &mask.values, 384);
        let llama_cpp = gguf_error[&format!("{format:?}")];
        eprintln!(
            "f32 checkpoint quantized to {format:?}: {err:e} from f32 (llama.cpp's: {llama_cpp:e})"
        );
        assert!(err > 0.0 && err <= 2.0 * llama_cpp, "{format:?}: {err:e}");
    }
}

/// One step's loss and the LoRA fixture adapter's gradients (by parameter id) on the model
/// at `path`, packed as `quantize` says; a packed base trains layer by layer, as `train` runs
/// it.
fn lora_step(path: &Path, quantize: Option<PackFormat>) -> (f32, BTreeMap<String, Vec<f32>>) {
    let device = ndarray_device().autodiff();
    let format = BaseFormat {
        quantize,
        dtype: None,
    };
    let mut loaded = load_model_as(path, &device, format).unwrap();
    let dir = case_dir("llama-lora").join("adapter");
    let config = load_adapter(&mut loaded.model, "default", &dir).unwrap();
    let trained = Trained::Adapter {
        name: "default".into(),
        config: Box::new(config),
    };
    let model = TrainableLm::new(loaded.model, trained)
        .with_gradient_checkpointing(quantize.is_some(), 0)
        .unwrap();
    let rates = learning_rates(WarmupSchedule::new(1e-3, 0, 1, Schedule::Constant, 0), None);
    let mut learner = Learner::new(model, adamw(0.0).init(), rates);
    let batch = fixture_batch("llama-lora", &device);
    let step = step_gradients(&mut learner, [batch], 0.0).unwrap();
    let grads = gradients_by_id(&learner.model(), step.gradients());
    let grads = grads.into_iter().map(|(id, (_, g))| (id, g)).collect();
    (to_vec(step.loss.clone())[0], grads)
}

/// QLoRA's gradients: LoRA on a packed Q4_1 base, trained layer by layer with each layer's
/// weights expanded only while it runs, gives the loss and adapter gradients of LoRA on the
/// same file dequantized to f32 and trained the ordinary way (1e-5, relative L2).
#[test]
fn qlora_gives_the_gradients_of_lora_on_the_dequantized_base() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), Variant::Q4_1);
    let path = dir.path().join("model.gguf");
    let (dense_loss, dense) = lora_step(&path, None);
    let (loss, packed) = lora_step(&path, Some(PackFormat::Q4));
    assert!(
        (loss - dense_loss).abs() <= 1e-5 * dense_loss,
        "{loss} vs {dense_loss}"
    );
    assert!(!dense.is_empty());
    assert_eq!(
        packed.keys().collect::<Vec<_>>(),
        dense.keys().collect::<Vec<_>>()
    );
    let worst = dense
        .iter()
        .map(|(id, want)| relative_l2(&packed[id], want))
        .fold(0.0f32, f32::max);
    eprintln!("QLoRA vs LoRA on the dequantized base: worst relative L2 {worst:e}");
    assert!(worst <= 1e-5, "{worst:e}");
}

/// `train --quantize q4` on a Q4_1 GGUF: the loss falls, the saved adapter is an ordinary
/// PEFT LoRA adapter that reloads onto the dequantized base to the logits training ended
/// with, and merging into the packed base is refused by name.
#[test]
fn qlora_training_lowers_the_loss_and_its_adapter_reloads_onto_the_dequantized_base() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), Variant::Q4_1);
    let path = dir.path().join("model.gguf");
    let mut config = reversal_config(dir.path());
    config.model.path = Some(path.clone());
    config.model.quantize = Some(peft_train::config::Quantize::Q4);
    config.training.max_steps = Some(30);
    let device = ndarray_device();
    let mut summary = peft_train::train(&config, &device, false).unwrap();
    let losses = logged_losses(&dir.path().join("run"));
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("QLoRA loss {first} -> {last}");
    assert!(
        last <= 0.2 * first,
        "loss fell from {first} to {last}, less than 80%"
    );

    let logits = |model: &peft_models::CausalLm| {
        let expected = Expected::load("llama-base");
        to_vec(model.forward(
            int_tensor(&expected.i64("input_ids"), &device),
            Some(&int_tensor(&expected.i64("attention_mask"), &device)),
            None,
        ))
    };
    let mut dense = load_model(&path, &device).unwrap();
    load_adapter(&mut dense.model, "default", &summary.final_adapter).unwrap();
    let (trained, reloaded) = (logits(&summary.model), logits(&dense.model));
    let diff = trained
        .iter()
        .zip(&reloaded)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff <= 1e-5,
        "reloaded onto the dequantized base: logits differ by {diff:e}"
    );

    let err = peft_core::merge_adapter(&mut summary.model, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--quantize"), "{err}");
}

/// GPT-2 quantized as it loads (`--quantize q8`): its Conv1D weights (stored `[in, out]`) and
/// its embedding with the head tied to it are packed, and the logits stay within 8-bit
/// quantization error of the f32 model's (measured 6.7e-3 of the logits' range).
#[test]
fn gpt2_packs_its_conv1d_weights_and_tied_table_within_q8_error() {
    let device = ndarray_device();
    let expected = Expected::load("gpt2-base");
    let mask = expected.i64("attention_mask");
    let logits = |format: BaseFormat| {
        let path = case_dir("gpt2-base").join("base");
        let loaded = load_model_as(&path, &device, format).unwrap();
        let packed = loaded
            .model
            .projections()
            .iter()
            .all(|(_, p)| p.base.is_packed());
        let logits = to_vec(loaded.model.forward(
            int_tensor(&expected.i64("input_ids"), &device),
            Some(&int_tensor(&mask, &device)),
            None,
        ));
        (
            packed,
            loaded.model.token_embedding().dense().is_none(),
            logits,
        )
    };
    let (_, _, dense) = logits(BaseFormat::default());
    let (all_packed, table_packed, packed) = logits(BaseFormat {
        quantize: Some(PackFormat::Q8),
        dtype: None,
    });
    assert!(all_packed && table_packed);
    let vocab = dense.len() / mask.values.len();
    let range = dense.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff_masked(&packed, &dense, &mask.values, vocab) / range;
    eprintln!("GPT-2 packed in 8 bits: {err:e} of the logits' range from f32");
    assert!(err > 0.0 && err <= 2e-2, "{err:e}");
}
