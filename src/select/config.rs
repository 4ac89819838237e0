//! Tensor names and shapes computed from a `config.json` alone, so a plan can be made before
//! the weights are downloaded. Only the Llama-like families are covered: their names follow
//! from a handful of sizes, while other families have variants a config does not pin down.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::checkpoint::natural_cmp;
use crate::layout::Layout;

const COVERED: &str = "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, phi3";

/// Names and shapes (natural order) of the checkpoint a config describes.
pub fn shapes(path: &Path, config: &Value, layout: &Layout) -> Result<Vec<(String, Vec<usize>)>> {
    let family = layout.family_name();
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or(family);
    if !matches!(
        family,
        "llama" | "mistral" | "qwen2" | "qwen3" | "gemma" | "phi3"
    ) {
        return Err(Error::input(
            path,
            format!(
                "shapes can be computed from a config.json alone for {COVERED} models, not for \
                 `{model_type}` (family {family}); give the checkpoint instead"
            ),
        ));
    }
    let get = |k: &str| config.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let need =
        |k: &str| get(k).ok_or_else(|| Error::input(path, format!("config.json has no `{k}`")));
    let flag = |k: &str, default: bool| config.get(k).and_then(Value::as_bool).unwrap_or(default);
    let h = need("hidden_size")?;
    let layers = need("num_hidden_layers")?;
    let heads = need("num_attention_heads")?;
    let kv_heads = get("num_key_value_heads").unwrap_or(heads);
    let inter = need("intermediate_size")?;
    let vocab = need("vocab_size")?;
    if heads == 0 {
        return Err(Error::input(path, "config.json has num_attention_heads 0"));
    }
    let hd = get("head_dim").unwrap_or(h / heads);
    let (q, kv) = (heads * hd, kv_heads * hd);
    let gemma = family == "gemma";
    let four_norms = gemma && model_type != "gemma";
    let qk_norm = family == "qwen3" || model_type.starts_with("gemma3");
    let attn_bias = family == "qwen2" || flag("attention_bias", false);
    let o_bias = family != "qwen2" && flag("attention_bias", false);
    let mlp_bias = flag("mlp_bias", false);
    let tied = flag("tie_word_embeddings", gemma);

    let mut t: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        let mut add = |n: &str, s: Vec<usize>| t.push((format!("{p}{n}"), s));
        add("input_layernorm.weight", vec![h]);
        add("post_attention_layernorm.weight", vec![h]);
        if four_norms {
            add("pre_feedforward_layernorm.weight", vec![h]);
            add("post_feedforward_layernorm.weight", vec![h]);
        }
        if family == "phi3" {
            add("self_attn.qkv_proj.weight", vec![q + 2 * kv, h]);
            add("mlp.gate_up_proj.weight", vec![2 * inter, h]);
        } else {
            add("self_attn.q_proj.weight", vec![q, h]);
            add("self_attn.k_proj.weight", vec![kv, h]);
            add("self_attn.v_proj.weight", vec![kv, h]);
            if attn_bias {
                add("self_attn.q_proj.bias", vec![q]);
                add("self_attn.k_proj.bias", vec![kv]);
                add("self_attn.v_proj.bias", vec![kv]);
            }
            if qk_norm {
                add("self_attn.q_norm.weight", vec![hd]);
                add("self_attn.k_norm.weight", vec![hd]);
            }
            add("mlp.gate_proj.weight", vec![inter, h]);
            add("mlp.up_proj.weight", vec![inter, h]);
            if mlp_bias {
                add("mlp.gate_proj.bias", vec![inter]);
                add("mlp.up_proj.bias", vec![inter]);
            }
        }
        add("self_attn.o_proj.weight", vec![h, q]);
        if o_bias {
            add("self_attn.o_proj.bias", vec![h]);
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
    t.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    Ok(t)
}
