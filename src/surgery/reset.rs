//! Half-reset: TUNED with part of its parameters put back to their BASE values.
//!
//! The part is a [`Plan`] read the way training reads it: what the plan trains keeps its TUNED
//! value, what it freezes goes back to BASE. So `reset --plan P` undoes exactly the updates a
//! stage trained with P would not have made, and a strategy draw at reset ratio r is the plan
//! that trains a fraction 1 − r. Inputs are ordered `[BASE, TUNED]`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use indexmap::IndexMap;

use super::{Combine, TensorOp, TensorView};
use crate::arch::{Category, Layout};
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::plan::{ElementFn, Entry, Fingerprint, Plan, Summary, FORMAT_VERSION};

pub const BASE: usize = 0;
pub const TUNED: usize = 1;

/// The reset combine: per element, TUNED where the plan trains, BASE where it freezes.
#[derive(Debug, Clone)]
pub struct Reset {
    pub plan: Plan,
}

impl Combine for Reset {
    fn keeps_primary_tensors(&self) -> bool {
        true
    }

    fn tensor<'a>(&'a self, t: &TensorView<'a>) -> Result<TensorOp<'a>> {
        let entry = self.plan.entry(t.name).ok_or_else(|| {
            Error::Internal(format!("plan has no entry for `{}` after checking", t.name))
        })?;
        Ok(match entry.element_fn(t.name, t.shape) {
            ElementFn::Const(true) => TensorOp::Copy(TUNED),
            ElementFn::Const(false) => TensorOp::Copy(BASE),
            f => TensorOp::Pick(Box::new(move |start, sel| {
                f.fill(start, sel, TUNED as u8, BASE as u8)
            })),
        })
    }
}

fn tensors_of(ck: &Checkpoint) -> impl Iterator<Item = (&str, &[usize])> {
    ck.tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
}

crate::choice! {
    /// How `reset --strategy` picks the part of TUNED that goes back to BASE.
    pub enum ResetStrategy {
        /// The paper's rule per layer: 2 of 4 attention matrices, 1.5 of 3 FFN matrices on
        /// average, 1 of 2 norms.
        Category = "category",
        /// A random part of the layers, whole.
        Layer = "layer",
        /// A random part of all weight matrices of the model.
        Model = "model",
        /// Each element by a seeded draw: exactly round(ratio x numel) of every tensor.
        Element = "element",
        /// Everything but embeddings and head (unless the flags add them).
        All = "all",
        /// Nothing (TUNED unchanged, unless the flags add embeddings or head).
        None = "none",
    }
}

/// A reset drawn by a selection strategy.
#[derive(Debug, Clone)]
pub struct StrategyRequest {
    pub strategy: ResetStrategy,
    /// Fraction of the draw that is reset (the plan trains 1 - ratio).
    pub ratio: f64,
    pub seed: u64,
    pub stage: u64,
    pub reset_embeddings: bool,
    pub reset_head: bool,
}

/// The plan whose frozen part a strategy reset puts back: the selection machinery of
/// `hft plan` at train ratio `1 - ratio`. Ratio 0 and `none` are "everything trains", ratio 1
/// and `all` "nothing trains", whatever the strategy, so the extremes are exactly TUNED and
/// BASE outside embeddings and head. In between the final norm keeps the strategy's default
/// (it trains in the known reimplementation of the paper's rule, so it is not reset).
pub fn strategy_plan(tuned: &Checkpoint, req: &StrategyRequest) -> Result<Plan> {
    if !req.ratio.is_finite() || !(0.0..=1.0).contains(&req.ratio) {
        return Err(Error::field(
            "ratio",
            format!(
                "{} is outside [0, 1]: it is the fraction of parameters reset",
                req.ratio
            ),
        ));
    }
    use crate::select::{self, ModelInfo, SelectOptions, Strategy};
    let (strategy, train) = match req.strategy {
        ResetStrategy::None => (Strategy::Full, 1.0),
        ResetStrategy::All => (Strategy::None, 0.0),
        _ if req.ratio == 0.0 => (Strategy::Full, 1.0),
        _ if req.ratio == 1.0 => (Strategy::None, 0.0),
        ResetStrategy::Category => (Strategy::Category, 1.0 - req.ratio),
        ResetStrategy::Layer => (Strategy::Layer, 1.0 - req.ratio),
        ResetStrategy::Model => (Strategy::Model, 1.0 - req.ratio),
        ResetStrategy::Element => (Strategy::Element, 1.0 - req.ratio),
    };
    let mut opts = SelectOptions::new(strategy, train, req.seed);
    opts.stage = req.stage;
    opts.embeddings = Some(!req.reset_embeddings);
    opts.head = Some(!req.reset_head);
    if strategy == Strategy::None {
        opts.final_norm = Some(false);
    }
    let mut plan = select::build(&ModelInfo::from_checkpoint(tuned), &opts, None)?;
    set_embeddings_and_head(
        &mut plan,
        &Layout::for_checkpoint(tuned),
        req.reset_embeddings,
        req.reset_head,
    );
    Ok(plan)
}

/// A plan that freezes (resets) exactly the tensors named in `text` (one name a line; blank
/// lines and `#` comments ignored) and trains everything else. Names the model lacks are an
/// error naming them.
pub fn plan_from_names(tuned: &Checkpoint, text: &str, source: &Path) -> Result<Plan> {
    let mut wanted = HashSet::new();
    let mut unknown = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        if tuned.get(name).is_none() {
            unknown.push(format!("line {}: `{name}`", n + 1));
        }
        wanted.insert(name.to_string());
    }
    if !unknown.is_empty() {
        let more = unknown.len().saturating_sub(3);
        unknown.truncate(3);
        return Err(Error::input(
            source,
            format!(
                "names tensors the model does not have: {}{}",
                unknown.join(", "),
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    let layout = Layout::for_checkpoint(tuned);
    let tensors: IndexMap<String, Entry> = tuned
        .tensors()
        .iter()
        .map(|t| {
            let e = if wanted.contains(&t.name) {
                Entry::FREEZE
            } else {
                Entry::TRAIN
            };
            (t.name.clone(), e)
        })
        .collect();
    let mut plan = Plan {
        format: FORMAT_VERSION,
        strategy: "names".into(),
        ratio: 0.0,
        seed: 0,
        stage: 0,
        model: Fingerprint::of(&layout, tensors_of(tuned)),
        notes: vec![format!("reset the tensors listed in {}", source.display())],
        options: IndexMap::new(),
        schedule: None,
        summary: Summary::default(),
        tensors,
    };
    let report = ResetReport::new(&plan, tuned, &layout);
    plan.ratio = 1.0 - report.fraction();
    // The summary says what the entries train, as a plan file must.
    let (mut trainable, mut total) = (0u64, 0u64);
    for (name, shape) in tensors_of(tuned) {
        total += shape.iter().product::<usize>() as u64;
        trainable += plan.entry(name).map_or(0, |e| e.trainable(shape));
    }
    plan.summary.all = crate::plan::Count {
        trainable,
        total,
        fraction: trainable as f64 / total.max(1) as f64,
    };
    Ok(plan)
}

/// Embeddings and the LM head follow the paper by default: they always train, so a reset
/// leaves them TUNED. The flags put them back to BASE instead. Applied on top of a strategy's
/// draw (never to a plan file, which says what it means).
pub fn set_embeddings_and_head(
    plan: &mut Plan,
    layout: &Layout,
    reset_embeddings: bool,
    reset_head: bool,
) {
    for (name, entry) in plan.tensors.iter_mut() {
        match layout.role(name).category {
            Category::Embed | Category::PosEmbed => {
                *entry = if reset_embeddings {
                    Entry::FREEZE
                } else {
                    Entry::TRAIN
                }
            }
            Category::LmHead => {
                *entry = if reset_head {
                    Entry::FREEZE
                } else {
                    Entry::TRAIN
                }
            }
            _ => {}
        }
    }
}

/// Checks a plan against TUNED (names, shapes, ranges) before anything is written.
pub fn check_plan(plan: &Plan, plan_path: &Path, tuned: &Checkpoint) -> Result<()> {
    plan.check(plan_path, tensors_of(tuned))
}

/// What a reset puts back in one layer (or outside the layers).
#[derive(Debug, Clone, Default)]
pub struct LayerReset {
    /// Tensors reset: name relative to the layer, fraction of its elements reset.
    pub tensors: Vec<(String, f64)>,
    pub reset: u64,
    pub total: u64,
}

/// What a reset puts back, per layer and overall.
#[derive(Debug, Clone)]
pub struct ResetReport {
    /// Per layer index; `None` holds the tensors outside layers.
    pub layers: BTreeMap<Option<usize>, LayerReset>,
    pub reset: u64,
    pub total: u64,
}

impl ResetReport {
    pub fn new(plan: &Plan, tuned: &Checkpoint, layout: &Layout) -> Self {
        let mut layers: BTreeMap<Option<usize>, LayerReset> = BTreeMap::new();
        let (mut reset, mut total) = (0u64, 0u64);
        for t in tuned.tensors() {
            let n = t.numel() as u64;
            let frozen = plan
                .entry(&t.name)
                .map_or(0, |e| n - e.trainable(&t.shape).min(n));
            let role = layout.role(&t.name);
            let row = layers.entry(role.layer).or_default();
            if frozen > 0 {
                row.tensors.push((
                    short_name(&t.name, role.layer),
                    frozen as f64 / n.max(1) as f64,
                ));
            }
            row.reset += frozen;
            row.total += n;
            reset += frozen;
            total += n;
        }
        ResetReport {
            layers,
            reset,
            total,
        }
    }

    /// Fraction of all parameters reset.
    pub fn fraction(&self) -> f64 {
        self.reset as f64 / self.total.max(1) as f64
    }
}

/// `model.layers.3.self_attn.q_proj.weight` → `self_attn.q_proj`; a bias keeps `.bias`.
fn short_name(name: &str, layer: Option<usize>) -> String {
    let rel = match layer {
        Some(l) => {
            let marker = format!(".{l}.");
            name.find(&marker)
                .map_or(name, |i| &name[i + marker.len()..])
        }
        None => name,
    };
    rel.strip_suffix(".weight").unwrap_or(rel).to_string()
}
