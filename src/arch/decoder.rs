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

/// Which layers of a mixture-of-experts model hold experts (the others a dense feed-forward
/// block of `intermediate_size`).
#[derive(Debug, Clone, Copy)]
pub enum Sparse {
    /// Every layer (Mixtral).
    All,
    /// Layer `l` when `(l + 1) % decoder_sparse_step == 0` and `l` is not in
    /// `mlp_only_layers` (Qwen2-MoE, Qwen3-MoE).
    Step,
    /// Layer `l` when `l >= first_k_dense_replace` and `l % moe_layer_freq == 0` (DeepSeek).
    FirstDense,
}

impl Sparse {
    pub fn holds(self, c: &ModelConfig, layer: usize) -> bool {
        match self {
            Sparse::All => true,
            Sparse::Step => {
                let step = c.sparse_step.unwrap_or(1).max(1);
                (layer + 1).is_multiple_of(step) && !c.mlp_only_layers.contains(&layer)
            }
            Sparse::FirstDense => {
                layer >= c.first_dense.unwrap_or(0)
                    && layer.is_multiple_of(c.moe_layer_freq.unwrap_or(1).max(1))
            }
        }
    }
}

/// The sparse feed-forward block of a mixture-of-experts family, as data.
#[derive(Debug)]
pub struct Moe {
    /// The block's module in a layer (`mlp`, Mixtral's `block_sparse_moe`); its router is
    /// `BLOCK.gate`, expert `e` is `BLOCK.experts.e`.
    pub block: &'static str,
    /// An expert's gate, up and down projections (Mixtral: `w1`, `w3`, `w2`).
    pub expert: [&'static str; 3],
    /// The module of the shared expert(s), when there is one (`shared_expert`,
    /// `shared_experts`).
    pub shared: Option<&'static str>,
    /// A `[1, hidden]` sigmoid gate on the shared expert's output (`shared_expert_gate`).
    pub shared_gate: bool,
    pub sparse: Sparse,
    /// The router's load-balancing bias buffer (`gate.e_score_correction_bias`).
    pub router_bias: When,
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
    /// A mixture-of-experts feed-forward block.
    pub moe: Option<&'static Moe>,
    /// Multi-head latent attention (DeepSeek) instead of q/k/v projections.
    pub mla: bool,
}

/// Parameters a config may describe: five times today's largest published models.
const MAX_PARAMS: u128 = 10_000_000_000_000;

/// Tensors a config may describe.
const MAX_TENSORS: usize = 2_000_000;

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
    // Each name costs memory before any size is summed: refuse configs that list more tensors
    // than any real model (DeepSeek-V3 has about 47,000).
    let per_layer = d
        .moe
        .map_or(0, |_| c.experts.unwrap_or(0).saturating_mul(3))
        + 32;
    if layers.saturating_mul(per_layer) > MAX_TENSORS {
        return Err(Error::input(
            path,
            format!("config.json describes more than {MAX_TENSORS} tensors: not a real model"),
        ));
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
        if d.mla {
            mla_attention(c, path, h, heads, &mut add)?;
        } else {
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
        }
        add("post_attention_layernorm.weight", vec![h]);
        if d.ffn_norms.holds(c) {
            add("pre_feedforward_layernorm.weight", vec![h]);
            add("post_feedforward_layernorm.weight", vec![h]);
        }
        match d.moe {
            Some(moe) if moe.sparse.holds(c, l) => sparse_block(moe, c, path, h, &mut add)?,
            _ => dense_block(d, c, inter, h, &mut add),
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

/// A dense feed-forward block (gate, up, down and their biases, or Phi-3's fused gate/up).
fn dense_block(
    d: &Decoder,
    c: &ModelConfig,
    inter: usize,
    h: usize,
    add: &mut dyn FnMut(&str, Vec<usize>),
) {
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

/// Router, routed experts and shared expert of a sparse layer, as the checkpoints list them.
fn sparse_block(
    moe: &Moe,
    c: &ModelConfig,
    path: &Path,
    h: usize,
    add: &mut dyn FnMut(&str, Vec<usize>),
) -> Result<()> {
    let experts = c.need(path, c.experts_key, c.experts)?;
    // Mixtral's experts are `intermediate_size` wide; the others name their own width.
    let width = match c.moe_intermediate {
        Some(w) => w,
        None => c.need(path, "moe_intermediate_size", c.intermediate)?,
    };
    let b = moe.block;
    add(&format!("{b}.gate.weight"), vec![experts, h]);
    if moe.router_bias.holds(c) {
        add(&format!("{b}.gate.e_score_correction_bias"), vec![experts]);
    }
    let [gate, up, down] = moe.expert;
    for e in 0..experts {
        add(&format!("{b}.experts.{e}.{gate}.weight"), vec![width, h]);
        add(&format!("{b}.experts.{e}.{up}.weight"), vec![width, h]);
        add(&format!("{b}.experts.{e}.{down}.weight"), vec![h, width]);
    }
    if let Some(shared) = moe.shared {
        let wide = match (c.shared_intermediate, c.shared_experts) {
            (Some(w), _) => Some(w),
            (None, Some(n)) => width.checked_mul(n),
            (None, None) => None,
        };
        // Qwen2-MoE gives the width; DeepSeek the count of `moe_intermediate_size` experts.
        let key = if moe.shared_gate {
            "shared_expert_intermediate_size"
        } else {
            "n_shared_experts"
        };
        let wide = c.need(path, key, wide)?;
        if wide > 0 {
            add(&format!("{b}.{shared}.gate_proj.weight"), vec![wide, h]);
            add(&format!("{b}.{shared}.up_proj.weight"), vec![wide, h]);
            add(&format!("{b}.{shared}.down_proj.weight"), vec![h, wide]);
            if moe.shared_gate {
                add(&format!("{b}.shared_expert_gate.weight"), vec![1, h]);
            }
        }
    }
    Ok(())
}

/// DeepSeek's multi-head latent attention: a low-rank query (or a plain `q_proj` when
/// `q_lora_rank` is null), the compressed key-value latent with the rotary key, its per-head
/// expansion, and the output projection.
fn mla_attention(
    c: &ModelConfig,
    path: &Path,
    h: usize,
    heads: usize,
    add: &mut dyn FnMut(&str, Vec<usize>),
) -> Result<()> {
    let kv_rank = c.need(path, "kv_lora_rank", c.kv_lora_rank)?;
    let nope = c.need(path, "qk_nope_head_dim", c.qk_nope_head_dim)?;
    let rope = c.need(path, "qk_rope_head_dim", c.qk_rope_head_dim)?;
    let v = c.need(path, "v_head_dim", c.v_head_dim)?;
    let q_rows = heads * (nope + rope);
    match c.q_lora_rank {
        Some(r) => {
            add("self_attn.q_a_proj.weight", vec![r, h]);
            add("self_attn.q_a_layernorm.weight", vec![r]);
            add("self_attn.q_b_proj.weight", vec![q_rows, r]);
        }
        None => add("self_attn.q_proj.weight", vec![q_rows, h]),
    }
    add(
        "self_attn.kv_a_proj_with_mqa.weight",
        vec![kv_rank + rope, h],
    );
    add("self_attn.kv_a_layernorm.weight", vec![kv_rank]);
    add(
        "self_attn.kv_b_proj.weight",
        vec![heads * (nope + v), kv_rank],
    );
    add("self_attn.o_proj.weight", vec![h, heads * v]);
    Ok(())
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
