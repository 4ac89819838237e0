//! The one reader of `config.json`. Every field is optional here (the layout of a model with an
//! unusual config must still be readable); the consumers that need a field ask for it with
//! [`ModelConfig::need`], which names the file and the key when it is missing.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The sizes and flags of a model that hft uses, under their usual keys (and the alternatives
/// GPT-2, GPT-NeoX and Falcon use).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelConfig {
    pub model_type: Option<String>,
    /// `architectures[0]` (`LlamaForCausalLM` ...).
    pub architecture: Option<String>,
    pub hidden: Option<usize>,
    pub intermediate: Option<usize>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    /// `head_dim`, else hidden / heads.
    pub head_dim: Option<usize>,
    pub vocab: Option<usize>,
    pub eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub max_positions: Option<usize>,
    pub tied: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Falcon: `new_decoder_architecture` / `multi_query`.
    pub falcon_new_arch: bool,
    pub falcon_multi_query: bool,
    /// `head_dim` was in the file (not derived from hidden / heads).
    pub explicit_head_dim: bool,
    /// Size keys present with a value that is not a whole number (`-1`, `4.5`, `"4"`), as
    /// `key` = value: reported by [`ModelConfig::check_sizes`] instead of "missing".
    pub invalid: Vec<String>,
}

/// JSON keys of each field, the first present wins.
pub mod keys {
    pub const HIDDEN: &[&str] = &["hidden_size", "n_embd", "d_model"];
    pub const HEADS: &[&str] = &["num_attention_heads", "n_head", "num_heads"];
    pub const KV_HEADS: &[&str] = &["num_key_value_heads", "num_kv_heads", "n_head_kv"];
    pub const LAYERS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers"];
    pub const INTERMEDIATE: &[&str] = &["intermediate_size"];
    pub const VOCAB: &[&str] = &["vocab_size"];
    pub const HEAD_DIM: &[&str] = &["head_dim"];
    pub const MAX_POSITIONS: &[&str] = &["max_position_embeddings"];
}

impl ModelConfig {
    pub fn from_json(v: &Value) -> ModelConfig {
        let get = |ks: &[&str]| {
            ks.iter()
                .find_map(|k| v.get(*k).and_then(Value::as_u64))
                .and_then(|x| usize::try_from(x).ok())
        };
        let float = |k: &str| v.get(k).and_then(Value::as_f64);
        let flag = |k: &str| v.get(k).and_then(Value::as_bool);
        let token = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|x| u32::try_from(x).ok())
        };
        let hidden = get(keys::HIDDEN);
        let heads = get(keys::HEADS);
        let head_dim = get(keys::HEAD_DIM).or(match (hidden, heads) {
            (Some(h), Some(n)) if n > 0 => Some(h / n),
            _ => None,
        });
        ModelConfig {
            model_type: v
                .get("model_type")
                .and_then(Value::as_str)
                .map(str::to_string),
            architecture: v
                .get("architectures")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .map(str::to_string),
            hidden,
            intermediate: get(keys::INTERMEDIATE),
            layers: get(keys::LAYERS),
            heads,
            kv_heads: get(keys::KV_HEADS),
            head_dim,
            vocab: get(keys::VOCAB),
            eps: float("rms_norm_eps"),
            rope_theta: float("rope_theta"),
            max_positions: get(keys::MAX_POSITIONS),
            tied: flag("tie_word_embeddings"),
            attention_bias: flag("attention_bias"),
            mlp_bias: flag("mlp_bias"),
            bos: token("bos_token_id"),
            eos: token("eos_token_id"),
            falcon_new_arch: flag("new_decoder_architecture").unwrap_or(false),
            falcon_multi_query: flag("multi_query").unwrap_or(false),
            explicit_head_dim: get(keys::HEAD_DIM).is_some(),
            invalid: [
                keys::HIDDEN,
                keys::HEADS,
                keys::KV_HEADS,
                keys::LAYERS,
                keys::INTERMEDIATE,
                keys::VOCAB,
                keys::HEAD_DIM,
                keys::MAX_POSITIONS,
            ]
            .iter()
            .filter_map(|ks| ks.iter().find_map(|k| v.get(*k).map(|x| (k, x))))
            .filter(|(_, x)| !x.is_null() && x.as_u64().is_none_or(|n| usize::try_from(n).is_err()))
            .map(|(k, x)| format!("`{k}` = {x}"))
            .collect(),
        }
    }

    /// A field the caller cannot do without: its value, or an error naming `path` and `key`.
    pub fn need<T: Copy>(&self, path: &Path, key: &str, v: Option<T>) -> Result<T> {
        v.ok_or_else(|| {
            match self
                .invalid
                .iter()
                .find(|b| b.starts_with(&format!("`{key}`")))
            {
                Some(bad) => Error::input(path, format!("{bad} is not a whole number")),
                None => Error::input(path, format!("config.json has no `{key}`")),
            }
        })
    }

    /// Refuses sizes no real model has, before anything is allocated from them: each at least
    /// 1 and at most a bound far above today's largest models, heads that divide the hidden
    /// size (when `head_dim` is not given) and key/value heads that divide the heads.
    pub fn check_sizes(&self, path: &Path) -> Result<()> {
        if let Some(bad) = self.invalid.first() {
            return Err(Error::input(path, format!("{bad} is not a whole number")));
        }
        let bounds: [(&str, Option<usize>, usize); 7] = [
            ("hidden_size", self.hidden, 1 << 20),
            ("intermediate_size", self.intermediate, 1 << 22),
            ("num_hidden_layers", self.layers, 4096),
            ("num_attention_heads", self.heads, 1 << 14),
            ("num_key_value_heads", self.kv_heads, 1 << 14),
            ("head_dim", self.head_dim, 1 << 16),
            ("vocab_size", self.vocab, 1 << 24),
        ];
        for (key, v, max) in bounds {
            match v {
                Some(0) => {
                    return Err(Error::input(
                        path,
                        format!("`{key}` is 0; it must be at least 1"),
                    ))
                }
                Some(v) if v > max => {
                    return Err(Error::input(
                        path,
                        format!(
                            "`{key}` is {v}, more than the {max} hft accepts: not a real model"
                        ),
                    ))
                }
                _ => {}
            }
        }
        if let (Some(h), Some(n)) = (self.hidden, self.heads) {
            if !self.explicit_head_dim && h % n != 0 {
                return Err(Error::input(
                    path,
                    format!(
                        "`hidden_size` {h} is not a multiple of `num_attention_heads` {n} (and no \
                         `head_dim` says otherwise)"
                    ),
                ));
            }
        }
        if let (Some(n), Some(k)) = (self.heads, self.kv_heads) {
            if k > n || n % k != 0 {
                return Err(Error::input(
                    path,
                    format!("`num_key_value_heads` {k} does not divide `num_attention_heads` {n}"),
                ));
            }
        }
        Ok(())
    }

    /// `model_type`, or "" when absent.
    pub fn model_type(&self) -> &str {
        self.model_type.as_deref().unwrap_or("")
    }
}
