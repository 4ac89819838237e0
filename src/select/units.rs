//! Selection units: the pieces a strategy draws from, and the way back from per-tensor entries
//! to per-unit figures (the plan summary and the terminal map).
//!
//! A unit is what the HFT rule counts as one thing: a weight matrix together with its bias and,
//! for Qwen3/Gemma, its q/k norm (they are meaningless apart); one part of a fused tensor (the
//! q rows of `qkv_proj`, with the q part of its bias); one norm module (weight and bias); the
//! embeddings; the head. Buffers (`inv_freq`, GPT-2's causal mask) are no unit: they never train.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::ModelInfo;
use crate::arch::Category;
use crate::plan::{mask_count, Count, Entry, State, Summary};

/// A tensor, or the index ranges of one part of a fused tensor, belonging to a unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Index into [`ModelInfo::tensors`].
    pub tensor: usize,
    /// `(axis, ranges)` for a part of a fused tensor; `None` for the whole tensor.
    pub part: Option<(usize, Vec<(usize, usize)>)>,
}

/// The group of the HFT rule a unit is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Attention,
    Ffn,
    Norm,
    Embed,
    Head,
    FinalNorm,
    /// The routers of mixture-of-experts layers.
    Router,
    /// Tensors the layout does not recognise.
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Attention => "attention",
            Kind::Ffn => "ffn",
            Kind::Norm => "norms",
            Kind::Embed => "embeddings",
            Kind::Head => "head",
            Kind::FinalNorm => "final norm",
            Kind::Router => "routers",
            Kind::Other => "other",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub layer: Option<usize>,
    pub category: Category,
    /// The routed expert a feed-forward matrix belongs to.
    pub expert: Option<usize>,
    /// The module path for norms and unknown tensors (several share a category in a layer);
    /// empty for matrices and parts, which are one per category and layer.
    pub module: String,
    pub kind: Kind,
    pub members: Vec<Member>,
    pub params: u64,
}

impl Unit {
    /// A short label for maps and notes: `q`, `gate`, `n1` (norms are numbered in their layer).
    pub fn label(&self, norm_ordinal: usize) -> String {
        match self.category {
            Category::AttnQ => "q".into(),
            Category::AttnK => "k".into(),
            Category::AttnV => "v".into(),
            Category::AttnO => "o".into(),
            Category::AttnQkv => "qkv".into(),
            Category::FfnGate => "gate".into(),
            Category::FfnUp => "up".into(),
            Category::FfnDown => "down".into(),
            Category::FfnGateUp => "gate_up".into(),
            Category::FfnIn => "in".into(),
            Category::FfnOut => "out".into(),
            Category::SharedFfnGate => "sgate".into(),
            Category::SharedFfnUp => "sup".into(),
            Category::SharedFfnDown => "sdown".into(),
            Category::Norm => format!("n{}", norm_ordinal + 1),
            c => c.as_str().into(),
        }
    }
}

/// The units of a model, plus what is not a unit.
#[derive(Debug, Clone)]
pub struct Units {
    /// Layer-major (global units last), attention, FFN, norms, others within a layer.
    pub units: Vec<Unit>,
    /// Indices of buffer tensors.
    pub buffers: Vec<usize>,
    /// Fused tensors whose split is unknown (no config, odd shape): one unit each.
    pub unsplit: Vec<String>,
}

impl Units {
    /// Layer indices present, ascending.
    pub fn layers(&self) -> Vec<usize> {
        let mut l: Vec<usize> = self.units.iter().filter_map(|u| u.layer).collect();
        l.sort_unstable();
        l.dedup();
        l
    }
}

fn kind_of(category: Category, layer: Option<usize>) -> Kind {
    match category {
        c if c.is_attention() => Kind::Attention,
        c if c.is_ffn() => Kind::Ffn,
        Category::Norm if layer.is_some() => Kind::Norm,
        Category::Embed | Category::PosEmbed => Kind::Embed,
        Category::LmHead => Kind::Head,
        Category::FinalNorm => Kind::FinalNorm,
        Category::Router => Kind::Router,
        _ => Kind::Other,
    }
}

fn part_params(shape: &[usize], axis: usize, ranges: &[(usize, usize)]) -> u64 {
    let numel: usize = shape.iter().product();
    let along = shape.get(axis).copied().unwrap_or(1).max(1);
    let len: usize = ranges.iter().map(|(a, b)| b - a).sum();
    (numel / along * len) as u64
}

/// Groups a model's tensors into units.
pub fn units(model: &ModelInfo) -> Units {
    let layout = &model.layout;
    type Key = (Option<usize>, Option<usize>, Category, String);
    let mut map: IndexMap<Key, Unit> = IndexMap::new();
    let mut buffers = Vec::new();
    let mut unsplit = Vec::new();
    // `at` is (layer, expert).
    let mut add = |at: (Option<usize>, Option<usize>), category, module: String, m, p| {
        let (layer, expert) = at;
        let u = map
            .entry((layer, expert, category, module.clone()))
            .or_insert_with(|| Unit {
                layer,
                category,
                expert,
                module,
                kind: kind_of(category, layer),
                members: Vec::new(),
                params: 0,
            });
        u.members.push(m);
        u.params += p;
    };
    for (ti, (name, shape)) in model.tensors.iter().enumerate() {
        let role = layout.role(name);
        if role.category == Category::Buffer {
            buffers.push(ti);
            continue;
        }
        let cat = role.unit_category();
        let at = (role.layer, role.expert);
        let numel = shape.iter().product::<usize>() as u64;
        if cat.is_matrix() {
            if let Some(parts) = layout.parts(name, shape) {
                for part in parts {
                    let p = part_params(shape, part.axis, &part.ranges);
                    let m = Member {
                        tensor: ti,
                        part: Some((part.axis, part.ranges)),
                    };
                    add(at, part.category, String::new(), m, p);
                }
                continue;
            }
            if matches!(cat, Category::AttnQkv | Category::FfnGateUp) {
                unsplit.push(name.clone());
            }
            let m = Member {
                tensor: ti,
                part: None,
            };
            add(at, cat, String::new(), m, numel);
        } else {
            let m = Member {
                tensor: ti,
                part: None,
            };
            add(at, cat, role.module.clone(), m, numel);
        }
    }
    let mut units: Vec<Unit> = map.into_values().collect();
    // Canonical order, independent of how names sort: draws index into it.
    units.sort_by(|a, b| {
        let la = a.layer.map_or(usize::MAX, |l| l);
        let lb = b.layer.map_or(usize::MAX, |l| l);
        (la, a.kind, a.expert, a.category)
            .cmp(&(lb, b.kind, b.expert, b.category))
            .then_with(|| crate::io::checkpoint::natural_cmp(&a.module, &b.module))
    });
    Units {
        units,
        buffers,
        unsplit,
    }
}

/// How many elements of `member` train under `entry` (exact for whole tensors and rows; for an
/// element mask over a fused tensor, the tensor's exact count split in proportion to the parts).
fn member_trainable(member: &Member, shape: &[usize], entry: &Entry) -> u64 {
    let Some((axis, ranges)) = &member.part else {
        return entry.trainable(shape);
    };
    let p = part_params(shape, *axis, ranges);
    match entry {
        Entry::Whole(State::Train) => p,
        Entry::Whole(State::Freeze) => 0,
        Entry::Mask { mask, .. } => {
            let numel = shape.iter().product::<usize>() as u64;
            let k = mask_count(*mask, numel);
            (k as f64 * p as f64 / numel.max(1) as f64).round() as u64
        }
        Entry::Rows { axis: ra, rows } => {
            if ra != axis {
                // Rows along another axis than the part: proportional share.
                let numel = shape.iter().product::<usize>() as u64;
                let k = entry.trainable(shape);
                return (k as f64 * p as f64 / numel.max(1) as f64).round() as u64;
            }
            let numel: usize = shape.iter().product();
            let along = shape.get(*axis).copied().unwrap_or(1).max(1);
            let inner = numel / along;
            let overlap: usize = ranges
                .iter()
                .map(|&(a, b)| {
                    rows.iter()
                        .map(|[c, d]| b.min(*d).saturating_sub(a.max(*c)))
                        .sum::<usize>()
                })
                .sum();
            (overlap * inner) as u64
        }
    }
}

/// Trainable and total parameters of one unit under a plan's entries.
#[derive(Debug, Clone)]
pub struct UnitState {
    pub unit: usize,
    pub trainable: u64,
    pub total: u64,
}

/// Per-unit trainable counts under `entries` (tensor name → entry; missing names count as
/// frozen).
pub fn unit_states(
    model: &ModelInfo,
    units: &Units,
    entries: &IndexMap<String, Entry>,
) -> Vec<UnitState> {
    units
        .units
        .iter()
        .enumerate()
        .map(|(ui, u)| {
            let trainable = u
                .members
                .iter()
                .map(|m| {
                    let (name, shape) = &model.tensors[m.tensor];
                    entries
                        .get(name)
                        .map_or(0, |e| member_trainable(m, shape, e))
                })
                .sum();
            UnitState {
                unit: ui,
                trainable,
                total: u.params,
            }
        })
        .collect()
}

fn count(trainable: u64, total: u64) -> Count {
    Count {
        trainable,
        total,
        fraction: if total == 0 {
            0.0
        } else {
            // Rounded so the file stays readable; counts are exact.
            (trainable as f64 / total as f64 * 1e6).round() / 1e6
        },
    }
}

/// The plan summary: parameters (buffers excluded) overall, per layer (`global` for tensors
/// outside the layers) and per category (biases and q/k norms counted with their matrix, parts
/// of fused tensors with their own category).
pub fn summarize(model: &ModelInfo, units: &Units, entries: &IndexMap<String, Entry>) -> Summary {
    let states = unit_states(model, units, entries);
    let mut all = (0u64, 0u64);
    let mut layers: BTreeMap<Option<usize>, (u64, u64)> = BTreeMap::new();
    let mut cats: BTreeMap<Category, (u64, u64)> = BTreeMap::new();
    for s in &states {
        let u = &units.units[s.unit];
        all.0 += s.trainable;
        all.1 += s.total;
        let l = layers.entry(u.layer).or_default();
        l.0 += s.trainable;
        l.1 += s.total;
        let c = cats.entry(u.category).or_default();
        c.0 += s.trainable;
        c.1 += s.total;
    }
    // Layers in order, `global` last.
    let mut layer_rows: IndexMap<String, Count> = layers
        .iter()
        .filter_map(|(l, (t, n))| l.map(|l| (l.to_string(), count(*t, *n))))
        .collect();
    if let Some((t, n)) = layers.get(&None) {
        layer_rows.insert("global".into(), count(*t, *n));
    }
    Summary {
        all: count(all.0, all.1),
        layers: layer_rows,
        categories: cats
            .iter()
            .map(|(c, (t, n))| (c.as_str().to_string(), count(*t, *n)))
            .collect(),
    }
}
