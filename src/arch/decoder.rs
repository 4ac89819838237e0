//! Names and shapes of a Llama-like decoder's tensors as functions of its typed config, from
//! per-family data ([`Decoder`], in each [`Family`]). The trainer's loader, the importer, plans
//! made from a config.json alone and the fixture generators all take their tensor lists here.

use std::path::Path;

use super::config::ModelConfig;
use super::families::Family;
use crate::error::{Error, Result};

/// Whether an optional part of a decoder is present.
#[derive(Debug, Clone, Copy)]
pub enum When {
    Never,
    Always,
    /// When `attention_bias` is true in config.json.
    AttentionBias,
    /// When `mlp_bias` is true in config.json.
    MlpBias,
    /// For these `model_type`s of the family.
    ModelTypes(&'static [&'static str]),
}

impl When {
    fn holds(self, c: &ModelConfig) -> bool {
        match self {
            When::Never => false,
            When::Always => true,
            When::AttentionBias => c.attention_bias == Some(true),
            When::MlpBias => c.mlp_bias == Some(true),
            When::ModelTypes(t) => t.contains(&c.model_type()),
        }
    }
}

/// How a family's decoder is built, as data.
#[derive(Debug)]
pub struct Decoder {
    /// One fused `self_attn.qkv_proj` instead of q, k and v (Phi-3).
    pub fused_qkv: bool,
    /// One fused `mlp.gate_up_proj` instead of gate and up (Phi-3).
    pub fused_gate_up: bool,
    /// Biases of q, k and v.
    pub qkv_bias: When,
    /// Bias of o.
    pub o_bias: When,
    /// Biases of gate, up and down.
    pub mlp_bias: When,
    /// Per-head RMS norms of q and k (`[head_dim]`).
    pub qk_norm: When,
    /// Norms before and after the feed-forward block (Gemma 2 and 3).
    pub ffn_norms: When,
    /// `tie_word_embeddings` when config.json does not say.
    pub tied_default: bool,
    /// `hft run` trains this family: its model has exactly these tensors.
    pub trainable: bool,
}

/// Parameters a config may describe: five times today's largest published models.
const MAX_PARAMS: u128 = 10_000_000_000_000;

/// Every tensor of a decoder, in the order checkpoints list them: embeddings, each layer
/// (attention norm, attention with each bias beside its matrix, feed-forward norm, feed-forward),
/// final norm, head. `path` names the config in errors.
pub fn tensors(family: &Family, c: &ModelConfig, path: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    let d = family.decoder.ok_or_else(|| {
        Error::input(
            path,
            format!(
                "tensor shapes follow from a config.json alone for {} models, not for family \
                 {}; give the checkpoint instead",
                decoder_families().join(", "),
                family.name
            ),
        )
    })?;
    c.check_sizes(path)?;
    let need = |key: &str, v: Option<usize>| c.need(path, key, v);
    let h = need("hidden_size", c.hidden)?;
    let layers = need("num_hidden_layers", c.layers)?;
    let heads = need("num_attention_heads", c.heads)?;
    let inter = need("intermediate_size", c.intermediate)?;
    let vocab = need("vocab_size", c.vocab)?;
    if heads == 0 {
        return Err(Error::input(path, "config.json has num_attention_heads 0"));
    }
    let kv_heads = c.kv_heads.unwrap_or(heads);
    let hd = c.head_dim.unwrap_or(h / heads);
    let too_big = || Error::input(path, "config.json sizes overflow: not a real model");
    let q = heads.checked_mul(hd).ok_or_else(too_big)?;
    let kv = kv_heads.checked_mul(hd).ok_or_else(too_big)?;
    let tied = c.tied.unwrap_or(d.tied_default);
    let mut t: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        let mut add = |n: &str, s: Vec<usize>| t.push((format!("{p}{n}"), s));
        add("input_layernorm.weight", vec![h]);
        if d.fused_qkv {
            add("self_attn.qkv_proj.weight", vec![q + 2 * kv, h]);
        } else {
            for (m, rows) in [("q", q), ("k", kv), ("v", kv)] {
                add(&format!("self_attn.{m}_proj.weight"), vec![rows, h]);
                if d.qkv_bias.holds(c) {
                    add(&format!("self_attn.{m}_proj.bias"), vec![rows]);
                }
            }
        }
        if d.qk_norm.holds(c) {
            add("self_attn.q_norm.weight", vec![hd]);
            add("self_attn.k_norm.weight", vec![hd]);
        }
        add("self_attn.o_proj.weight", vec![h, q]);
        if d.o_bias.holds(c) {
            add("self_attn.o_proj.bias", vec![h]);
        }
        add("post_attention_layernorm.weight", vec![h]);
        if d.ffn_norms.holds(c) {
            add("pre_feedforward_layernorm.weight", vec![h]);
            add("post_feedforward_layernorm.weight", vec![h]);
        }
        let mlp_bias = d.mlp_bias.holds(c);
        if d.fused_gate_up {
            add("mlp.gate_up_proj.weight", vec![2 * inter, h]);
        } else {
            for m in ["gate", "up"] {
                add(&format!("mlp.{m}_proj.weight"), vec![inter, h]);
                if mlp_bias {
                    add(&format!("mlp.{m}_proj.bias"), vec![inter]);
                }
            }
        }
        add("mlp.down_proj.weight", vec![h, inter]);
        if mlp_bias {
            add("mlp.down_proj.bias", vec![h]);
        }
    }
    t.push(("model.norm.weight".into(), vec![h]));
    if !tied {
        t.push(("lm_head.weight".into(), vec![vocab, h]));
    }
    // Sizes each within bounds can still multiply to more than any machine holds (and than
    // the counts downstream can add up): refuse above 10^13 parameters.
    let total = t.iter().try_fold(0u128, |acc, (_, shape)| {
        let n = shape.iter().map(|&d| d as u128).product::<u128>();
        (acc + n <= MAX_PARAMS).then_some(acc + n)
    });
    if total.is_none() {
        return Err(Error::input(
            path,
            "config.json sizes add up to more than 10^13 parameters: not a real model",
        ));
    }
    Ok(t)
}

/// Names of the families whose shapes follow from a config alone.
pub fn decoder_families() -> Vec<&'static str> {
    super::FAMILIES
        .iter()
        .filter(|f| f.decoder.is_some())
        .map(|f| f.name)
        .collect()
}

/// Names of the families `hft run` trains.
pub fn trainable_families() -> Vec<&'static str> {
    super::FAMILIES
        .iter()
        .filter(|f| f.decoder.is_some_and(|d| d.trainable))
        .map(|f| f.name)
        .collect()
}

/// The family `model_type` names, if it has one.
pub fn family_of(model_type: &str) -> Option<&'static Family> {
    super::FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_types.contains(&model_type))
}
