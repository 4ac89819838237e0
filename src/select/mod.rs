//! Selection: which parameters train in a stage. Every strategy is a function from a model's
//! tensor names and shapes (plus weights or a diff, for the informed ones), the options, the
//! seed and the stage to a [`Plan`]. `hft plan` writes the result; `hft reset --strategy`
//! resets what it freezes; `hft run` trains with it.
//!
//! Strategies decide per *unit* (see [`units`]: a matrix with its bias, a part of a fused
//! tensor, a norm), and the units are folded back into per-tensor entries: a fused tensor some
//! of whose parts train becomes [`Entry::Rows`]. Overrides then apply in a fixed order: the
//! strategy's defaults (embeddings, head and final norm train), the embedding/head/norm flags,
//! then `--include` (forced to train) and `--exclude` (forced frozen; it wins over include).
//!
//! Randomness: every draw is `rng::draw`/`rng::permutation` under `rng::key(stage_seed, label)`
//! with a fixed label per decision (`category/attention/layer/3`, ...), so a plan is a pure
//! function of its inputs and one decision does not shift when another changes.

pub mod config;
mod informed;
mod model;
mod strategies;
pub mod units;

#[cfg(test)]
mod moe_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use indexmap::IndexMap;
use regex::Regex;
use serde_json::{json, Value};

use crate::defaults;
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::plan::abbreviate;
use crate::plan::{Entry, Plan, Schedule, FORMAT_VERSION};
use crate::rng;
use units::{Kind, Units};

pub use model::ModelInfo;

crate::choice! {
    /// How a plan chooses what trains.
    pub enum Strategy {
        /// The paper's rule per layer: 2 of 4 attention matrices, FFN 2 of 3 in half the layers
        /// and 1 of 3 in the rest, 1 of 2 norms.
        Category = "category",
        /// Whole layers: a random `ratio` of them train.
        Layer = "layer",
        /// A random `ratio` of all weight matrices of the model (and of all norms).
        Model = "model",
        /// Every parameter tensor by a seeded element mask at exactly `ratio`.
        Element = "element",
        /// Everything trains (the full fine-tuning baseline).
        Full = "full",
        /// Nothing trains.
        None = "none",
        /// Matrices by weight RMS (needs the weights): the largest train.
        Magnitude = "magnitude",
        /// Matrices by relative change in a previous stage's `hft diff --format json`.
        Delta = "delta",
        /// LISA: gamma random layers train per period of K steps; embeddings and head always.
        Lisa = "lisa",
    }
}

crate::choice! {
    /// How `category` picks among the matrices the count rule allows.
    pub enum Balance {
        /// Uniformly at random (the paper).
        None = "none",
        /// The allowed subset whose parameter count is closest to the ratio (grouped-query
        /// attention makes k and v smaller than q and o).
        Params = "params",
    }
}

crate::choice! {
    /// For the informed strategies: train the highest or the lowest scores.
    pub enum Prefer {
        Least = "least",
        Most = "most",
    }
}

/// The LISA schedule's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LisaOptions {
    /// gamma: layers that train per period (LMFlow's default is 2).
    pub layers: usize,
    /// K: optimizer steps per period (LMFlow's default is 20).
    pub interval: u64,
    /// How many periods the schedule lists.
    pub periods: usize,
    /// The period whose state the plan's tensors section shows.
    pub period: u64,
}

impl Default for LisaOptions {
    fn default() -> Self {
        LisaOptions {
            layers: defaults::LISA_LAYERS,
            interval: defaults::LISA_INTERVAL,
            periods: defaults::LISA_PERIODS,
            period: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SelectOptions {
    pub strategy: Strategy,
    /// The fraction of parameters that trains (`reset` passes 1 - its reset ratio).
    pub ratio: f64,
    pub seed: u64,
    pub stage: u64,
    pub balance: Balance,
    /// Regexes (searched, not anchored, in tensor names) of tensors forced to train.
    pub include: Vec<String>,
    /// Regexes of tensors forced frozen; wins over `include`.
    pub exclude: Vec<String>,
    /// `Some(true)` train / `Some(false)` freeze; `None` leaves the strategy's default.
    pub embeddings: Option<bool>,
    pub head: Option<bool>,
    /// Layer norms (all of them, instead of the draw) and the final norm.
    pub norms: Option<bool>,
    /// The final norm alone (wins over `norms`). Default: trains, as the known
    /// reimplementation of HFT does; the paper does not say.
    pub final_norm: Option<bool>,
    /// `hft diff --format json` of the previous stage, for `delta`.
    pub diff: Option<PathBuf>,
    /// `delta` trains the least-moved by default, `magnitude` the largest.
    pub prefer: Option<Prefer>,
    pub lisa: LisaOptions,
}

impl SelectOptions {
    pub fn new(strategy: Strategy, ratio: f64, seed: u64) -> Self {
        SelectOptions {
            strategy,
            ratio,
            seed,
            stage: 0,
            balance: Balance::None,
            include: Vec::new(),
            exclude: Vec::new(),
            embeddings: None,
            head: None,
            norms: None,
            final_norm: None,
            diff: None,
            prefer: None,
            lisa: LisaOptions::default(),
        }
    }

    /// Settings beyond the header fields, recorded in the plan so it says how to remake it.
    fn recorded(&self) -> IndexMap<String, Value> {
        let mut o = IndexMap::new();
        let flag = |b: bool| json!(if b { "train" } else { "freeze" });
        if self.balance == Balance::Params {
            o.insert("balance".into(), json!("params"));
        }
        if !self.include.is_empty() {
            o.insert("include".into(), json!(self.include));
        }
        if !self.exclude.is_empty() {
            o.insert("exclude".into(), json!(self.exclude));
        }
        for (k, v) in [
            ("embeddings", self.embeddings),
            ("head", self.head),
            ("norms", self.norms),
            ("final_norm", self.final_norm),
        ] {
            if let Some(b) = v {
                o.insert(k.into(), flag(b));
            }
        }
        if let Some(p) = self.prefer {
            o.insert("prefer".into(), json!(p.as_str()));
        }
        if let Some(d) = &self.diff {
            o.insert("diff".into(), json!(d.display().to_string()));
        }
        o
    }
}

/// The seed a stage draws with: the seed itself for stage 0, `rng::draw(seed, stage)`
/// (= `splitmix64(seed ^ splitmix64(stage))`) after, so every stage of a continual sequence
/// gets a fresh, reproducible draw from one user seed. Element masks of a plan carry this
/// mixed seed, so rebuilding them needs nothing else.
pub fn stage_seed(seed: u64, stage: u64) -> u64 {
    if stage == 0 {
        seed
    } else {
        rng::draw(seed, stage)
    }
}

/// A strategy's decision for one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Train,
    Freeze,
    /// An element mask at the plan's ratio on every member tensor.
    Mask,
}

/// What a strategy returns before overrides.
pub(crate) struct Drawn {
    pub picks: Vec<Pick>,
    pub notes: Vec<String>,
    pub schedule: Option<Schedule>,
    /// The ratio the plan header records (LISA: gamma / layers).
    pub ratio: f64,
}

/// Builds the plan for `model`. `weights` is needed by `magnitude` only (the model's own
/// checkpoint; read tensor by tensor).
pub fn build(
    model: &ModelInfo,
    opts: &SelectOptions,
    weights: Option<&Checkpoint>,
) -> Result<Plan> {
    if !opts.ratio.is_finite() || !(0.0..=1.0).contains(&opts.ratio) {
        return Err(Error::field(
            "ratio",
            format!(
                "{} is outside [0, 1]: it is the fraction of parameters that trains",
                opts.ratio
            ),
        ));
    }
    if opts.balance == Balance::Params && opts.strategy != Strategy::Category {
        return Err(Error::field(
            "balance",
            format!(
                "`params` applies to strategy `category` only, not `{}`",
                opts.strategy.as_str()
            ),
        ));
    }
    if opts.strategy == Strategy::Lisa && !(opts.include.is_empty() && opts.exclude.is_empty()) {
        return Err(Error::field(
            "include",
            "forcing tensors in or out cannot be combined with strategy `lisa`: its layers \
             change every period",
        ));
    }
    if opts.diff.is_some() && opts.strategy != Strategy::Delta {
        return Err(Error::field("diff", "is used by strategy `delta` only"));
    }
    let compile = |res: &[String], flag: &str| -> Result<Vec<Regex>> {
        res.iter()
            .map(|r| {
                Regex::new(r).map_err(|e| {
                    Error::field(
                        flag,
                        format!("`{r}` is not a valid regex: {}", first_line(&e.to_string())),
                    )
                })
            })
            .collect()
    };
    let include = compile(&opts.include, "include")?;
    let exclude = compile(&opts.exclude, "exclude")?;

    let us = units::units(model);
    let seed = stage_seed(opts.seed, opts.stage);
    let mut drawn = match opts.strategy {
        Strategy::Category => strategies::category(&us, opts, seed),
        Strategy::Layer => strategies::layer(&us, opts.ratio, seed),
        Strategy::Model => strategies::model(&us, opts.ratio, seed),
        Strategy::Element => strategies::uniform(&us, Pick::Mask, opts.ratio),
        Strategy::Full => strategies::uniform(&us, Pick::Train, opts.ratio),
        Strategy::None => strategies::uniform(&us, Pick::Freeze, opts.ratio),
        Strategy::Magnitude => {
            let w = weights.ok_or_else(|| {
                Error::field(
                    "strategy",
                    format!(
                        "`magnitude` needs the weights, and {} is a config.json: give the checkpoint",
                        model.source.display()
                    ),
                )
            })?;
            let scores = informed::magnitude_scores(model, &us, w)?;
            let prefer = opts.prefer.unwrap_or(Prefer::Most);
            informed::by_score(&us, &scores, opts.ratio, prefer, seed, "weight RMS")
        }
        Strategy::Delta => {
            let path = opts.diff.as_ref().ok_or_else(|| {
                Error::field(
                    "diff",
                    "strategy `delta` needs a previous stage's diff of this model (the JSON of hft diff)",
                )
            })?;
            let scores = informed::delta_scores(model, &us, path)?;
            let prefer = opts.prefer.unwrap_or(Prefer::Least);
            informed::by_score(&us, &scores, opts.ratio, prefer, seed, "relative change")
        }
        Strategy::Lisa => strategies::lisa(&us, &opts.lisa, seed)?,
    };
    if !us.unsplit.is_empty() {
        drawn.notes.push(format!(
            "{} fused tensor(s) could not be split into q/k/v or gate/up (no config.json sizes \
             that fit the shape), so each is drawn as one unit: {}",
            us.unsplit.len(),
            abbreviate(&us.unsplit)
        ));
    }
    apply_flags(&us, opts, &mut drawn);
    let mask_seed = seed;
    let mut tensors = assemble(model, &us, &drawn.picks, opts.ratio, mask_seed)?;
    force(model, &include, &exclude, &mut tensors, &mut drawn.notes);

    let summary = units::summarize(model, &us, &tensors);
    Ok(Plan {
        format: FORMAT_VERSION,
        strategy: opts.strategy.as_str().to_string(),
        ratio: drawn.ratio,
        seed: opts.seed,
        stage: opts.stage,
        model: model.fingerprint(),
        notes: drawn.notes,
        options: opts.recorded(),
        schedule: drawn.schedule,
        summary,
        tensors,
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The embedding/head/norm flags, applied on top of the strategy's picks.
fn apply_flags(us: &Units, opts: &SelectOptions, drawn: &mut Drawn) {
    let pick = |b: bool| if b { Pick::Train } else { Pick::Freeze };
    for (u, p) in us.units.iter().zip(drawn.picks.iter_mut()) {
        let flag = match u.kind {
            Kind::Embed => opts.embeddings,
            Kind::Head => opts.head,
            Kind::Norm => opts.norms,
            Kind::FinalNorm => opts.final_norm.or(opts.norms),
            _ => None,
        };
        if let Some(b) = flag {
            *p = pick(b);
        }
    }
    if opts.head.is_some() && !us.units.iter().any(|u| u.kind == Kind::Head) {
        drawn.notes.push(
            "the head is tied to the embeddings (no separate head tensor): the head flag has no effect; \
             the embeddings flag decides"
                .into(),
        );
    }
}

/// Folds unit picks into one entry per tensor, in the model's order.
fn assemble(
    model: &ModelInfo,
    us: &Units,
    picks: &[Pick],
    ratio: f64,
    mask_seed: u64,
) -> Result<IndexMap<String, Entry>> {
    type Parts = Vec<(Option<(usize, Vec<(usize, usize)>)>, Pick)>;
    let mut per: Vec<Parts> = vec![Vec::new(); model.tensors.len()];
    for (u, &p) in us.units.iter().zip(picks) {
        for m in &u.members {
            per[m.tensor].push((m.part.clone(), p));
        }
    }
    let mask = Entry::Mask {
        mask: ratio,
        seed: mask_seed,
    };
    let mut out = IndexMap::with_capacity(model.tensors.len());
    for (ti, (name, _)) in model.tensors.iter().enumerate() {
        let members = &per[ti];
        let all = |want: Pick| members.iter().all(|(_, p)| *p == want);
        let entry = if members.is_empty() || all(Pick::Freeze) {
            Entry::FREEZE
        } else if all(Pick::Train) {
            Entry::TRAIN
        } else if all(Pick::Mask) {
            mask.clone()
        } else if members.iter().any(|(_, p)| *p == Pick::Mask) {
            return Err(Error::Internal(format!(
                "`{name}`: an element mask on some parts of a fused tensor only"
            )));
        } else {
            let mut axis = 0;
            let mut rows: Vec<[usize; 2]> = Vec::new();
            for (part, p) in members {
                let Some((a, ranges)) = part else {
                    return Err(Error::Internal(format!(
                        "`{name}`: a whole-tensor member mixed with parts"
                    )));
                };
                axis = *a;
                if *p == Pick::Train {
                    rows.extend(ranges.iter().map(|&(s, e)| [s, e]));
                }
            }
            rows.sort_unstable();
            let mut merged: Vec<[usize; 2]> = Vec::new();
            for r in rows {
                match merged.last_mut() {
                    Some(last) if last[1] >= r[0] => last[1] = last[1].max(r[1]),
                    _ => merged.push(r),
                }
            }
            Entry::Rows { axis, rows: merged }
        };
        out.insert(name.clone(), entry);
    }
    Ok(out)
}

/// `--include` / `--exclude`: whole tensors forced to train or frozen. Buffers never train.
fn force(
    model: &ModelInfo,
    include: &[Regex],
    exclude: &[Regex],
    tensors: &mut IndexMap<String, Entry>,
    notes: &mut Vec<String>,
) {
    if include.is_empty() && exclude.is_empty() {
        return;
    }
    let mut forced_in = Vec::new();
    let mut forced_out = Vec::new();
    let mut buffers = Vec::new();
    for (name, entry) in tensors.iter_mut() {
        if exclude.iter().any(|r| r.is_match(name)) {
            if *entry != Entry::FREEZE {
                forced_out.push(name.clone());
            }
            *entry = Entry::FREEZE;
        } else if include.iter().any(|r| r.is_match(name)) {
            if model.layout.role(name).category == crate::arch::Category::Buffer {
                buffers.push(name.clone());
            } else {
                if *entry != Entry::TRAIN {
                    forced_in.push(name.clone());
                }
                *entry = Entry::TRAIN;
            }
        }
    }
    if !include.is_empty() {
        notes.push(format!(
            "option `include` made {} tensor(s) train whole{}",
            forced_in.len(),
            if forced_in.is_empty() {
                String::new()
            } else {
                format!(": {}", abbreviate(&forced_in))
            }
        ));
    }
    if !exclude.is_empty() {
        notes.push(format!(
            "option `exclude` froze {} tensor(s){}",
            forced_out.len(),
            if forced_out.is_empty() {
                String::new()
            } else {
                format!(": {}", abbreviate(&forced_out))
            }
        ));
    }
    if !buffers.is_empty() {
        notes.push(format!(
            "option `include` matched buffers, which are not parameters and stay frozen: {}",
            abbreviate(&buffers)
        ));
    }
}
