use super::*;
use serde_json::json;
use Category::*;

fn layout(model_type: &str) -> Layout {
    Layout::detect(Some(&json!({"model_type": model_type})), [])
}

fn check(l: &Layout, cases: &[(&str, Option<usize>, Category)]) {
    for (name, layer, cat) in cases {
        let r = l.role(name);
        assert_eq!(
            (r.layer, r.category),
            (*layer, *cat),
            "{} in {}",
            name,
            l.family_name()
        );
    }
}

#[test]
fn llama_mistral_qwen2_names() {
    for mt in ["llama", "mistral", "qwen2"] {
        let l = layout(mt);
        check(
            &l,
            &[
                ("model.embed_tokens.weight", None, Embed),
                ("model.layers.0.self_attn.q_proj.weight", Some(0), AttnQ),
                ("model.layers.11.self_attn.k_proj.weight", Some(11), AttnK),
                ("model.layers.2.self_attn.v_proj.weight", Some(2), AttnV),
                ("model.layers.2.self_attn.o_proj.weight", Some(2), AttnO),
                ("model.layers.3.mlp.gate_proj.weight", Some(3), FfnGate),
                ("model.layers.3.mlp.up_proj.weight", Some(3), FfnUp),
                ("model.layers.3.mlp.down_proj.weight", Some(3), FfnDown),
                ("model.layers.3.input_layernorm.weight", Some(3), Norm),
                (
                    "model.layers.3.post_attention_layernorm.weight",
                    Some(3),
                    Norm,
                ),
                ("model.layers.3.self_attn.q_proj.bias", Some(3), Bias),
                (
                    "model.layers.3.self_attn.rotary_emb.inv_freq",
                    Some(3),
                    Buffer,
                ),
                ("model.norm.weight", None, FinalNorm),
                ("lm_head.weight", None, LmHead),
            ],
        );
        assert_eq!(
            l.role("model.layers.3.self_attn.v_proj.bias").owner,
            Some(AttnV)
        );
    }
}

#[test]
fn qwen3_and_gemma_norms() {
    let q = layout("qwen3");
    check(
        &q,
        &[
            ("model.layers.1.self_attn.q_norm.weight", Some(1), AttnNorm),
            ("model.layers.1.self_attn.k_norm.weight", Some(1), AttnNorm),
        ],
    );
    assert_eq!(
        q.role("model.layers.1.self_attn.k_norm.weight").owner,
        Some(AttnK)
    );
    let g = layout("gemma2");
    check(
        &g,
        &[
            (
                "model.layers.4.pre_feedforward_layernorm.weight",
                Some(4),
                Norm,
            ),
            (
                "model.layers.4.post_feedforward_layernorm.weight",
                Some(4),
                Norm,
            ),
            ("model.layers.4.input_layernorm.weight", Some(4), Norm),
            ("model.norm.weight", None, FinalNorm),
        ],
    );
}

#[test]
fn phi3_fused_split_by_config() {
    let cfg = json!({"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 8,
                     "num_key_value_heads": 2});
    let l = Layout::detect(Some(&cfg), []);
    check(
        &l,
        &[
            ("model.layers.0.self_attn.qkv_proj.weight", Some(0), AttnQkv),
            ("model.layers.0.mlp.gate_up_proj.weight", Some(0), FfnGateUp),
            ("model.layers.0.mlp.down_proj.weight", Some(0), FfnDown),
        ],
    );
    // head_dim 8: q 64 rows, k and v 16 rows each.
    let parts = l
        .parts("model.layers.0.self_attn.qkv_proj.weight", &[96, 64])
        .unwrap();
    assert_eq!(parts[0].ranges, vec![(0, 64)]);
    assert_eq!(parts[1].ranges, vec![(64, 80)]);
    assert_eq!(parts[2].ranges, vec![(80, 96)]);
    let gu = l
        .parts("model.layers.0.mlp.gate_up_proj.weight", &[256, 64])
        .unwrap();
    assert_eq!(
        (gu[0].category, gu[0].ranges.clone()),
        (FfnGate, vec![(0, 128)])
    );
    assert!(l
        .parts("model.layers.0.self_attn.qkv_proj.weight", &[95, 64])
        .is_none());
    assert!(l
        .parts("model.layers.0.mlp.down_proj.weight", &[64, 128])
        .is_none());
}

#[test]
fn phi2_names() {
    check(
        &layout("phi"),
        &[
            ("model.layers.5.self_attn.dense.weight", Some(5), AttnO),
            ("model.layers.5.mlp.fc1.weight", Some(5), FfnIn),
            ("model.layers.5.mlp.fc2.bias", Some(5), Bias),
            ("model.final_layernorm.weight", None, FinalNorm),
            ("model.final_layernorm.bias", None, FinalNorm),
        ],
    );
}

#[test]
fn gpt2_with_and_without_prefix() {
    let l = Layout::detect(None, ["h.0.attn.c_attn.weight", "wte.weight"]);
    assert_eq!(l.family_name(), "gpt2");
    for p in ["", "transformer."] {
        let n = |s: &str| format!("{p}{s}");
        check(
            &l,
            &[
                (&n("wte.weight"), None, Embed),
                (&n("wpe.weight"), None, PosEmbed),
                (&n("h.7.attn.c_attn.weight"), Some(7), AttnQkv),
                (&n("h.7.attn.c_attn.bias"), Some(7), Bias),
                (&n("h.7.attn.c_proj.weight"), Some(7), AttnO),
                (&n("h.7.mlp.c_fc.weight"), Some(7), FfnIn),
                (&n("h.7.mlp.c_proj.weight"), Some(7), FfnOut),
                (&n("h.7.ln_1.weight"), Some(7), Norm),
                (&n("h.7.ln_2.bias"), Some(7), Norm),
                (&n("h.7.attn.bias"), Some(7), Buffer),
                (&n("h.7.attn.masked_bias"), Some(7), Buffer),
                (&n("ln_f.weight"), None, FinalNorm),
            ],
        );
    }
    // Conv1D is [in, out]: the weight splits along its last axis, the bias along its only one.
    let w = l.parts("h.0.attn.c_attn.weight", &[16, 48]).unwrap();
    assert_eq!((w[1].axis, w[1].ranges.clone()), (1, vec![(16, 32)]));
    let b = l.parts("h.0.attn.c_attn.bias", &[48]).unwrap();
    assert_eq!((b[2].axis, b[2].ranges.clone()), (0, vec![(32, 48)]));
}

#[test]
fn gpt_neox_per_head_split() {
    let cfg = json!({"model_type": "gpt_neox", "hidden_size": 8, "num_attention_heads": 2});
    let l = Layout::detect(Some(&cfg), []);
    check(
        &l,
        &[
            ("gpt_neox.embed_in.weight", None, Embed),
            (
                "gpt_neox.layers.1.attention.query_key_value.weight",
                Some(1),
                AttnQkv,
            ),
            ("gpt_neox.layers.1.attention.dense.weight", Some(1), AttnO),
            ("gpt_neox.layers.1.mlp.dense_h_to_4h.weight", Some(1), FfnIn),
            (
                "gpt_neox.layers.1.mlp.dense_4h_to_h.weight",
                Some(1),
                FfnOut,
            ),
            ("gpt_neox.layers.1.attention.bias", Some(1), Buffer),
            ("gpt_neox.final_layer_norm.weight", None, FinalNorm),
            ("embed_out.weight", None, LmHead),
        ],
    );
    let p = l
        .parts(
            "gpt_neox.layers.0.attention.query_key_value.weight",
            &[24, 8],
        )
        .unwrap();
    assert_eq!(p[0].ranges, vec![(0, 4), (12, 16)]);
    assert_eq!(p[1].ranges, vec![(4, 8), (16, 20)]);
    assert_eq!(p[2].ranges, vec![(8, 12), (20, 24)]);
}

#[test]
fn falcon_grouped_split() {
    let cfg = json!({"model_type": "falcon", "hidden_size": 16, "num_attention_heads": 4,
                     "num_kv_heads": 2, "new_decoder_architecture": true});
    let l = Layout::detect(Some(&cfg), []);
    check(
        &l,
        &[
            ("transformer.word_embeddings.weight", None, Embed),
            (
                "transformer.h.0.self_attention.query_key_value.weight",
                Some(0),
                AttnQkv,
            ),
            (
                "transformer.h.0.self_attention.dense.weight",
                Some(0),
                AttnO,
            ),
            ("transformer.h.0.ln_attn.weight", Some(0), Norm),
            ("transformer.ln_f.weight", None, FinalNorm),
        ],
    );
    // head_dim 4, two groups of [q q k v].
    let p = l
        .parts(
            "transformer.h.0.self_attention.query_key_value.weight",
            &[32, 16],
        )
        .unwrap();
    assert_eq!(p[0].ranges, vec![(0, 8), (16, 24)]);
    assert_eq!(p[1].ranges, vec![(8, 12), (24, 28)]);
    assert_eq!(p[2].ranges, vec![(12, 16), (28, 32)]);
}

#[test]
fn detection_from_names_and_architectures() {
    let by_names = |names: &[&str]| Layout::detect(None, names.iter().copied()).family_name();
    assert_eq!(
        by_names(&[
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.gate_proj.weight"
        ]),
        "llama"
    );
    assert_eq!(
        by_names(&[
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.mlp.gate_proj.weight"
        ]),
        "qwen2"
    );
    assert_eq!(
        by_names(&["model.layers.0.self_attn.qkv_proj.weight"]),
        "phi3"
    );
    assert_eq!(
        by_names(&["gpt_neox.layers.0.attention.query_key_value.weight"]),
        "gpt_neox"
    );
    let arch = json!({"architectures": ["Qwen3ForCausalLM"]});
    assert_eq!(Layout::detect(Some(&arch), []).family_name(), "qwen3");
}

#[test]
fn unknown_names_still_get_a_layer() {
    let l = Layout::detect(None, ["foo.blocks.3.thing.weight"]);
    assert_eq!(l.family_name(), "unknown");
    for (n, layer) in [
        ("foo.blocks.3.thing.weight", Some(3)),
        ("x.layers.12.y.weight", Some(12)),
        ("h.4.z", Some(4)),
        ("encoder.weight", None),
    ] {
        let r = l.role(n);
        assert_eq!((r.layer, r.category), (layer, Other), "{n}");
    }
    // Known module names are still recognised through the fallback tables.
    assert_eq!(
        l.role("model.layers.0.self_attn.q_proj.weight").category,
        AttnQ
    );
}
