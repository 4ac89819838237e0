//! Mixture-of-experts layouts: roles of published names, the latent attention's split, and
//! shapes from published configs.

use super::*;
use serde_json::json;
use Category::*;

fn layout(model_type: &str) -> Layout {
    Layout::detect(Some(&json!({"model_type": model_type})), [])
}

fn expert_of(l: &Layout, name: &str) -> (Option<usize>, Category, Option<usize>) {
    let r = l.role(name);
    (r.layer, r.category, r.expert)
}

/// Names as the published checkpoints spell them (Mixtral-8x7B, Qwen1.5-MoE-A2.7B,
/// Qwen3-30B-A3B, DeepSeek-V3).
#[test]
fn moe_names_keep_ffn_categories_with_an_expert_index() {
    let m = layout("mixtral");
    assert_eq!(
        expert_of(&m, "model.layers.31.block_sparse_moe.experts.7.w2.weight"),
        (Some(31), FfnDown, Some(7))
    );
    assert_eq!(
        expert_of(&m, "model.layers.0.block_sparse_moe.experts.0.w1.weight"),
        (Some(0), FfnGate, Some(0))
    );
    assert_eq!(
        expert_of(&m, "model.layers.0.block_sparse_moe.experts.3.w3.weight"),
        (Some(0), FfnUp, Some(3))
    );
    assert_eq!(
        expert_of(&m, "model.layers.0.block_sparse_moe.gate.weight"),
        (Some(0), Router, None)
    );
    let q = layout("qwen2_moe");
    for (name, cat, expert) in [
        (
            "model.layers.23.mlp.experts.59.down_proj.weight",
            FfnDown,
            Some(59),
        ),
        (
            "model.layers.23.mlp.shared_expert.up_proj.weight",
            SharedFfnUp,
            None,
        ),
        (
            "model.layers.23.mlp.shared_expert.gate_proj.weight",
            SharedFfnGate,
            None,
        ),
        (
            "model.layers.23.mlp.shared_expert_gate.weight",
            Router,
            None,
        ),
        ("model.layers.23.mlp.gate.weight", Router, None),
        ("model.layers.23.self_attn.q_proj.bias", Bias, None),
    ] {
        assert_eq!(expert_of(&q, name), (Some(23), cat, expert), "{name}");
    }
    let q3 = layout("qwen3_moe");
    assert_eq!(
        expert_of(&q3, "model.layers.47.mlp.experts.127.gate_proj.weight"),
        (Some(47), FfnGate, Some(127))
    );
    assert_eq!(
        q3.role("model.layers.47.self_attn.k_norm.weight").owner,
        Some(AttnK)
    );
    let d = layout("deepseek_v3");
    for (name, layer, cat, expert) in [
        ("model.layers.0.mlp.gate_proj.weight", 0, FfnGate, None),
        (
            "model.layers.3.mlp.experts.255.up_proj.weight",
            3,
            FfnUp,
            Some(255),
        ),
        (
            "model.layers.3.mlp.shared_experts.down_proj.weight",
            3,
            SharedFfnDown,
            None,
        ),
        ("model.layers.3.mlp.gate.weight", 3, Router, None),
        (
            "model.layers.3.mlp.gate.e_score_correction_bias",
            3,
            Buffer,
            None,
        ),
        ("model.layers.3.self_attn.q_a_proj.weight", 3, AttnQ, None),
        ("model.layers.3.self_attn.q_b_proj.weight", 3, AttnQ, None),
        (
            "model.layers.3.self_attn.q_a_layernorm.weight",
            3,
            AttnNorm,
            None,
        ),
        (
            "model.layers.3.self_attn.kv_a_proj_with_mqa.weight",
            3,
            AttnK,
            None,
        ),
        (
            "model.layers.3.self_attn.kv_a_layernorm.weight",
            3,
            AttnNorm,
            None,
        ),
        ("model.layers.3.self_attn.kv_b_proj.weight", 3, AttnKv, None),
        ("model.layers.3.self_attn.o_proj.weight", 3, AttnO, None),
        // V3's multi-token-prediction layer, which transformers does not load.
        ("model.layers.61.eh_proj.weight", 61, Other, None),
    ] {
        assert_eq!(expert_of(&d, name), (Some(layer), cat, expert), "{name}");
    }
    let owner = |n: &str| d.role(n).owner;
    assert_eq!(
        owner("model.layers.3.self_attn.q_a_layernorm.weight"),
        Some(AttnQ)
    );
    assert_eq!(
        owner("model.layers.3.self_attn.kv_a_layernorm.weight"),
        Some(AttnK)
    );
    // A dense model's names carry no expert, and a module merely named like one is not one.
    assert_eq!(
        expert_of(&layout("llama"), "model.layers.2.mlp.up_proj.weight"),
        (Some(2), FfnUp, None)
    );
}

#[test]
fn moe_families_detected_from_names() {
    let by_names = |names: &[&str]| Layout::detect(None, names.iter().copied()).family_name();
    assert_eq!(
        by_names(&["model.layers.0.block_sparse_moe.gate.weight"]),
        "mixtral"
    );
    assert_eq!(
        by_names(&["model.layers.1.mlp.shared_expert_gate.weight"]),
        "qwen2_moe"
    );
    assert_eq!(
        by_names(&[
            "model.layers.0.self_attn.q_norm.weight",
            "model.layers.0.mlp.experts.0.gate_proj.weight"
        ]),
        "qwen3_moe"
    );
    assert_eq!(
        by_names(&["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]),
        "deepseek"
    );
}

#[test]
fn deepseek_kv_b_splits_per_head_into_key_and_value_rows() {
    let cfg = json!({"model_type": "deepseek_v3", "num_attention_heads": 2,
                     "qk_nope_head_dim": 3, "v_head_dim": 2});
    let l = Layout::detect(Some(&cfg), []);
    let p = l
        .parts("model.layers.1.self_attn.kv_b_proj.weight", &[10, 4])
        .unwrap();
    assert_eq!(
        (p[0].category, p[0].ranges.clone()),
        (AttnK, vec![(0, 3), (5, 8)])
    );
    assert_eq!(
        (p[1].category, p[1].ranges.clone()),
        (AttnV, vec![(3, 5), (8, 10)])
    );
    assert!(l
        .parts("model.layers.1.self_attn.kv_b_proj.weight", &[11, 4])
        .is_none());
}

/// The published configs give the published parameter counts (within 0.5%): the shapes of
/// experts, shared experts, routers, dense first layers and latent attention are right at
/// full size, not only on the tiny fixtures.
#[test]
fn moe_configs_give_the_published_sizes() {
    let cases = [
        (
            "mixtral 8x7B",
            json!({"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "vocab_size": 32000, "num_local_experts": 8}),
            46.70e9,
        ),
        (
            "qwen1.5-moe-a2.7b",
            json!({"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
                   "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
                   "vocab_size": 151936, "num_experts": 60, "moe_intermediate_size": 1408,
                   "shared_expert_intermediate_size": 5632, "decoder_sparse_step": 1,
                   "mlp_only_layers": [], "tie_word_embeddings": false}),
            14.32e9,
        ),
        (
            "qwen3-30b-a3b",
            json!({"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                   "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
                   "head_dim": 128, "vocab_size": 151936, "num_experts": 128,
                   "moe_intermediate_size": 768, "decoder_sparse_step": 1, "mlp_only_layers": [],
                   "tie_word_embeddings": false}),
            30.53e9,
        ),
        (
            "deepseek-v3",
            json!({"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
                   "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
                   "vocab_size": 129280, "n_routed_experts": 256, "n_shared_experts": 1,
                   "moe_intermediate_size": 2048, "first_k_dense_replace": 3, "moe_layer_freq": 1,
                   "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                   "qk_rope_head_dim": 64, "v_head_dim": 128, "tie_word_embeddings": false}),
            671.0e9,
        ),
    ];
    for (what, cfg, published) in cases {
        let l = Layout::detect(Some(&cfg), []);
        let t =
            decoder::tensors(l.family.unwrap(), &l.dims, std::path::Path::new("c.json")).unwrap();
        let params: f64 = t
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as f64)
            .sum();
        let off = (params / published - 1.0).abs();
        assert!(
            off < 0.005,
            "{what}: {params:.4e} vs published {published:.4e}"
        );
        assert!(
            t.iter().all(|(n, _)| l.role(n).category != Other),
            "{what}: every tensor has a role"
        );
    }
}

#[test]
fn moe_configs_that_cannot_be_real_are_refused() {
    let base = json!({"model_type": "mixtral", "hidden_size": 8, "intermediate_size": 8,
                      "num_hidden_layers": 4096, "num_attention_heads": 2,
                      "vocab_size": 8, "num_local_experts": 16000});
    let l = Layout::detect(Some(&base), []);
    let e =
        decoder::tensors(l.family.unwrap(), &l.dims, std::path::Path::new("c.json")).unwrap_err();
    assert!(e.to_string().contains("tensors: not a real model"), "{e}");
    let no_experts = json!({"model_type": "qwen3_moe", "hidden_size": 8, "intermediate_size": 8,
                            "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 8});
    let l = Layout::detect(Some(&no_experts), []);
    let e =
        decoder::tensors(l.family.unwrap(), &l.dims, std::path::Path::new("c.json")).unwrap_err();
    assert!(e.to_string().contains("num_experts"), "{e}");
    // Messages name the key the file uses.
    let mixtral = json!({"model_type": "mixtral", "hidden_size": 8, "intermediate_size": 8,
                         "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 8,
                         "num_local_experts": 99999});
    let l = Layout::detect(Some(&mixtral), []);
    let e =
        decoder::tensors(l.family.unwrap(), &l.dims, std::path::Path::new("c.json")).unwrap_err();
    assert!(
        e.to_string().contains("`num_local_experts` is 99999"),
        "{e}"
    );
}
