//! `tokenizer.json` (and `tokenizer_config.json`) from a GGUF's embedded vocabulary.
//!
//! Why not candle's `TokenizerFromGguf` bridge: it builds a `tokenizers` 0.23 object, a second
//! version of the crate next to the one `hft` uses, and it maps every pre-tokenizer it does not
//! know (SmolLM2's `smollm` among them) to GPT-2's byte-level default *with* a prefix space, which
//! tokenises differently from the model's own tokenizer. Writing the JSON ourselves keeps one
//! `tokenizers`, and the pre-tokenizer is chosen from `tokenizer.ggml.pre` to match llama.cpp's
//! (and the original Hugging Face) splitting; an unknown one is an error, never a guess.
//!
//! The file is written in the `1.0` layout that transformers and Python `tokenizers` read;
//! `hft`'s own reader canonicalises it (see [`load`]).

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Map};

use super::{meta_str, meta_usize, Hparams};
use std::path::Path;

use crate::error::{Error, Result};

/// The files written next to the weights.
pub struct Built {
    pub tokenizer: serde_json::Value,
    pub config: serde_json::Value,
    pub special_tokens_map: serde_json::Value,
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Pre-tokenizer names (`tokenizer.ggml.pre`) this import reproduces.
pub const SUPPORTED_PRE: [&str; 7] = [
    "smollm",
    "gpt2",
    "default",
    "llama-bpe",
    "llama3",
    "smaug-bpe",
    "qwen2",
];

fn byte_level(prefix: bool, trim: bool, regex: bool) -> serde_json::Value {
    json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": trim, "use_regex": regex})
}

fn split(regex: &str) -> serde_json::Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// (normalizer, pre_tokenizer) for a llama.cpp pre-tokenizer name.
fn pipeline(pre: &str) -> Option<(serde_json::Value, serde_json::Value)> {
    Some(match pre {
        // llama.cpp: `\p{N}` first, then the GPT-2 regex; Hugging Face spells it as below.
        "smollm" => (
            json!(null),
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(false, true, true),
            ]}),
        ),
        "gpt2" | "default" => (json!(null), byte_level(false, true, true)),
        "llama-bpe" | "llama3" | "smaug-bpe" => (
            json!(null),
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false, true, false)]}),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false, false, false)]}),
        ),
        _ => return None,
    })
}

fn strings(c: &Content, key: &str, path: &Path) -> Result<Vec<String>> {
    let bad = |m: String| Error::input(path, m);
    match c.metadata.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(bad(format!("`{key}` holds a non-string"))),
            })
            .collect(),
        Some(_) => Err(bad(format!("`{key}` is not an array"))),
        None => Err(bad(format!("GGUF metadata lacks `{key}`"))),
    }
}

/// Builds the tokenizer files from the GGUF metadata; `Err` is a message about the file.
pub fn build(c: &Content, h: &Hparams, path: &Path) -> Result<Built> {
    let bad = |m: String| Error::input(path, m);
    let model = meta_str(c, "tokenizer.ggml.model").ok_or_else(|| {
        bad(
            "GGUF metadata lacks `tokenizer.ggml.model` (option `no-tokenizer` imports the \
             weights alone)"
                .into(),
        )
    })?;
    if model != "gpt2" {
        return Err(bad(format!(
            "tokenizer model `{model}` is not supported (hft import writes byte-level BPE, \
             `gpt2`, tokenizers); option `no-tokenizer` imports the weights alone"
        )));
    }
    let pre = meta_str(c, "tokenizer.ggml.pre").unwrap_or("gpt2");
    let (normalizer, pre_tokenizer) = pipeline(pre).ok_or_else(|| {
        bad(format!(
            "tokenizer pre-tokenizer `{pre}` is not supported (supported: {}); option \
             `no-tokenizer` imports the weights alone",
            SUPPORTED_PRE.join(", ")
        ))
    })?;
    let tokens = strings(c, "tokenizer.ggml.tokens", path)?;
    if tokens.len() != h.vocab {
        return Err(bad(format!(
            "the vocabulary has {} tokens, the model {} embedding rows",
            tokens.len(),
            h.vocab
        )));
    }
    let merges = strings(c, "tokenizer.ggml.merges", path)?;
    let types: Vec<u32> = match c.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => *x as u32,
                Value::U32(x) => *x,
                Value::I8(x) => *x as u32,
                Value::U8(x) => *x as u32,
                _ => 1,
            })
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.clone(), json!(i)).is_some() {
            return Err(bad(format!("token `{t}` appears twice in the vocabulary")));
        }
    }
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| bad(format!("merge `{m}` is not two tokens")))
        })
        .collect::<std::result::Result<_, _>>()?;
    // llama.cpp token types: 2 unknown, 3 control, 4 user-defined. Control and unknown tokens
    // are special (skipped when decoding); user-defined ones are plain added tokens.
    let mut added = Vec::new();
    let mut decoder_table = Map::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        if matches!(ty, 2..=4) {
            let special = *ty != 4;
            let entry = json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": !special, "special": special});
            let mut d = entry.as_object().expect("object").clone();
            d.remove("id");
            decoder_table.insert(i.to_string(), serde_json::Value::Object(d));
            added.push(entry);
        }
    }
    let id_tok = |key: &str| meta_usize(c, key).and_then(|i| tokens.get(i).cloned());
    let bos = h.bos.and_then(|i| tokens.get(i as usize).cloned());
    let eos = h.eos.and_then(|i| tokens.get(i as usize).cloned());
    let pad = h.pad.and_then(|i| tokens.get(i as usize).cloned());
    let unk =
        id_tok("tokenizer.ggml.unknown_token_id").or_else(|| id_tok("tokenizer.ggml.unk_token_id"));
    let flag = |k: &str| matches!(c.metadata.get(k), Some(Value::Bool(true)));
    let add_bos = flag("tokenizer.ggml.add_bos_token") && bos.is_some();
    let post_processor = match (&bos, add_bos) {
        (Some(b), true) => {
            let id = h.bos.expect("bos token");
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b.clone(): {"id": b, "ids": [id], "tokens": [b]}}})
        }
        _ => byte_level(true, false, true),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true, true, true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    });
    let mut cfg = Map::new();
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_prefix_space".into(), json!(false));
    cfg.insert("added_tokens_decoder".into(), json!(decoder_table));
    let mut map = Map::new();
    for (k, v) in [
        ("bos_token", &bos),
        ("eos_token", &eos),
        ("pad_token", &pad),
        ("unk_token", &unk),
    ] {
        if let Some(v) = v {
            cfg.insert(k.into(), json!(v));
            map.insert(k.into(), json!(v));
        }
    }
    if let Some(t) = meta_str(c, "tokenizer.chat_template") {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    cfg.insert("model_max_length".into(), json!(h.context));
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Built {
        tokenizer,
        config: serde_json::Value::Object(cfg),
        special_tokens_map: serde_json::Value::Object(map),
    })
}
