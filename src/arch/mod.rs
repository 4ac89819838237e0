//! Tensor-name layout: which layer a tensor belongs to and what it is (its category), and how a
//! fused tensor splits into parts. Every command that needs to know "is this q_proj of layer 3"
//! asks this module; the per-family knowledge itself is data, in [`families`].

pub mod config;
pub mod decoder;
pub mod families;
pub mod gguf;

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::ModelConfig;
pub use decoder::Decoder;
pub use families::{Family, Fusion, FAMILIES};

use crate::io::Checkpoint;

/// What a tensor is, independent of the family's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Embed,
    PosEmbed,
    AttnQ,
    AttnK,
    AttnV,
    AttnO,
    AttnQkv,
    AttnKv,
    AttnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    FfnGateUp,
    FfnIn,
    FfnOut,
    SharedFfnGate,
    SharedFfnUp,
    SharedFfnDown,
    Router,
    Norm,
    FinalNorm,
    LmHead,
    Bias,
    Buffer,
    Other,
}

impl Category {
    pub const ALL: [Category; 25] = [
        Category::Embed,
        Category::PosEmbed,
        Category::AttnQ,
        Category::AttnK,
        Category::AttnV,
        Category::AttnO,
        Category::AttnQkv,
        Category::AttnKv,
        Category::AttnNorm,
        Category::FfnGate,
        Category::FfnUp,
        Category::FfnDown,
        Category::FfnGateUp,
        Category::FfnIn,
        Category::FfnOut,
        Category::SharedFfnGate,
        Category::SharedFfnUp,
        Category::SharedFfnDown,
        Category::Router,
        Category::Norm,
        Category::FinalNorm,
        Category::LmHead,
        Category::Bias,
        Category::Buffer,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Embed => "embed",
            Category::PosEmbed => "pos_embed",
            Category::AttnQ => "attn_q",
            Category::AttnK => "attn_k",
            Category::AttnV => "attn_v",
            Category::AttnO => "attn_o",
            Category::AttnQkv => "attn_qkv",
            Category::AttnKv => "attn_kv",
            Category::AttnNorm => "attn_norm",
            Category::FfnGate => "ffn_gate",
            Category::FfnUp => "ffn_up",
            Category::FfnDown => "ffn_down",
            Category::FfnGateUp => "ffn_gate_up",
            Category::FfnIn => "ffn_in",
            Category::FfnOut => "ffn_out",
            Category::SharedFfnGate => "shared_ffn_gate",
            Category::SharedFfnUp => "shared_ffn_up",
            Category::SharedFfnDown => "shared_ffn_down",
            Category::Router => "router",
            Category::Norm => "norm",
            Category::FinalNorm => "final_norm",
            Category::LmHead => "lm_head",
            Category::Bias => "bias",
            Category::Buffer => "buffer",
            Category::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Attention projections (whole or fused), the "2 of 4" group of the HFT rule.
    pub fn is_attention(self) -> bool {
        matches!(
            self,
            Category::AttnQ
                | Category::AttnK
                | Category::AttnV
                | Category::AttnO
                | Category::AttnQkv
                | Category::AttnKv
        )
    }

    /// Feed-forward projections, the "1.5 of 3" group of the HFT rule (of a dense layer, of
    /// each expert, of the shared expert).
    pub fn is_ffn(self) -> bool {
        matches!(
            self,
            Category::FfnGate
                | Category::FfnUp
                | Category::FfnDown
                | Category::FfnGateUp
                | Category::FfnIn
                | Category::FfnOut
                | Category::SharedFfnGate
                | Category::SharedFfnUp
                | Category::SharedFfnDown
        )
    }

    /// The always-on expert of a mixture-of-experts layer (Qwen2-MoE, DeepSeek).
    pub fn is_shared_ffn(self) -> bool {
        matches!(
            self,
            Category::SharedFfnGate | Category::SharedFfnUp | Category::SharedFfnDown
        )
    }

    /// Weight matrices of a transformer layer (what "half of all matrices" draws from): the
    /// attention and feed-forward projections and the routers of mixture-of-experts layers.
    pub fn is_matrix(self) -> bool {
        self.is_attention() || self.is_ffn() || self == Category::Router
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the layout knows about one tensor name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub layer: Option<usize>,
    pub category: Category,
    /// For a bias or a q/k norm: the category of the matrix it belongs to, so selections keep
    /// them together.
    pub owner: Option<Category>,
    /// The module path (the name without its final `.weight`/`.bias`).
    pub module: String,
    /// For a routed expert's matrix (`mlp.experts.7.up_proj`): the expert's index.
    pub expert: Option<usize>,
}

impl Role {
    /// The category a selection treats this tensor as: a bias goes with its matrix.
    pub fn unit_category(&self) -> Category {
        self.owner.unwrap_or(self.category)
    }

    /// The feed-forward block of its layer this tensor belongs to.
    pub fn block(&self) -> Block {
        Block::of(self.category, self.expert)
    }
}

/// Where a tensor sits among its layer's feed-forward blocks: a routed expert, the shared
/// expert, or the rest of the layer (a dense layer's FFN, attention, norms, routers). The
/// category rule draws per block, and the diff's `experts` rows sum per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Block {
    Dense,
    Shared,
    Expert(usize),
}

impl Block {
    /// The block of a tensor of `category`, `expert` its routed expert's index if any.
    pub fn of(category: Category, expert: Option<usize>) -> Self {
        match expert {
            Some(e) => Block::Expert(e),
            None if category.is_shared_ffn() => Block::Shared,
            None => Block::Dense,
        }
    }
}

/// One part of a fused tensor: the index ranges it occupies along `axis`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub category: Category,
    pub axis: usize,
    pub ranges: Vec<(usize, usize)>,
}

impl Part {
    pub fn len(&self) -> usize {
        self.ranges.iter().map(|(a, b)| b - a).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

static LAYER_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.").expect("valid regex")
});

/// A routed expert inside a layer's module path (`mlp.experts.7.`, `block_sparse_moe.experts.7.`).
static EXPERT_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:^|\.)experts\.(\d+)\.").expect("valid regex"));

/// A layer-relative module path with its expert index replaced by `*` (the form the family
/// tables list: `mlp.experts.*.up_proj`), and that index.
fn expert_pattern(rel_module: &str) -> (std::borrow::Cow<'_, str>, Option<usize>) {
    let probe = format!("{rel_module}.");
    match EXPERT_RE.captures(&probe) {
        Some(c) => {
            let m = c.get(1).expect("group");
            let pattern = format!("{}*{}", &rel_module[..m.start()], &rel_module[m.end()..]);
            (pattern.into(), c[1].parse().ok())
        }
        None => (rel_module.into(), None),
    }
}

/// The layout of one model: its family (or none) and its config.
#[derive(Debug, Clone)]
pub struct Layout {
    pub family: Option<&'static Family>,
    pub dims: ModelConfig,
}

impl Layout {
    /// Picks the family from config.json (`model_type`, then `architectures`), else from the
    /// tensor names; unknown models get the generic fallback (every table tried in turn).
    pub fn detect<'a>(config: Option<&Value>, names: impl IntoIterator<Item = &'a str>) -> Self {
        let dims = config.map(ModelConfig::from_json).unwrap_or_default();
        if config.is_some() {
            let mt = dims.model_type.as_deref();
            if let Some(f) = mt.and_then(|mt| FAMILIES.iter().find(|f| f.model_types.contains(&mt)))
            {
                return Layout {
                    family: Some(f),
                    dims,
                };
            }
            if let Some(a) = dims.architecture.as_deref() {
                if let Some(f) = FAMILIES
                    .iter()
                    .find(|f| f.architectures.iter().any(|p| a.starts_with(p)))
                {
                    return Layout {
                        family: Some(f),
                        dims,
                    };
                }
            }
        }
        let names: Vec<&str> = names.into_iter().collect();
        let family = FAMILIES.iter().copied().find(|f| {
            !f.markers.is_empty()
                && f.markers
                    .iter()
                    .all(|m| names.iter().any(|n| contains_at_boundary(n, m)))
        });
        Layout { family, dims }
    }

    pub fn for_checkpoint(ck: &Checkpoint) -> Self {
        Layout::detect(
            ck.config.as_ref(),
            ck.tensors().iter().map(|t| t.name.as_str()),
        )
    }

    pub fn family_name(&self) -> &'static str {
        self.family.map_or("unknown", |f| f.name)
    }

    /// Layer and category of a tensor name.
    pub fn role(&self, name: &str) -> Role {
        let (module, param) = match name.rsplit_once('.') {
            Some((m, p)) => (m, p),
            None => ("", name),
        };
        let layer_match = LAYER_RE.captures(name);
        let layer = layer_match
            .as_ref()
            .and_then(|c| c[1].parse::<usize>().ok());
        let rel_start = layer_match
            .as_ref()
            .map(|c| c.get(0).expect("match").end())
            .unwrap_or(0);
        let families: Vec<&Family> = match self.family {
            Some(f) => vec![f],
            None => FAMILIES.to_vec(),
        };
        let rel = name.get(rel_start..).unwrap_or("");
        let rel_module = rel.rsplit_once('.').map_or("", |(m, _)| m);
        let (pattern, expert) = match layer {
            Some(_) => expert_pattern(rel_module),
            None => (rel_module.into(), None),
        };
        let role = |category, owner| Role {
            layer,
            category,
            owner,
            module: module.to_string(),
            expert,
        };
        for f in &families {
            if f.buffers.iter().any(|b| ends_at_boundary(name, b)) {
                return role(Category::Buffer, None);
            }
        }
        if name.ends_with("inv_freq") || name.ends_with("masked_bias") {
            return role(Category::Buffer, None);
        }
        let found = families.iter().find_map(|f| {
            if layer.is_some() {
                f.layer.iter().find(|(k, _)| *k == pattern).map(|(_, c)| *c)
            } else {
                f.global
                    .iter()
                    .find(|(k, _)| ends_at_boundary(module, k))
                    .map(|(_, c)| *c)
            }
        });
        match found {
            Some(c) if param == "bias" && c.is_matrix() => role(Category::Bias, Some(c)),
            Some(Category::AttnNorm) => {
                let owner = if module.ends_with("k_norm")
                    || module.ends_with("k_layernorm")
                    || module.ends_with("kv_a_layernorm")
                {
                    Category::AttnK
                } else {
                    Category::AttnQ
                };
                role(Category::AttnNorm, Some(owner))
            }
            Some(c) => role(c, None),
            None => role(Category::Other, None),
        }
    }

    /// How a fused tensor (`qkv_proj`, `gate_up_proj`, GPT-2 `c_attn`, ...) splits into parts,
    /// or `None` for an ordinary tensor or when the split cannot be known (no config where one
    /// is needed, or a shape that does not fit it).
    pub fn parts(&self, name: &str, shape: &[usize]) -> Option<Vec<Part>> {
        let family = self.family?;
        let role = self.role(name);
        let layer_start = LAYER_RE.captures(name)?.get(0)?.end();
        let rel_module = role.module.get(layer_start..)?;
        let fusion = family
            .fused
            .iter()
            .find(|(k, _)| *k == rel_module)
            .map(|(_, f)| *f)?;
        let is_bias = name.ends_with(".bias");
        let axis = if family.transposed && !is_bias {
            shape.len().checked_sub(1)?
        } else {
            0
        };
        let n = *shape.get(axis)?;
        let part = |category, ranges| Part {
            category,
            axis,
            ranges,
        };
        let parts = match fusion {
            Fusion::GateUpStacked => {
                if n % 2 != 0 {
                    return None;
                }
                vec![
                    part(Category::FfnGate, vec![(0, n / 2)]),
                    part(Category::FfnUp, vec![(n / 2, n)]),
                ]
            }
            Fusion::QkvStacked => {
                let (q, kv) = match (self.dims.heads, self.dims.kv_heads, self.dims.head_dim) {
                    (Some(h), kvh, Some(d)) => (h * d, kvh.unwrap_or(h) * d),
                    _ if n % 3 == 0 => (n / 3, n / 3),
                    _ => return None,
                };
                if q + 2 * kv != n {
                    return None;
                }
                vec![
                    part(Category::AttnQ, vec![(0, q)]),
                    part(Category::AttnK, vec![(q, q + kv)]),
                    part(Category::AttnV, vec![(q + kv, n)]),
                ]
            }
            Fusion::QkvPerHead => self.per_head(n, axis)?,
            Fusion::KvPerHead => {
                let h = self.dims.heads?;
                let (nope, v) = (self.dims.qk_nope_head_dim?, self.dims.v_head_dim?);
                if h.checked_mul(nope + v)? != n {
                    return None;
                }
                let (mut k, mut vr) = (Vec::new(), Vec::new());
                for head in 0..h {
                    let s = head * (nope + v);
                    k.push((s, s + nope));
                    vr.push((s + nope, s + nope + v));
                }
                vec![part(Category::AttnK, k), part(Category::AttnV, vr)]
            }
            Fusion::QkvGrouped => {
                let (h, d) = (self.dims.heads?, self.dims.head_dim?);
                let groups = if self.dims.falcon_new_arch {
                    self.dims.kv_heads.unwrap_or(h)
                } else if self.dims.falcon_multi_query {
                    1
                } else {
                    return self.per_head(n, axis);
                };
                if groups == 0 || h % groups != 0 || (h + 2 * groups) * d != n {
                    return None;
                }
                let qpg = h / groups;
                let stride = (qpg + 2) * d;
                let mut q = Vec::new();
                let mut k = Vec::new();
                let mut v = Vec::new();
                for g in 0..groups {
                    let s = g * stride;
                    q.push((s, s + qpg * d));
                    k.push((s + qpg * d, s + (qpg + 1) * d));
                    v.push((s + (qpg + 1) * d, s + stride));
                }
                vec![
                    part(Category::AttnQ, q),
                    part(Category::AttnK, k),
                    part(Category::AttnV, v),
                ]
            }
        };
        Some(parts)
    }

    fn per_head(&self, n: usize, axis: usize) -> Option<Vec<Part>> {
        let (h, d) = (self.dims.heads?, self.dims.head_dim?);
        if 3 * h * d != n {
            return None;
        }
        let mut ranges = [Vec::new(), Vec::new(), Vec::new()];
        for head in 0..h {
            for (j, r) in ranges.iter_mut().enumerate() {
                let s = head * 3 * d + j * d;
                r.push((s, s + d));
            }
        }
        let [q, k, v] = ranges;
        Some(vec![
            Part {
                category: Category::AttnQ,
                axis,
                ranges: q,
            },
            Part {
                category: Category::AttnK,
                axis,
                ranges: k,
            },
            Part {
                category: Category::AttnV,
                axis,
                ranges: v,
            },
        ])
    }
}

fn ends_at_boundary(s: &str, suffix: &str) -> bool {
    s == suffix || (s.ends_with(suffix) && s[..s.len() - suffix.len()].ends_with('.'))
}

fn contains_at_boundary(s: &str, needle: &str) -> bool {
    s.match_indices(needle)
        .any(|(i, _)| i == 0 || s.as_bytes()[i - 1] == b'.')
}

#[cfg(test)]
mod moe_tests;
#[cfg(test)]
mod tests;
