//! Architecture knowledge as data: one table per model family, mapping module paths to
//! categories. Adding a family means adding a table here, not a branch in code.
//!
//! `layer` rules match the module path after the layer marker (`model.layers.3.` is stripped
//! from `model.layers.3.self_attn.q_proj`); `global` rules match the end of the module path of
//! names outside the layers, at a component boundary. `buffers` are parameter-free tensors
//! (matched at the end of the whole name). `fused` says how a fused projection splits.

use super::decoder::{Decoder, Moe, Sparse, When};
use super::Category::{self, *};

/// How the rows (or, for GPT-2's transposed Conv1D, the columns) of a fused tensor split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusion {
    /// `[q | k | v]` stacked: q is heads*head_dim rows, k and v kv_heads*head_dim each.
    QkvStacked,
    /// Per head `[q_h | k_h | v_h]` (GPT-NeoX `query_key_value`).
    QkvPerHead,
    /// Per key-value group `[q .. q | k | v]` (Falcon's new decoder architecture; with one
    /// group this is also the multi-query layout `[q heads.. | k | v]`).
    QkvGrouped,
    /// `[gate | up]` stacked (Phi-3 `gate_up_proj`).
    GateUpStacked,
    /// Per head `[k_nope_h | v_h]`: DeepSeek's `kv_b_proj`, which expands the compressed
    /// key-value latent into each head's key (its non-rotary part) and value.
    KvPerHead,
}

#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    /// `model_type` values of config.json.
    pub model_types: &'static [&'static str],
    /// Prefixes of `architectures[0]` in config.json (`LlamaForCausalLM` ...).
    pub architectures: &'static [&'static str],
    /// Substrings that, all present in some tensor name, identify the family without a config.
    pub markers: &'static [&'static str],
    pub layer: &'static [(&'static str, Category)],
    pub global: &'static [(&'static str, Category)],
    pub buffers: &'static [&'static str],
    pub fused: &'static [(&'static str, Fusion)],
    /// Weights stored `[in, out]` (GPT-2 Conv1D), so fused parts split the last axis.
    pub transposed: bool,
    /// For Llama-like decoders: how names and shapes follow from config.json.
    pub decoder: Option<&'static Decoder>,
}

/// Llama's decoder; Mistral's too. q/k/v/o biases only when `attention_bias` says so.
static LLAMA_DECODER: Decoder = Decoder {
    fused_qkv: false,
    fused_gate_up: false,
    qkv_bias: When::AttentionBias,
    o_bias: When::AttentionBias,
    mlp_bias: When::MlpBias,
    qk_norm: When::Never,
    ffn_norms: When::Never,
    tied_default: false,
    trainable: true,
    moe: None,
    mla: false,
};

/// Qwen2: q/k/v always carry biases, o never.
static QWEN2_DECODER: Decoder = Decoder {
    qkv_bias: When::Always,
    o_bias: When::Never,
    ..LLAMA_DECODER
};

/// Qwen3: per-head q/k norms.
static QWEN3_DECODER: Decoder = Decoder {
    qk_norm: When::Always,
    ..LLAMA_DECODER
};

/// Mixtral: Llama's attention, a sparse block of routed experts (`w1` gate, `w3` up, `w2`
/// down) in every layer.
static MIXTRAL_DECODER: Decoder = Decoder {
    trainable: false,
    moe: Some(&Moe {
        block: "block_sparse_moe",
        expert: ["w1", "w3", "w2"],
        shared: None,
        shared_gate: false,
        sparse: Sparse::All,
        router_bias: When::Never,
    }),
    ..LLAMA_DECODER
};

/// Qwen2-MoE: Qwen2's attention; routed experts and one shared expert with its own sigmoid
/// gate, in the layers `decoder_sparse_step` and `mlp_only_layers` make sparse.
static QWEN2_MOE_DECODER: Decoder = Decoder {
    trainable: false,
    moe: Some(&Moe {
        block: "mlp",
        expert: ["gate_proj", "up_proj", "down_proj"],
        shared: Some("shared_expert"),
        shared_gate: true,
        sparse: Sparse::Step,
        router_bias: When::Never,
    }),
    ..QWEN2_DECODER
};

/// Qwen3-MoE: Qwen3's attention (q/k norms), routed experts only.
static QWEN3_MOE_DECODER: Decoder = Decoder {
    trainable: false,
    moe: Some(&Moe {
        block: "mlp",
        expert: ["gate_proj", "up_proj", "down_proj"],
        shared: None,
        shared_gate: false,
        sparse: Sparse::Step,
        router_bias: When::Never,
    }),
    ..QWEN3_DECODER
};

/// DeepSeek-V2 and V3: multi-head latent attention; dense feed-forward in the first
/// `first_k_dense_replace` layers, then routed experts beside `n_shared_experts` shared ones
/// (one module); V3's router carries a bias buffer for its load balancing.
static DEEPSEEK_DECODER: Decoder = Decoder {
    trainable: false,
    moe: Some(&Moe {
        block: "mlp",
        expert: ["gate_proj", "up_proj", "down_proj"],
        shared: Some("shared_experts"),
        shared_gate: false,
        sparse: Sparse::FirstDense,
        router_bias: When::ModelTypes(&["deepseek_v3"]),
    }),
    mla: true,
    ..LLAMA_DECODER
};

/// Gemma: tied by default; Gemma 2 and 3 add feed-forward norms, Gemma 3 q/k norms.
static GEMMA_DECODER: Decoder = Decoder {
    qk_norm: When::ModelTypes(&["gemma3", "gemma3_text"]),
    ffn_norms: When::ModelTypes(&["gemma2", "gemma3", "gemma3_text"]),
    tied_default: true,
    trainable: false,
    ..LLAMA_DECODER
};

/// Phi-3: fused qkv and gate/up projections.
static PHI3_DECODER: Decoder = Decoder {
    fused_qkv: true,
    fused_gate_up: true,
    trainable: false,
    ..LLAMA_DECODER
};

const LLAMA_LAYER: &[(&str, Category)] = &[
    ("self_attn.q_proj", AttnQ),
    ("self_attn.k_proj", AttnK),
    ("self_attn.v_proj", AttnV),
    ("self_attn.o_proj", AttnO),
    ("mlp.gate_proj", FfnGate),
    ("mlp.up_proj", FfnUp),
    ("mlp.down_proj", FfnDown),
    ("input_layernorm", Norm),
    ("post_attention_layernorm", Norm),
];
const LLAMA_GLOBAL: &[(&str, Category)] = &[
    ("embed_tokens", Embed),
    ("norm", FinalNorm),
    ("lm_head", LmHead),
];
const ROPE_BUFFERS: &[&str] = &["rotary_emb.inv_freq"];

pub static LLAMA: Family = Family {
    name: "llama",
    model_types: &["llama", "smollm", "smollm2"],
    architectures: &["Llama"],
    markers: &["layers.0.self_attn.q_proj", "layers.0.mlp.gate_proj"],
    layer: LLAMA_LAYER,
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: Some(&LLAMA_DECODER),
};

pub static MISTRAL: Family = Family {
    name: "mistral",
    model_types: &["mistral"],
    architectures: &["Mistral"],
    markers: &[],
    layer: LLAMA_LAYER,
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: Some(&LLAMA_DECODER),
};

pub static QWEN2: Family = Family {
    name: "qwen2",
    model_types: &["qwen2"],
    architectures: &["Qwen2"],
    markers: &["layers.0.self_attn.q_proj.bias"],
    layer: LLAMA_LAYER,
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: Some(&QWEN2_DECODER),
};

pub static QWEN3: Family = Family {
    name: "qwen3",
    model_types: &["qwen3"],
    architectures: &["Qwen3"],
    markers: &["layers.0.self_attn.q_norm", "layers.0.mlp.gate_proj"],
    layer: &[
        ("self_attn.q_proj", AttnQ),
        ("self_attn.k_proj", AttnK),
        ("self_attn.v_proj", AttnV),
        ("self_attn.o_proj", AttnO),
        ("self_attn.q_norm", AttnNorm),
        ("self_attn.k_norm", AttnNorm),
        ("mlp.gate_proj", FfnGate),
        ("mlp.up_proj", FfnUp),
        ("mlp.down_proj", FfnDown),
        ("input_layernorm", Norm),
        ("post_attention_layernorm", Norm),
    ],
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: Some(&QWEN3_DECODER),
};

/// Attention and norms of a Llama layer with the feed-forward block left out, for the
/// mixture-of-experts tables below.
macro_rules! attention_rules {
    ($($extra:expr),* $(,)?) => {
        &[
            ("self_attn.q_proj", AttnQ),
            ("self_attn.k_proj", AttnK),
            ("self_attn.v_proj", AttnV),
            ("self_attn.o_proj", AttnO),
            ("input_layernorm", Norm),
            ("post_attention_layernorm", Norm),
            $($extra),*
        ]
    };
}

pub static MIXTRAL: Family = Family {
    name: "mixtral",
    model_types: &["mixtral"],
    architectures: &["Mixtral"],
    markers: &["block_sparse_moe.gate"],
    layer: attention_rules![
        ("block_sparse_moe.gate", Router),
        ("block_sparse_moe.experts.*.w1", FfnGate),
        ("block_sparse_moe.experts.*.w3", FfnUp),
        ("block_sparse_moe.experts.*.w2", FfnDown),
    ],
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: Some(&MIXTRAL_DECODER),
};

pub static QWEN2_MOE: Family = Family {
    name: "qwen2_moe",
    model_types: &["qwen2_moe"],
    architectures: &["Qwen2Moe"],
    markers: &["mlp.shared_expert_gate"],
    layer: attention_rules![
        ("mlp.gate", Router),
        ("mlp.shared_expert_gate", Router),
        ("mlp.experts.*.gate_proj", FfnGate),
        ("mlp.experts.*.up_proj", FfnUp),
        ("mlp.experts.*.down_proj", FfnDown),
        ("mlp.shared_expert.gate_proj", SharedFfnGate),
        ("mlp.shared_expert.up_proj", SharedFfnUp),
        ("mlp.shared_expert.down_proj", SharedFfnDown),
        ("mlp.gate_proj", FfnGate),
        ("mlp.up_proj", FfnUp),
        ("mlp.down_proj", FfnDown),
    ],
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: Some(&QWEN2_MOE_DECODER),
};

pub static QWEN3_MOE: Family = Family {
    name: "qwen3_moe",
    model_types: &["qwen3_moe"],
    architectures: &["Qwen3Moe"],
    markers: &["self_attn.q_norm", "mlp.experts.0.gate_proj"],
    layer: attention_rules![
        ("self_attn.q_norm", AttnNorm),
        ("self_attn.k_norm", AttnNorm),
        ("mlp.gate", Router),
        ("mlp.experts.*.gate_proj", FfnGate),
        ("mlp.experts.*.up_proj", FfnUp),
        ("mlp.experts.*.down_proj", FfnDown),
        ("mlp.gate_proj", FfnGate),
        ("mlp.up_proj", FfnUp),
        ("mlp.down_proj", FfnDown),
    ],
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: Some(&QWEN3_MOE_DECODER),
};

/// DeepSeek-V2/V3. Multi-head latent attention maps onto the four attention categories so
/// the HFT rule's "2 of 4" keeps its meaning: `q_proj`, or `q_a_proj` with `q_b_proj` (the
/// low-rank query) and `q_a_layernorm`, are q; `kv_a_proj_with_mqa` (the compressed key-value
/// latent and the rotary key) and `kv_a_layernorm` go with k; `kv_b_proj` is split per head
/// into its key rows (k) and value rows (v); `o_proj` is o.
pub static DEEPSEEK: Family = Family {
    name: "deepseek",
    model_types: &["deepseek_v2", "deepseek_v3"],
    architectures: &["DeepseekV2", "DeepseekV3"],
    markers: &["self_attn.kv_a_proj_with_mqa"],
    layer: &[
        ("self_attn.q_proj", AttnQ),
        ("self_attn.q_a_proj", AttnQ),
        ("self_attn.q_b_proj", AttnQ),
        ("self_attn.q_a_layernorm", AttnNorm),
        ("self_attn.kv_a_proj_with_mqa", AttnK),
        ("self_attn.kv_a_layernorm", AttnNorm),
        ("self_attn.kv_b_proj", AttnKv),
        ("self_attn.o_proj", AttnO),
        ("input_layernorm", Norm),
        ("post_attention_layernorm", Norm),
        ("mlp.gate", Router),
        ("mlp.experts.*.gate_proj", FfnGate),
        ("mlp.experts.*.up_proj", FfnUp),
        ("mlp.experts.*.down_proj", FfnDown),
        ("mlp.shared_experts.gate_proj", SharedFfnGate),
        ("mlp.shared_experts.up_proj", SharedFfnUp),
        ("mlp.shared_experts.down_proj", SharedFfnDown),
        ("mlp.gate_proj", FfnGate),
        ("mlp.up_proj", FfnUp),
        ("mlp.down_proj", FfnDown),
    ],
    global: LLAMA_GLOBAL,
    // V3's router bias is updated by load balancing, never by gradients (a buffer in
    // transformers).
    buffers: &["rotary_emb.inv_freq", "mlp.gate.e_score_correction_bias"],
    fused: &[("self_attn.kv_b_proj", Fusion::KvPerHead)],
    transposed: false,
    decoder: Some(&DEEPSEEK_DECODER),
};

pub static GEMMA: Family = Family {
    name: "gemma",
    model_types: &["gemma", "gemma2", "gemma3", "gemma3_text"],
    architectures: &["Gemma"],
    markers: &["layers.0.pre_feedforward_layernorm"],
    layer: &[
        ("self_attn.q_proj", AttnQ),
        ("self_attn.k_proj", AttnK),
        ("self_attn.v_proj", AttnV),
        ("self_attn.o_proj", AttnO),
        ("self_attn.q_norm", AttnNorm),
        ("self_attn.k_norm", AttnNorm),
        ("mlp.gate_proj", FfnGate),
        ("mlp.up_proj", FfnUp),
        ("mlp.down_proj", FfnDown),
        ("input_layernorm", Norm),
        ("post_attention_layernorm", Norm),
        ("pre_feedforward_layernorm", Norm),
        ("post_feedforward_layernorm", Norm),
    ],
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: Some(&GEMMA_DECODER),
};

pub static PHI3: Family = Family {
    name: "phi3",
    model_types: &["phi3"],
    architectures: &["Phi3"],
    markers: &["layers.0.self_attn.qkv_proj"],
    layer: &[
        ("self_attn.qkv_proj", AttnQkv),
        ("self_attn.o_proj", AttnO),
        ("mlp.gate_up_proj", FfnGateUp),
        ("mlp.down_proj", FfnDown),
        ("input_layernorm", Norm),
        ("post_attention_layernorm", Norm),
    ],
    global: LLAMA_GLOBAL,
    buffers: ROPE_BUFFERS,
    fused: &[
        ("self_attn.qkv_proj", Fusion::QkvStacked),
        ("mlp.gate_up_proj", Fusion::GateUpStacked),
    ],
    transposed: false,
    decoder: Some(&PHI3_DECODER),
};

pub static PHI: Family = Family {
    name: "phi",
    model_types: &["phi"],
    architectures: &["Phi"],
    markers: &["layers.0.self_attn.dense", "layers.0.mlp.fc1"],
    layer: &[
        ("self_attn.q_proj", AttnQ),
        ("self_attn.k_proj", AttnK),
        ("self_attn.v_proj", AttnV),
        ("self_attn.dense", AttnO),
        ("self_attn.q_layernorm", AttnNorm),
        ("self_attn.k_layernorm", AttnNorm),
        ("mlp.fc1", FfnIn),
        ("mlp.fc2", FfnOut),
        ("input_layernorm", Norm),
    ],
    global: &[
        ("embed_tokens", Embed),
        ("final_layernorm", FinalNorm),
        ("lm_head", LmHead),
    ],
    buffers: ROPE_BUFFERS,
    fused: &[],
    transposed: false,
    decoder: None,
};

pub static GPT2: Family = Family {
    name: "gpt2",
    model_types: &["gpt2"],
    architectures: &["GPT2"],
    markers: &["h.0.attn.c_attn"],
    layer: &[
        ("attn.c_attn", AttnQkv),
        ("attn.c_proj", AttnO),
        ("mlp.c_fc", FfnIn),
        ("mlp.c_proj", FfnOut),
        ("ln_1", Norm),
        ("ln_2", Norm),
    ],
    global: &[
        ("wte", Embed),
        ("wpe", PosEmbed),
        ("ln_f", FinalNorm),
        ("lm_head", LmHead),
    ],
    // `attn.bias` is GPT-2's causal-mask buffer, not a parameter.
    buffers: &["attn.bias", "attn.masked_bias"],
    fused: &[("attn.c_attn", Fusion::QkvStacked)],
    transposed: true,
    decoder: None,
};

pub static GPT_NEOX: Family = Family {
    name: "gpt_neox",
    model_types: &["gpt_neox"],
    architectures: &["GPTNeoX"],
    markers: &["layers.0.attention.query_key_value"],
    layer: &[
        ("attention.query_key_value", AttnQkv),
        ("attention.dense", AttnO),
        ("mlp.dense_h_to_4h", FfnIn),
        ("mlp.dense_4h_to_h", FfnOut),
        ("input_layernorm", Norm),
        ("post_attention_layernorm", Norm),
    ],
    global: &[
        ("embed_in", Embed),
        ("final_layer_norm", FinalNorm),
        ("embed_out", LmHead),
    ],
    buffers: &[
        "attention.bias",
        "attention.masked_bias",
        "rotary_emb.inv_freq",
    ],
    fused: &[("attention.query_key_value", Fusion::QkvPerHead)],
    transposed: false,
    decoder: None,
};

pub static FALCON: Family = Family {
    name: "falcon",
    model_types: &["falcon", "RefinedWeb", "RefinedWebModel"],
    architectures: &["Falcon", "RW"],
    markers: &["h.0.self_attention.query_key_value"],
    layer: &[
        ("self_attention.query_key_value", AttnQkv),
        ("self_attention.dense", AttnO),
        ("mlp.dense_h_to_4h", FfnIn),
        ("mlp.dense_4h_to_h", FfnOut),
        ("input_layernorm", Norm),
        ("post_attention_layernorm", Norm),
        ("ln_attn", Norm),
        ("ln_mlp", Norm),
    ],
    global: &[
        ("word_embeddings", Embed),
        ("ln_f", FinalNorm),
        ("lm_head", LmHead),
    ],
    buffers: ROPE_BUFFERS,
    fused: &[("self_attention.query_key_value", Fusion::QkvGrouped)],
    transposed: false,
    decoder: None,
};

/// Every family, in the order name-based detection tries them (most specific first).
pub static FAMILIES: &[&Family] = &[
    &DEEPSEEK, &MIXTRAL, &QWEN2_MOE, &QWEN3_MOE, &PHI3, &GEMMA, &QWEN3, &QWEN2, &PHI, &GPT2,
    &GPT_NEOX, &FALCON, &LLAMA, &MISTRAL,
];
