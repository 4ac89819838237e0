//! llama.cpp's tensor names: how a GGUF file of the `llama` (or `qwen3`) architecture names
//! each Hugging Face module. Data for the importer, beside the families' other naming tables.

/// Whole-model tensors: GGUF name stem, Hugging Face module.
pub const LLAMA_GLOBAL: &[(&str, &str)] = &[
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// Per-layer tensors (`blk.N.` + stem), Hugging Face module after `model.layers.N.`.
pub const LLAMA_LAYER: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The Hugging Face name of a GGUF tensor (`blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`), for a model of `layers` layers.
pub fn hf_name(gguf: &str, layers: usize) -> Option<String> {
    let (stem, param) = gguf.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    if let Some((_, hf)) = LLAMA_GLOBAL.iter().find(|(g, _)| *g == stem) {
        return Some(format!("{hf}.{param}"));
    }
    let (layer, stem) = stem.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= layers {
        return None;
    }
    let (_, hf) = LLAMA_LAYER.iter().find(|(g, _)| *g == stem)?;
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::hf_name;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight", 4).as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias", 4).as_deref(),
            Some("model.layers.0.self_attn.k_proj.bias")
        );
        assert_eq!(
            hf_name("output.weight", 4).as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(hf_name("blk.4.attn_q.weight", 4), None);
        assert_eq!(hf_name("blk.0.ffn_norm.bias.x", 4), None);
        assert_eq!(hf_name("rope_freqs.weight", 4), None);
    }
}
