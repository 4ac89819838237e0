//! The report of one run: report.md (R matrices per metric, OP and BWT, stages with their
//! plans, speed and memory, change per category, loss curves), report.json and loss.svg. The
//! figures come from `train::metrics`; this file only decides how they read.

use std::fmt::Write;
use std::path::Path;

use crate::error::Result;
use crate::io::atomic::write_file;
use crate::report::plot::{self, CurvePoint, Curves, Series};
use crate::train::metrics::{RunReport, StageResult};

/// A run's report.md: the R matrices, forgetting, stages, change per category, loss curves.
pub fn markdown(r: &RunReport) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# hft run: {} (strategy `{}`)\n", r.recipe, r.strategy);
    let names = r.eval_names();
    for (em, title) in [
        (true, "exact match (higher is better)"),
        (false, "mean loss per scored token, nats (lower is better)"),
    ] {
        let rows = r.matrix(em);
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
    let (e, l) = (&r.metrics.exact_match, &r.metrics.loss);
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
    for (name, (pe, pl)) in &r.metrics.post {
        let _ = writeln!(
            m,
            "| post {name}: OP / BWT | {} / {} | {} / {} |",
            fmt(pe.op, 3),
            fmt(pe.bwt, 3),
            fmt(pl.op, 3),
            fmt(pl.bwt, 3)
        );
    }
    let _ = writeln!(
        m,
        "\nBWT of the loss is the rise of earlier tasks' completion loss (positive: forgotten).\n"
    );
    let prior = &r.metrics.prior;
    if !prior.sets.is_empty() {
        let _ = writeln!(
            m,
            "## Prior knowledge (eval sets no stage trains, before the first stage and after the last)\n"
        );
        let _ = writeln!(m, "| eval set | EM before | EM after | lost (EM) | loss before | loss after | loss rise |");
        let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|");
        for (n, s) in &prior.sets {
            let lost = s.before_em.zip(s.after_em).map(|(b, a)| b - a);
            let _ = writeln!(
                m,
                "| {n} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
                fmt(s.before_em, 3),
                fmt(s.after_em, 3),
                fmt(lost, 3),
                s.before_loss,
                s.after_loss,
                s.after_loss - s.before_loss
            );
        }
        let _ = writeln!(
            m,
            "| mean | | | {} | | | {} |\n\nPositive is forgotten; on a retention set the loss \
             rise is minus the change of the answer's mean log-probability per token.\n",
            fmt(prior.em_lost, 3),
            fmt(prior.loss_rise, 3)
        );
    }
    let _ = writeln!(m, "## Stages\n");
    let _ = writeln!(m, "| stage | plan | trainable | steps | s/step | tokens/s | eval s | optimizer MiB | peak RSS MiB | change ‖Δ‖/‖W‖ | final train loss |");
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &r.stages {
        let _ = writeln!(
            m,
            "| {} {}{} | {} | {:.1}% | {} | {:.4} | {:.0} | {:.1} | {:.2} | {:.0} | {} | {} |",
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
            s.eval_seconds,
            s.optimizer_bytes as f64 / (1 << 20) as f64,
            s.peak_rss_mib,
            fmt(s.change.rel_delta, 4),
            fmt(s.curve.last().map(|c| c.1), 4),
        );
    }
    // One line per stage whose plan says `what`, under `title`; nothing when none does.
    let section = |m: &mut String, title: &str, what: &dyn Fn(&StageResult) -> Option<String>| {
        let lines: Vec<String> = r
            .stages
            .iter()
            .filter_map(|s| {
                let d = what(s)?;
                Some(format!(
                    "- stage {} `{}`: {} plan{d}",
                    s.index, s.name, s.plan.strategy
                ))
            })
            .collect();
        if !lines.is_empty() {
            let _ = writeln!(m, "\n{title}:\n\n{}", lines.join("\n"));
        }
    };
    section(
        &mut m,
        "Plans derived from the run's own measurements",
        &|s| Some(format!(" ranked by {}", s.plan.derived_from.as_ref()?)),
    );
    section(
        &mut m,
        "Plans that change during their stage (each stage's plan.yaml lists them)",
        &|s| Some(format!(", {}", s.plan.schedule.as_ref()?)),
    );
    let _ = writeln!(m, "\n## Change per category (‖Δ‖/‖W‖, from `hft diff` of each stage against the one before)\n");
    let cats: Vec<String> = r
        .stages
        .first()
        .map(|s| s.change.by_category.keys().cloned().collect())
        .unwrap_or_default();
    let _ = writeln!(m, "| stage | {} |", cats.join(" | "));
    let _ = writeln!(m, "|---|{}", "---:|".repeat(cats.len()));
    for s in &r.stages {
        let cells: Vec<String> = cats
            .iter()
            .map(|c| fmt(s.change.by_category.get(c).copied().flatten(), 4))
            .collect();
        let _ = writeln!(m, "| {} {} | {} |", s.index, s.name, cells.join(" | "));
    }
    let _ = writeln!(m, "\n## Loss curves (step: mean training loss)\n");
    for s in &r.stages {
        let pts: Vec<String> = s
            .curve
            .iter()
            .map(|(st, l)| format!("{st}: {l:.3}"))
            .collect();
        let _ = writeln!(m, "- {} {}: {}", s.index, s.name, pts.join(", "));
    }
    m
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        Some(x) => format!("{x}"),
        None => "–".into(),
    }
}

/// Writes `report.json`, `report.md` and `loss.svg` of one run into `dir`.
pub fn write(r: &RunReport, dir: &Path) -> Result<()> {
    r.write(&dir.join("report.json"))?;
    write_file(&dir.join("report.md"), markdown(r).as_bytes())?;
    let svg = plot::curves_svg(&loss_curves(r))?;
    write_file(&dir.join("loss.svg"), svg.as_bytes())
}

/// The training loss of every stage against the run's global step, one series per stage.
pub fn loss_curves(r: &RunReport) -> Curves {
    let mut offset = 0;
    let series = r
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
        title: format!("training loss, strategy {}", r.strategy),
        x_label: "step (all stages in order)".into(),
        y_label: "mean training loss since the last point".into(),
        series,
        vlines: Vec::new(),
    }
}
