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
    /// Mixture of experts: routed experts per sparse layer (`num_local_experts`,
    /// `num_experts`, `n_routed_experts`), their width, the shared expert's width
    /// (`shared_expert_intermediate_size`) or count (`n_shared_experts`, each
    /// `moe_intermediate_size` wide).
    pub experts: Option<usize>,
    /// The key `experts` came from, for messages.
    pub experts_key: &'static str,
    pub moe_intermediate: Option<usize>,
    pub shared_intermediate: Option<usize>,
    pub shared_experts: Option<usize>,
    /// Which layers are sparse: Qwen's `decoder_sparse_step` and `mlp_only_layers`,
    /// DeepSeek's `first_k_dense_replace` and `moe_layer_freq`.
    pub sparse_step: Option<usize>,
    pub mlp_only_layers: Vec<usize>,
    pub first_dense: Option<usize>,
    pub moe_layer_freq: Option<usize>,
    /// Multi-head latent attention (DeepSeek): `q_lora_rank` (absent or null: a plain
    /// `q_proj`), `kv_lora_rank` and the per-head widths.
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: Option<usize>,
    pub qk_nope_head_dim: Option<usize>,
    pub qk_rope_head_dim: Option<usize>,
    pub v_head_dim: Option<usize>,
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
    pub const EXPERTS: &[&str] = &["num_local_experts", "num_experts", "n_routed_experts"];
    pub const MOE_INTERMEDIATE: &[&str] = &["moe_intermediate_size"];
    pub const SHARED_INTERMEDIATE: &[&str] = &["shared_expert_intermediate_size"];
    pub const SHARED_EXPERTS: &[&str] = &["n_shared_experts"];
    pub const SPARSE_STEP: &[&str] = &["decoder_sparse_step"];
    pub const FIRST_DENSE: &[&str] = &["first_k_dense_replace"];
    pub const MOE_LAYER_FREQ: &[&str] = &["moe_layer_freq"];
    pub const Q_LORA_RANK: &[&str] = &["q_lora_rank"];
    pub const KV_LORA_RANK: &[&str] = &["kv_lora_rank"];
    pub const QK_NOPE_HEAD_DIM: &[&str] = &["qk_nope_head_dim"];
    pub const QK_ROPE_HEAD_DIM: &[&str] = &["qk_rope_head_dim"];
    pub const V_HEAD_DIM: &[&str] = &["v_head_dim"];

    /// The size keys checked for whole numbers.
    pub const SIZES: &[&[&str]] = &[
        HIDDEN,
        HEADS,
        KV_HEADS,
        LAYERS,
        INTERMEDIATE,
        VOCAB,
        HEAD_DIM,
        MAX_POSITIONS,
        EXPERTS,
        MOE_INTERMEDIATE,
        SHARED_INTERMEDIATE,
        SHARED_EXPERTS,
        SPARSE_STEP,
        FIRST_DENSE,
        MOE_LAYER_FREQ,
        Q_LORA_RANK,
        KV_LORA_RANK,
        QK_NOPE_HEAD_DIM,
        QK_ROPE_HEAD_DIM,
        V_HEAD_DIM,
    ];
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
            experts: get(keys::EXPERTS),
            experts_key: keys::EXPERTS
                .iter()
                .find(|k| v.get(**k).is_some())
                .copied()
                .unwrap_or("num_experts"),
            moe_intermediate: get(keys::MOE_INTERMEDIATE),
            shared_intermediate: get(keys::SHARED_INTERMEDIATE),
            shared_experts: get(keys::SHARED_EXPERTS),
            sparse_step: get(keys::SPARSE_STEP),
            mlp_only_layers: v
                .get("mlp_only_layers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_u64)
                        .filter_map(|x| usize::try_from(x).ok())
                        .collect()
                })
                .unwrap_or_default(),
            first_dense: get(keys::FIRST_DENSE),
            moe_layer_freq: get(keys::MOE_LAYER_FREQ),
            q_lora_rank: get(keys::Q_LORA_RANK),
            kv_lora_rank: get(keys::KV_LORA_RANK),
            qk_nope_head_dim: get(keys::QK_NOPE_HEAD_DIM),
            qk_rope_head_dim: get(keys::QK_ROPE_HEAD_DIM),
            v_head_dim: get(keys::V_HEAD_DIM),
            falcon_new_arch: flag("new_decoder_architecture").unwrap_or(false),
            falcon_multi_query: flag("multi_query").unwrap_or(false),
            explicit_head_dim: get(keys::HEAD_DIM).is_some(),
            invalid: keys::SIZES
                .iter()
                .filter_map(|ks| ks.iter().find_map(|k| v.get(*k).map(|x| (k, x))))
                .filter(|(_, x)| {
                    !x.is_null() && x.as_u64().is_none_or(|n| usize::try_from(n).is_err())
                })
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
        let bounds: [(&str, Option<usize>, usize); 16] = [
            ("hidden_size", self.hidden, 1 << 20),
            ("intermediate_size", self.intermediate, 1 << 22),
            ("num_hidden_layers", self.layers, 4096),
            ("num_attention_heads", self.heads, 1 << 14),
            ("num_key_value_heads", self.kv_heads, 1 << 14),
            ("head_dim", self.head_dim, 1 << 16),
            ("vocab_size", self.vocab, 1 << 24),
            (self.experts_key, self.experts, 1 << 14),
            ("moe_intermediate_size", self.moe_intermediate, 1 << 22),
            (
                "shared_expert_intermediate_size",
                self.shared_intermediate,
                1 << 22,
            ),
            ("decoder_sparse_step", self.sparse_step, 4096),
            ("moe_layer_freq", self.moe_layer_freq, 4096),
            ("kv_lora_rank", self.kv_lora_rank, 1 << 20),
            ("qk_nope_head_dim", self.qk_nope_head_dim, 1 << 16),
            ("qk_rope_head_dim", self.qk_rope_head_dim, 1 << 16),
            ("v_head_dim", self.v_head_dim, 1 << 16),
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
