//! What a run measured, and its rendering: the score matrix R[j][i] (eval set i after stage j)
//! per metric, OP and BWT (definitions in the HFT paper: OP = mean over tasks of R[T][i],
//! BWT = mean over earlier tasks of R[T][i] − R[i][i]), the diagonal (how well each task was
//! learned), the rise of old tasks' completion loss, loss curves, the per-stage change summary
//! from `hft diff`, trainable fractions, throughput and memory. `report.json` and `report.md`
//! for one run (a grid of runs is summarised by [`super::compare`]).

use std::fmt::Write;
use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::eval::Score;
use crate::error::{Error, Result};
use crate::plan::Plan;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanInfo {
    pub strategy: String,
    pub ratio: f64,
    pub seed: u64,
    pub stage: u64,
    pub trainable: u64,
    pub total: u64,
    pub fraction: f64,
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
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

impl RunReport {
    pub fn new(recipe: &Path, strategy: &str, before: IndexMap<String, Score>) -> RunReport {
        RunReport {
            recipe: recipe.display().to_string(),
            strategy: strategy.to_string(),
            before,
            stages: Vec::new(),
            post: Vec::new(),
            metrics: Metrics::default(),
        }
    }

    pub fn read(path: &Path) -> Result<RunReport> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
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

    fn eval_names(&self) -> Vec<String> {
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

    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# hft run: {} (strategy `{}`)\n",
            self.recipe, self.strategy
        );
        let names = self.eval_names();
        for (em, title) in [
            (true, "exact match (higher is better)"),
            (false, "mean loss per scored token, nats (lower is better)"),
        ] {
            let rows = self.matrix(em);
            if rows.iter().all(|(_, v)| v.iter().all(Option::is_none)) {
                continue;
            }
            let _ = writeln!(m, "## R: {title}\n");
            let _ = writeln!(m, "| after stage | {} |", names.join(" | "));
            let _ = writeln!(m, "|---|{}", "---:|".repeat(names.len()));
            for (label, vals) in rows {
                let cells: Vec<String> = vals.iter().map(|v| fmt(*v, 3)).collect();
                let _ = writeln!(m, "| {label} | {} |", cells.join(" | "));
            }
            m.push('\n');
        }
        let _ = writeln!(m, "## Forgetting\n");
        let _ = writeln!(m, "| figure | exact match | loss |");
        let _ = writeln!(m, "|---|---:|---:|");
        let (e, l) = (&self.metrics.exact_match, &self.metrics.loss);
        let _ = writeln!(
            m,
            "| OP (mean over tasks after the last stage) | {} | {} |",
            fmt(e.op, 3),
            fmt(l.op, 3)
        );
        let _ = writeln!(
            m,
            "| BWT (mean change of earlier tasks since learned) | {} | {} |",
            fmt(e.bwt, 3),
            fmt(l.bwt, 3)
        );
        for (t, d) in &e.diagonal {
            let _ = writeln!(
                m,
                "| learned: R[{t}][{t}] | {} | {} |",
                fmt(Some(*d), 3),
                fmt(l.diagonal.get(t).copied(), 3)
            );
        }
        for (name, (pe, pl)) in &self.metrics.post {
            let _ = writeln!(
                m,
                "| post {name}: OP / BWT | {} / {} | {} / {} |",
                fmt(pe.op, 3),
                fmt(pe.bwt, 3),
                fmt(pl.op, 3),
                fmt(pl.bwt, 3)
            );
        }
        let _ = writeln!(m, "\nBWT of the loss is the rise of earlier tasks' completion loss (positive: forgotten).\n");
        let _ = writeln!(m, "## Stages\n");
        let _ = writeln!(m, "| stage | plan | trainable | steps | s/step | tokens/s | optimizer MiB | peak RSS MiB | change ‖Δ‖/‖W‖ | final train loss |");
        let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for s in &self.stages {
            let _ = writeln!(
                m,
                "| {} {}{} | {} | {:.1}% | {} | {:.4} | {:.0} | {:.2} | {:.0} | {} | {} |",
                s.index,
                s.name,
                if s.shared_from.is_some() {
                    " (shared)"
                } else {
                    ""
                },
                s.plan.strategy,
                100.0 * s.plan.fraction,
                s.steps,
                s.step_seconds,
                s.tokens_per_second,
                s.optimizer_bytes as f64 / (1 << 20) as f64,
                s.peak_rss_mib,
                fmt(s.change.rel_delta, 4),
                fmt(s.curve.last().map(|c| c.1), 4),
            );
        }
        let _ = writeln!(m, "\n## Change per category (‖Δ‖/‖W‖, from `hft diff` of each stage against the one before)\n");
        let cats: Vec<String> = self
            .stages
            .first()
            .map(|s| s.change.by_category.keys().cloned().collect())
            .unwrap_or_default();
        let _ = writeln!(m, "| stage | {} |", cats.join(" | "));
        let _ = writeln!(m, "|---|{}", "---:|".repeat(cats.len()));
        for s in &self.stages {
            let cells: Vec<String> = cats
                .iter()
                .map(|c| fmt(s.change.by_category.get(c).copied().flatten(), 4))
                .collect();
            let _ = writeln!(m, "| {} {} | {} |", s.index, s.name, cells.join(" | "));
        }
        let _ = writeln!(m, "\n## Loss curves (step: mean training loss)\n");
        for s in &self.stages {
            let pts: Vec<String> = s
                .curve
                .iter()
                .map(|(st, l)| format!("{st}: {l:.3}"))
                .collect();
            let _ = writeln!(m, "- {} {}: {}", s.index, s.name, pts.join(", "));
        }
        m
    }
}

/// The mean of `v`; none for no values.
pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        Some(x) => format!("{x}"),
        None => "–".into(),
    }
}

/// Writes `report.json` and `report.md` of one run into `dir`.
pub fn write_run(r: &RunReport, dir: &Path) -> Result<()> {
    use crate::io::atomic::write_file;
    r.write(&dir.join("report.json"))?;
    write_file(&dir.join("report.md"), r.markdown().as_bytes())?;
    let svg = crate::report::plot::curves_svg(&r.loss_curves())?;
    write_file(&dir.join("loss.svg"), svg.as_bytes())
}

impl RunReport {
    /// The training loss of every stage against the run's global step, one series per stage.
    pub fn loss_curves(&self) -> crate::report::plot::Curves {
        use crate::report::plot::{CurvePoint, Curves, Series};
        let mut offset = 0;
        let series = self
            .stages
            .iter()
            .map(|s| {
                let points = s
                    .curve
                    .iter()
                    .map(|&(step, loss)| CurvePoint {
                        x: (offset + step) as f64,
                        y: loss,
                        x_err: None,
                        y_err: None,
                        label: String::new(),
                    })
                    .collect();
                offset += s.steps;
                Series {
                    name: format!("{} {}", s.index, s.name),
                    points,
                }
            })
            .collect();
        Curves {
            title: format!("training loss, strategy {}", self.strategy),
            x_label: "step (all stages in order)".into(),
            y_label: "mean training loss since the last point".into(),
            series,
            vlines: Vec::new(),
        }
    }
}
