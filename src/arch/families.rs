//! Architecture knowledge as data: one table per model family, mapping module paths to
//! categories. Adding a family means adding a table here, not a branch in code.
//!
//! `layer` rules match the module path after the layer marker (`model.layers.3.` is stripped
//! from `model.layers.3.self_attn.q_proj`); `global` rules match the end of the module path of
//! names outside the layers, at a component boundary. `buffers` are parameter-free tensors
//! (matched at the end of the whole name). `fused` says how a fused projection splits.

use super::decoder::{Decoder, When};
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
    trainable: false,
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
    &PHI3, &GEMMA, &QWEN3, &QWEN2, &PHI, &GPT2, &GPT_NEOX, &FALCON, &LLAMA, &MISTRAL,
];
