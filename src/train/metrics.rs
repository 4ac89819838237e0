//! What a run measured, and its rendering: the score matrix R[j][i] (eval set i after stage j)
//! per metric, OP and BWT (definitions in the HFT paper: OP = mean over tasks of R[T][i],
//! BWT = mean over earlier tasks of R[T][i] − R[i][i]), the diagonal (how well each task was
//! learned), the rise of old tasks' completion loss, loss curves, the per-stage change summary
//! from `hft diff`, trainable fractions, throughput and memory. `report.json` and `report.md`
//! for one run (a grid of runs is summarised by [`crate::train::compare`]).

use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::train::eval::Score;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanInfo {
    pub strategy: String,
    pub ratio: f64,
    pub seed: u64,
    pub stage: u64,
    pub trainable: u64,
    pub total: u64,
    pub fraction: f64,
    /// For a plan the run derived from its own measurements (`delta`, `protect`): what it
    /// ranked by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
    /// For a schedule (`lisa`): the steps per period and the layers each period drew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

impl PlanInfo {
    pub fn of(p: &Plan) -> PlanInfo {
        PlanInfo {
            strategy: p.strategy.clone(),
            ratio: p.ratio,
            seed: p.seed,
            stage: p.stage,
            trainable: p.summary.all.trainable,
            total: p.summary.all.total,
            fraction: p.summary.all.fraction,
            derived_from: None,
            schedule: p.schedule.as_ref().map(|s| {
                let periods: Vec<String> = s.periods.iter().map(|l| format!("{l:?}")).collect();
                format!(
                    "layers drawn every {} steps: {}",
                    s.interval,
                    periods.join(", ")
                )
            }),
        }
    }
}

/// How much a stage moved the weights (relative L2 change ‖B−A‖/‖A‖), from `hft diff`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Change {
    pub rel_delta: Option<f64>,
    pub by_category: IndexMap<String, Option<f64>>,
    pub by_layer: IndexMap<String, Option<f64>>,
    /// Tensors the plan froze that differ from the stage start (always empty: checked).
    pub frozen_changed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageResult {
    pub index: usize,
    pub name: String,
    /// Eval sets that are this stage's task.
    pub tasks: Vec<String>,
    /// Checkpoint directory, relative to the run's output.
    pub checkpoint: String,
    pub plan: PlanInfo,
    pub steps: u64,
    pub epochs: f64,
    pub seconds: f64,
    pub step_seconds: f64,
    pub tokens_per_second: f64,
    pub optimizer_bytes: u64,
    pub peak_rss_mib: f64,
    /// Seconds spent scoring every eval set after the stage.
    #[serde(default)]
    pub eval_seconds: f64,
    /// (step, mean training loss since the previous point).
    pub curve: Vec<(u64, f64)>,
    pub scores: IndexMap<String, Score>,
    pub change: Change,
    /// The stage pins its own plan (so `--compare` does not change it).
    #[serde(default)]
    pub pinned: bool,
    /// Set when this stage was not retrained but copied from another strategy's identical run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_from: Option<String>,
    /// What the stage's checkpoint depended on ([`crate::train::recipe::Recipe::fingerprints`]), so that
    /// `--resume` retrains a stage whose settings changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<u64>,
}

impl StageResult {
    pub fn score_line(&self) -> String {
        self.scores
            .iter()
            .map(|(n, s)| match s.exact_match {
                Some(em) => format!("{n} {:.2}", em),
                None => format!("{n} loss {:.3}", s.loss),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PostResult {
    pub name: String,
    pub checkpoint: String,
    pub scores: IndexMap<String, Score>,
}

/// OP, BWT and the diagonal of one metric, over the tasks (eval sets a stage names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Summary {
    pub op: Option<f64>,
    pub bwt: Option<f64>,
    /// R[i][i] per task.
    pub diagonal: IndexMap<String, f64>,
    /// R[T][i] per task.
    pub last: IndexMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Metrics {
    /// Exact match (higher is better): OP and BWT as in the paper.
    pub exact_match: Summary,
    /// Mean loss on the task's scored tokens (lower is better): BWT > 0 is the rise of old
    /// tasks' completion loss.
    pub loss: Summary,
    /// The same figures with each post-hoc baseline as the final row.
    pub post: IndexMap<String, (Summary, Summary)>,
    /// What the model knew before the first stage and lost by the last.
    #[serde(default)]
    pub prior: Prior,
}

/// Forgetting of prior knowledge: the eval sets no stage trains (retention sets, plain text),
/// read after the last stage against the scores before the first. BWT cannot see this loss,
/// because it only compares tasks with themselves after they were trained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Prior {
    /// Mean over those sets with exact match of (before − after): positive means lost.
    pub em_lost: Option<f64>,
    /// Mean over those sets of (loss after − loss before), nats per scored token: positive
    /// means forgotten. On a retention set it is minus the change of the answer's mean
    /// log-probability per token.
    pub loss_rise: Option<f64>,
    pub sets: IndexMap<String, PriorSet>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PriorSet {
    pub before_em: Option<f64>,
    pub after_em: Option<f64>,
    pub before_loss: f64,
    pub after_loss: f64,
}

impl Prior {
    /// Over the sets of `before` that no stage names as its task, `after` the final scores.
    pub fn of(
        before: &IndexMap<String, Score>,
        after: &IndexMap<String, Score>,
        tasks: &[String],
    ) -> Prior {
        let sets: IndexMap<String, PriorSet> = before
            .iter()
            .filter(|(n, _)| !tasks.contains(n))
            .filter_map(|(n, b)| {
                let a = after.get(n)?;
                Some((
                    n.clone(),
                    PriorSet {
                        before_em: b.exact_match,
                        after_em: a.exact_match,
                        before_loss: b.loss,
                        after_loss: a.loss,
                    },
                ))
            })
            .collect();
        let lost: Vec<f64> = sets
            .values()
            .filter_map(|s| Some(s.before_em? - s.after_em?))
            .collect();
        let rise: Vec<f64> = sets
            .values()
            .map(|s| s.after_loss - s.before_loss)
            .collect();
        Prior {
            em_lost: mean(&lost),
            loss_rise: mean(&rise),
            sets,
        }
    }
}

/// The `schema` of a run's `run.json` and `report.json`.
pub const SCHEMA: &str = "hft-run/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    /// [`SCHEMA`]; files written before it existed read as version 1.
    #[serde(default = "schema")]
    pub schema: String,
    pub recipe: String,
    pub strategy: String,
    /// Scores of the model before any stage.
    pub before: IndexMap<String, Score>,
    pub stages: Vec<StageResult>,
    #[serde(default)]
    pub post: Vec<PostResult>,
    #[serde(default)]
    pub metrics: Metrics,
}

fn metric(s: &Score, em: bool) -> Option<f64> {
    if em {
        s.exact_match
    } else {
        Some(s.loss)
    }
}

fn schema() -> String {
    SCHEMA.into()
}

impl RunReport {
    pub fn new(recipe: &Path, strategy: &str, before: IndexMap<String, Score>) -> RunReport {
        RunReport {
            schema: SCHEMA.into(),
            recipe: recipe.display().to_string(),
            strategy: strategy.to_string(),
            before,
            stages: Vec::new(),
            post: Vec::new(),
            metrics: Metrics::default(),
        }
    }

    pub fn read(path: &Path) -> Result<RunReport> {
        let text = crate::io::input::read_text(path, crate::io::input::SMALL)?;
        serde_json::from_str(&text).map_err(|e| Error::input(path, format!("not a run state: {e}")))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialises") + "\n";
        crate::io::atomic::write_file(path, text.as_bytes())
    }

    /// (task, stage index) for every eval set a stage names as its task.
    pub fn tasks(&self) -> Vec<(String, usize)> {
        self.stages
            .iter()
            .flat_map(|s| s.tasks.iter().map(move |t| (t.clone(), s.index)))
            .collect()
    }

    fn summary(&self, last: &IndexMap<String, Score>, em: bool) -> Summary {
        let tasks: Vec<(String, usize)> = self
            .tasks()
            .into_iter()
            .filter(|(t, _)| last.get(t).and_then(|s| metric(s, em)).is_some())
            .collect();
        let mut s = Summary::default();
        let final_stage = self.stages.len().saturating_sub(1);
        let mut bwt = Vec::new();
        for (t, j) in &tasks {
            let r_last = metric(&last[t], em).expect("filtered");
            let r_diag = metric(&self.stages[*j].scores[t], em).unwrap_or(f64::NAN);
            s.diagonal.insert(t.clone(), r_diag);
            s.last.insert(t.clone(), r_last);
            if *j < final_stage {
                bwt.push(r_last - r_diag);
            }
        }
        s.op = mean(&s.last.values().copied().collect::<Vec<_>>());
        s.bwt = mean(&bwt);
        s
    }

    /// Computes the metrics from the stages and post results.
    pub fn finish(&mut self) {
        let Some(last) = self.stages.last() else {
            return;
        };
        let last = last.scores.clone();
        let tasks: Vec<String> = self.tasks().into_iter().map(|(t, _)| t).collect();
        self.metrics.prior = Prior::of(&self.before, &last, &tasks);
        self.metrics.exact_match = self.summary(&last, true);
        self.metrics.loss = self.summary(&last, false);
        self.metrics.post = self
            .post
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    (
                        self.summary(&p.scores, true),
                        self.summary(&p.scores, false),
                    ),
                )
            })
            .collect();
    }

    /// The eval sets, in the order they were scored.
    pub fn eval_names(&self) -> Vec<String> {
        self.before.keys().cloned().collect()
    }

    /// Rows of R for one metric: (label, values per eval set).
    pub fn matrix(&self, em: bool) -> Vec<(String, Vec<Option<f64>>)> {
        let names = self.eval_names();
        let row = |scores: &IndexMap<String, Score>| -> Vec<Option<f64>> {
            names
                .iter()
                .map(|n| scores.get(n).and_then(|s| metric(s, em)))
                .collect()
        };
        let mut rows = vec![("before".to_string(), row(&self.before))];
        for s in &self.stages {
            rows.push((format!("{} {}", s.index, s.name), row(&s.scores)));
        }
        for p in &self.post {
            rows.push((format!("post {}", p.name), row(&p.scores)));
        }
        rows
    }

    /// Mean seconds per step over stages trained with the run's strategy (not pinned ones, not
    /// shared copies): the figure to compare strategies by.
    pub fn strategy_step_seconds(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .stages
            .iter()
            .filter(|s| s.shared_from.is_none() && !s.pinned && s.plan.strategy == self.strategy)
            .map(|s| s.step_seconds)
            .collect();
        mean(&v)
    }
}

/// Mean learned: the exact-match diagonal R[i][i] averaged over the tasks of the stages the
/// run's strategy trained (stages with a plan of their own are the same in every cell, so they
/// only dilute the contrast); over every task when all stages pin their plans.
pub fn learned(r: &RunReport) -> Option<f64> {
    let diag = &r.metrics.exact_match.diagonal;
    let own: Vec<f64> = r
        .stages
        .iter()
        .filter(|s| !s.pinned)
        .flat_map(|s| s.tasks.iter())
        .filter_map(|t| diag.get(t).copied())
        .collect();
    let v = if own.is_empty() {
        diag.values().copied().collect()
    } else {
        own
    };
    mean(&v)
}

/// The mean of `v`; none for no values.
pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}
