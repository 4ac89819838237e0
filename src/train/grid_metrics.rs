//! The metrics of a grid of runs (`--compare`, `--sweep`, `--seeds`): per strategy and setting,
//! mean and spread over seeds of what each run learned and forgot, and the matched view, which
//! reads forgetting at equal learning by interpolating along each strategy's sweep (seed by seed,
//! so the spread over seeds carries through). `report::grid` renders them in words, tables and
//! the learn-versus-forget plot.
//!
//! Why the matched view: a strategy that takes smaller effective steps learns each new task less
//! and so has less to forget; its better BWT at the same learning rate is not less forgetting.
//! Compared at equal learning, the difference that remains is the strategy's own.

use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::train::grid::{Cell, Setting};
pub use crate::train::grid_stats::{interpolate, Stat};
use crate::train::metrics::{learned, mean, RunReport};

/// What one run measured, reduced to the figures a comparison needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunPoint {
    pub strategy: String,
    pub setting: Option<Setting>,
    pub seed: Option<u64>,
    /// The run's directory, relative to the grid's output.
    pub dir: String,
    /// Mean exact-match diagonal over the tasks the strategy trained (see [`learned`]).
    pub learned: Option<f64>,
    /// −BWT of exact match: how much earlier tasks lost by the end (positive: forgotten).
    pub forgot: Option<f64>,
    /// R[i][i] of exact match per task (every stage's tasks, pinned stages included).
    #[serde(default)]
    pub diagonal: IndexMap<String, f64>,
    pub op: Option<f64>,
    pub bwt: Option<f64>,
    /// BWT of the completion loss: the rise of earlier tasks' loss (positive: forgotten).
    pub loss_rise: Option<f64>,
    /// Final loss on the eval sets without exact match (the general text), averaged.
    pub text_loss: Option<f64>,
    /// Prior knowledge lost: exact match before the first stage minus after the last, over
    /// the eval sets no stage trains (see [`crate::train::metrics::Prior`]).
    #[serde(default)]
    pub prior_em_lost: Option<f64>,
    /// Prior knowledge lost: the rise of those sets' loss (nats per token).
    #[serde(default)]
    pub prior_loss_rise: Option<f64>,
    /// The same per eval set, in the order the sets were scored.
    #[serde(default)]
    pub prior_sets: IndexMap<String, PriorChange>,
    pub step_seconds: Option<f64>,
    pub trainable: Option<f64>,
    pub optimizer_mib: Option<f64>,
    pub peak_rss_mib: f64,
}

/// What one eval set of prior knowledge lost in one run (positive: forgotten).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PriorChange {
    /// Exact match before − after; sets with exact match only.
    pub em_lost: Option<f64>,
    /// Loss after − before (nats per scored token); on a retention set, minus the change of
    /// the answer's mean log-probability per token.
    pub loss_rise: f64,
}

/// [`PriorChange`] over seeds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PriorStat {
    pub em_lost: Option<Stat>,
    pub loss_rise: Option<Stat>,
}

impl RunPoint {
    pub fn of(r: &RunReport, c: &Cell) -> RunPoint {
        let own: Vec<_> = r
            .stages
            .iter()
            .filter(|s| !s.pinned && s.plan.strategy == r.strategy)
            .collect();
        let text: Vec<f64> = r
            .stages
            .last()
            .map(|s| {
                s.scores
                    .values()
                    .filter(|x| x.exact_match.is_none())
                    .map(|x| x.loss)
                    .collect()
            })
            .unwrap_or_default();
        RunPoint {
            strategy: c.strategy.clone(),
            setting: c.setting.clone(),
            seed: c.seed,
            dir: c.dir.display().to_string(),
            learned: learned(r),
            forgot: r.metrics.exact_match.bwt.map(|b| -b),
            diagonal: r.metrics.exact_match.diagonal.clone(),
            op: r.metrics.exact_match.op,
            bwt: r.metrics.exact_match.bwt,
            loss_rise: r.metrics.loss.bwt,
            text_loss: mean(&text),
            prior_em_lost: r.metrics.prior.em_lost,
            prior_loss_rise: r.metrics.prior.loss_rise,
            prior_sets: r
                .metrics
                .prior
                .sets
                .iter()
                .map(|(n, s)| {
                    let change = PriorChange {
                        em_lost: s.before_em.zip(s.after_em).map(|(b, a)| b - a),
                        loss_rise: s.after_loss - s.before_loss,
                    };
                    (n.clone(), change)
                })
                .collect(),
            step_seconds: r.strategy_step_seconds(),
            trainable: mean(&own.iter().map(|s| s.plan.fraction).collect::<Vec<_>>()),
            optimizer_mib: own
                .iter()
                .map(|s| s.optimizer_bytes as f64 / (1 << 20) as f64)
                .reduce(f64::max),
            peak_rss_mib: r.stages.iter().map(|s| s.peak_rss_mib).fold(0.0, f64::max),
        }
    }
}

/// One (strategy, setting) over its seeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellSummary {
    pub strategy: String,
    pub setting: Option<Setting>,
    pub seeds: usize,
    pub learned: Option<Stat>,
    pub forgot: Option<Stat>,
    /// R[i][i] per task over seeds.
    #[serde(default)]
    pub diagonal: IndexMap<String, Stat>,
    pub op: Option<Stat>,
    pub bwt: Option<Stat>,
    pub loss_rise: Option<Stat>,
    pub text_loss: Option<Stat>,
    #[serde(default)]
    pub prior_em_lost: Option<Stat>,
    #[serde(default)]
    pub prior_loss_rise: Option<Stat>,
    /// Per eval set of prior knowledge.
    #[serde(default)]
    pub prior_sets: IndexMap<String, PriorStat>,
    pub step_seconds: Option<Stat>,
    pub trainable: Option<f64>,
    pub optimizer_mib: Option<f64>,
    pub peak_rss_mib: f64,
}

/// Forgetting of each strategy read at one level of learning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Matched {
    pub level: f64,
    pub rows: Vec<MatchedRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MatchedRow {
    pub strategy: String,
    /// Over the seeds whose sweep reaches the level.
    pub forgot: Option<Stat>,
    pub loss_rise: Option<Stat>,
    /// Prior knowledge lost at this level of learning (exact match, loss rise).
    #[serde(default)]
    pub prior_em_lost: Option<Stat>,
    #[serde(default)]
    pub prior_loss_rise: Option<Stat>,
    /// Seeds whose learning never reaches the level (no extrapolation).
    pub seeds_outside: usize,
}

/// The levels of learning to compare at: the quartiles of the range every strategy's mean
/// curve covers (its middle alone when the range is a point); none when the ranges do not
/// overlap or a strategy has fewer than two settings.
pub fn match_levels(cells: &[CellSummary]) -> Vec<f64> {
    let mut by: IndexMap<&str, Vec<f64>> = IndexMap::new();
    // The levels come from the training strategies: a post baseline learns less than the run
    // it is made from, and its range would otherwise shrink the common one to nothing. It is
    // read at those levels where its own sweep reaches them.
    for c in cells.iter().filter(|c| !is_baseline(&c.strategy)) {
        if let Some(l) = c.learned {
            by.entry(&c.strategy).or_default().push(l.mean);
        }
    }
    if by.is_empty() || by.values().any(|v| v.len() < 2) {
        return Vec::new();
    }
    let lo = by
        .values()
        .map(|v| v.iter().copied().fold(f64::INFINITY, f64::min))
        .fold(f64::NEG_INFINITY, f64::max);
    let hi = by
        .values()
        .map(|v| v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .fold(f64::INFINITY, f64::min);
    if lo > hi {
        return Vec::new();
    }
    if hi - lo < 1e-9 {
        return vec![lo];
    }
    [0.25, 0.5, 0.75]
        .iter()
        .map(|q| lo + q * (hi - lo))
        .collect()
}

/// Exact match per row (strategy and setting, stage or post baseline) and column (eval set),
/// mean over seeds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeatTable {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
}

/// The `schema` of a grid's `report.json`.
pub const SCHEMA: &str = "hft-grid/1";

/// The whole grid's report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GridReport {
    #[serde(default = "schema")]
    pub schema: String,
    pub recipe: String,
    /// The swept key, if any.
    pub sweep: Option<String>,
    pub strategies: Vec<String>,
    pub seeds: Vec<Option<u64>>,
    pub runs: Vec<RunPoint>,
    pub cells: Vec<CellSummary>,
    pub matched: Vec<Matched>,
    /// Exact match per (strategy and setting, stage or post baseline) and eval set, mean over
    /// seeds: the heatmap's data.
    #[serde(skip)]
    pub heat: Option<HeatTable>,
}

fn schema() -> String {
    SCHEMA.into()
}

impl GridReport {
    /// Aggregates the runs of `cells` (`reports[k]` is the run of `cells[k]`). `levels`, when
    /// given, replaces the automatic levels of the matched view.
    pub fn new(
        recipe: &Path,
        cells: &[Cell],
        reports: &[RunReport],
        levels: Option<&[f64]>,
    ) -> GridReport {
        let baselines = baseline_runs(cells, reports);
        let runs: Vec<RunPoint> = cells
            .iter()
            .zip(reports)
            .chain(baselines.iter().map(|(c, r)| (c, r)))
            .map(|(c, r)| RunPoint::of(r, c))
            .collect();
        let mut strategies: Vec<String> = Vec::new();
        let mut seeds: Vec<Option<u64>> = Vec::new();
        let mut keys: Vec<(String, Option<Setting>)> = Vec::new();
        for p in &runs {
            if !strategies.contains(&p.strategy) {
                strategies.push(p.strategy.clone());
            }
            if !seeds.contains(&p.seed) {
                seeds.push(p.seed);
            }
            let k = (p.strategy.clone(), p.setting.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        // Strategy-major order reads best in tables and is the plot's series order.
        keys.sort_by_key(|(s, _)| strategies.iter().position(|x| x == s));
        let summaries: Vec<CellSummary> = keys
            .iter()
            .map(|(s, set)| {
                let mine: Vec<&RunPoint> = runs
                    .iter()
                    .filter(|p| &p.strategy == s && &p.setting == set)
                    .collect();
                let st = |f: &dyn Fn(&RunPoint) -> Option<f64>| {
                    Stat::of(&mine.iter().filter_map(|p| f(p)).collect::<Vec<_>>())
                };
                CellSummary {
                    strategy: s.clone(),
                    setting: set.clone(),
                    seeds: mine.len(),
                    learned: st(&|p| p.learned),
                    forgot: st(&|p| p.forgot),
                    diagonal: mine
                        .first()
                        .map(|p| {
                            p.diagonal
                                .keys()
                                .filter_map(|t| {
                                    let v = st(&|q| q.diagonal.get(t).copied())?;
                                    Some((t.clone(), v))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    op: st(&|p| p.op),
                    bwt: st(&|p| p.bwt),
                    loss_rise: st(&|p| p.loss_rise),
                    text_loss: st(&|p| p.text_loss),
                    prior_em_lost: st(&|p| p.prior_em_lost),
                    prior_loss_rise: st(&|p| p.prior_loss_rise),
                    prior_sets: mine
                        .first()
                        .map(|p| {
                            p.prior_sets
                                .keys()
                                .map(|n| {
                                    let of = |q: &RunPoint| q.prior_sets.get(n).copied();
                                    let stat = PriorStat {
                                        em_lost: st(&|q| of(q)?.em_lost),
                                        loss_rise: st(&|q| Some(of(q)?.loss_rise)),
                                    };
                                    (n.clone(), stat)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    step_seconds: st(&|p| p.step_seconds),
                    trainable: mine.iter().find_map(|p| p.trainable),
                    optimizer_mib: mine.iter().find_map(|p| p.optimizer_mib),
                    peak_rss_mib: mine.iter().map(|p| p.peak_rss_mib).fold(0.0, f64::max),
                }
            })
            .collect();
        let levels = match levels {
            Some(l) => l.to_vec(),
            None => match_levels(&summaries),
        };
        let sweep = cells
            .iter()
            .find_map(|c| c.setting.as_ref().map(|s| s.key.clone()));
        let matched = if sweep.is_some() {
            levels
                .iter()
                .map(|&level| matched_at(&runs, &strategies, &seeds, level))
                .collect()
        } else {
            Vec::new()
        };
        let heat = heat(cells, reports, &keys);
        GridReport {
            schema: SCHEMA.into(),
            recipe: recipe.display().to_string(),
            sweep,
            strategies,
            seeds,
            runs,
            cells: summaries,
            matched,
            heat: Some(heat),
        }
    }
}

/// Whether a strategy name is a post baseline's (`STRATEGY+BASELINE`, see [`baseline_runs`]).
pub fn is_baseline(strategy: &str) -> bool {
    strategy.contains('+')
}

/// Each post-hoc baseline of a run as a run of its own, strategy `STRATEGY+BASELINE`: the run
/// with the baseline's model in place of its final one. So half-reset and WiSE-FT are read
/// exactly like the strategies they are alternatives to: what they learned and forgot, the
/// prior knowledge they lost, and (along a sweep) their forgetting at equal learning.
pub fn baseline_runs(cells: &[Cell], reports: &[RunReport]) -> Vec<(Cell, RunReport)> {
    let mut out = Vec::new();
    for (c, r) in cells.iter().zip(reports) {
        let Some(last) = r.stages.len().checked_sub(1) else {
            continue;
        };
        for p in &r.post {
            let mut b = r.clone();
            b.stages[last].scores = p.scores.clone();
            b.post.clear();
            b.finish();
            let mut bc = c.clone();
            bc.strategy = format!("{}+{}", c.strategy, p.name);
            bc.label = format!("{} {}", c.label, p.name);
            bc.dir = c.dir.join(&p.checkpoint);
            out.push((bc, b));
        }
    }
    out
}

/// Forgetting of each strategy at `level`, interpolated per seed along the sweep.
fn matched_at(
    runs: &[RunPoint],
    strategies: &[String],
    seeds: &[Option<u64>],
    level: f64,
) -> Matched {
    let rows = strategies
        .iter()
        .map(|s| {
            let mut forgot = Vec::new();
            let mut rise = Vec::new();
            let (mut prior_em, mut prior_loss) = (Vec::new(), Vec::new());
            let mut outside = 0;
            for seed in seeds {
                let mine: Vec<&RunPoint> = runs
                    .iter()
                    .filter(|p| &p.strategy == s && &p.seed == seed)
                    .collect();
                let pts = |f: &dyn Fn(&RunPoint) -> Option<f64>| -> Vec<(f64, f64)> {
                    mine.iter()
                        .filter_map(|p| Some((p.learned?, f(p)?)))
                        .collect()
                };
                match interpolate(&pts(&|p| p.forgot), level) {
                    Some(v) => forgot.push(v),
                    None => outside += 1,
                }
                if let Some(v) = interpolate(&pts(&|p| p.loss_rise), level) {
                    rise.push(v);
                }
                if let Some(v) = interpolate(&pts(&|p| p.prior_em_lost), level) {
                    prior_em.push(v);
                }
                if let Some(v) = interpolate(&pts(&|p| p.prior_loss_rise), level) {
                    prior_loss.push(v);
                }
            }
            MatchedRow {
                strategy: s.clone(),
                forgot: Stat::of(&forgot),
                loss_rise: Stat::of(&rise),
                prior_em_lost: Stat::of(&prior_em),
                prior_loss_rise: Stat::of(&prior_loss),
                seeds_outside: outside,
            }
        })
        .collect();
    Matched { level, rows }
}

/// Exact match after each stage (and post baseline), mean over seeds, one row per
/// (strategy and setting, stage), one column per eval set with exact match.
fn heat(cells: &[Cell], reports: &[RunReport], keys: &[(String, Option<Setting>)]) -> HeatTable {
    let names: Vec<String> = reports
        .first()
        .map(|r| {
            r.before
                .iter()
                .filter(|(_, s)| s.exact_match.is_some())
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for (strategy, setting) in keys {
        let mine: Vec<&RunReport> = cells
            .iter()
            .zip(reports)
            .filter(|(c, _)| &c.strategy == strategy && &c.setting == setting)
            .map(|(_, r)| r)
            .collect();
        let Some(first) = mine.first() else { continue };
        let tag = match setting {
            Some(s) => format!("{} {}", short(strategy), s.text),
            None => short(strategy),
        };
        let stage_rows = first
            .stages
            .iter()
            .map(|s| s.name.clone())
            .chain(first.post.iter().map(|p| p.name.clone()));
        for (i, name) in stage_rows.enumerate() {
            rows.push(format!("{tag} {name}"));
            values.push(
                names
                    .iter()
                    .map(|n| {
                        let v: Vec<f64> = mine
                            .iter()
                            .filter_map(|r| {
                                let scores = match r.stages.get(i) {
                                    Some(s) => &s.scores,
                                    None => &r.post.get(i - r.stages.len())?.scores,
                                };
                                scores.get(n)?.exact_match
                            })
                            .collect();
                        mean(&v)
                    })
                    .collect(),
            );
        }
    }
    HeatTable {
        rows,
        cols: names,
        values,
    }
}

fn short(s: &str) -> String {
    s.chars().take(4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_is_linear_between_points_and_refuses_to_extrapolate() {
        let pts = [(0.9, 0.6), (0.5, 0.2), (0.7, 0.5)];
        assert!((interpolate(&pts, 0.6).unwrap() - 0.35).abs() < 1e-12);
        assert!((interpolate(&pts, 0.8).unwrap() - 0.55).abs() < 1e-12);
        assert_eq!(interpolate(&pts, 0.5), Some(0.2));
        assert_eq!(interpolate(&pts, 0.9), Some(0.6));
        assert_eq!(interpolate(&pts, 0.95), None);
        assert_eq!(interpolate(&pts, 0.1), None);
        // Equal x: averaged.
        assert_eq!(
            interpolate(&[(0.5, 0.2), (0.5, 0.4)], 0.5),
            Some(0.30000000000000004)
        );
        assert_eq!(interpolate(&[], 0.5), None);
    }

    #[test]
    fn stats_use_the_sample_deviation() {
        let s = Stat::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.n), (2.0, 3));
        assert!((s.sd.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(Stat::of(&[4.0]).unwrap().sd, None);
        assert_eq!(Stat::of(&[]), None);
    }

    fn point(strategy: &str, lr: f64, seed: u64, learned: f64, forgot: f64) -> RunPoint {
        RunPoint {
            strategy: strategy.into(),
            setting: Some(Setting {
                key: "lr".into(),
                text: format!("{lr}"),
                value: lr,
                scale: false,
            }),
            seed: Some(seed),
            dir: String::new(),
            learned: Some(learned),
            forgot: Some(forgot),
            diagonal: IndexMap::new(),
            op: None,
            bwt: Some(-forgot),
            loss_rise: Some(forgot * 10.0),
            text_loss: None,
            prior_em_lost: Some(forgot / 2.0),
            prior_loss_rise: None,
            prior_sets: IndexMap::new(),
            step_seconds: None,
            trainable: None,
            optimizer_mib: None,
            peak_rss_mib: 0.0,
        }
    }

    #[test]
    fn matched_forgetting_is_interpolated_per_seed_on_a_hand_made_grid() {
        // full: learned 0.6 -> 1.0 as forgetting goes 0.4 -> 0.8 (seed 0) and 0.5 -> 0.9 (seed 1).
        // category: learned 0.4 -> 0.8 as forgetting goes 0.2 -> 0.6 (both seeds).
        let runs = vec![
            point("full", 1.0, 0, 0.6, 0.4),
            point("full", 2.0, 0, 1.0, 0.8),
            point("full", 1.0, 1, 0.6, 0.5),
            point("full", 2.0, 1, 1.0, 0.9),
            point("category", 1.0, 0, 0.4, 0.2),
            point("category", 2.0, 0, 0.8, 0.6),
            point("category", 1.0, 1, 0.4, 0.2),
            point("category", 2.0, 1, 0.8, 0.6),
        ];
        let strategies = vec!["full".to_string(), "category".to_string()];
        let seeds = vec![Some(0), Some(1)];
        let m = matched_at(&runs, &strategies, &seeds, 0.7);
        let full = m.rows[0].forgot.unwrap();
        assert!((full.mean - 0.55).abs() < 1e-12, "{full:?}");
        assert!(
            (full.sd.unwrap() - 0.05 * 2f64.sqrt()).abs() < 1e-12,
            "{full:?}"
        );
        let cat = m.rows[1].forgot.unwrap();
        assert!(
            (cat.mean - 0.5).abs() < 1e-12 && cat.sd == Some(0.0),
            "{cat:?}"
        );
        assert!((m.rows[1].loss_rise.unwrap().mean - 5.0).abs() < 1e-9);
        // Prior knowledge is read at equal learning the same way (here half of `forgot`).
        assert!((m.rows[0].prior_em_lost.unwrap().mean - 0.275).abs() < 1e-12);
        assert_eq!(m.rows[0].prior_loss_rise, None);
        // Level 0.9 is past category's range in both seeds: no extrapolation.
        let m = matched_at(&runs, &strategies, &seeds, 0.9);
        assert_eq!(m.rows[1].forgot, None);
        assert_eq!(m.rows[1].seeds_outside, 2);
    }
}
