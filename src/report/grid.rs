//! The report of a grid of runs: report.md (the comparison in words, the matched view, every
//! setting, learned per task), report.json, the learn-versus-forget plot and the heatmap. The
//! figures come from `train::grid_metrics`; this file only decides how they read.

use std::fmt::Write;
use std::path::Path;

use crate::error::Result;
use crate::progress::Sink;
use crate::report::plot::{self, CurvePoint, Curves, Heatmap, Series};
use crate::train::grid_metrics::{is_baseline, GridReport, MatchedRow, Stat};

fn show(s: Option<Stat>, digits: usize) -> String {
    match s.map(|s| Stat {
        mean: s.mean + 0.0,
        ..s
    }) {
        None => "–".into(),
        Some(Stat {
            mean, sd: Some(sd), ..
        }) => format!("{mean:.digits$} ± {sd:.digits$}"),
        Some(Stat { mean, .. }) => format!("{mean:.digits$}"),
    }
}

fn seeds_phrase(g: &GridReport) -> String {
    match g.seeds.len() {
        1 => "one seed".into(),
        n => format!("{n} seeds"),
    }
}

/// The grid's report.md.
pub fn markdown(g: &GridReport) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# hft run: {}\n", g.recipe);
    let trained: Vec<&String> = g.strategies.iter().filter(|s| !is_baseline(s)).collect();
    let baselines = g.strategies.len() - trained.len();
    let runs = g.runs.iter().filter(|r| !is_baseline(&r.strategy)).count();
    let _ = writeln!(
        m,
        "{} strateg{} × {} × {}: {} runs{}. Figures are mean ± standard deviation over seeds \
         (a single value: one seed).\n",
        trained.len(),
        if trained.len() == 1 { "y" } else { "ies" },
        match &g.sweep {
            Some(k) => format!(
                "{} values of `{k}`",
                g.cells.len() / g.strategies.len().max(1)
            ),
            None => "the recipe's settings".into(),
        },
        seeds_phrase(g),
        runs,
        match baselines {
            0 => String::new(),
            n => format!(
                ", and {n} post baseline{} read as strategies (`STRATEGY+BASELINE`: the run with \
                 the baseline's model in place of its final one)",
                if n == 1 { "" } else { "s" }
            ),
        }
    );
    let _ = writeln!(m, "## At equal learning\n");
    for line in words(g) {
        let _ = writeln!(m, "{line}\n");
    }
    if !g.matched.is_empty() {
        let _ = writeln!(
            m,
            "| learned (EM) | {} |",
            g.strategies
                .iter()
                .map(|s| {
                    format!(
                        "{s}: forgot (EM) | {s}: old-task loss rise | {s}: prior lost (EM) | \
                         {s}: prior loss rise"
                    )
                })
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(m, "|---:|{}", "---:|".repeat(4 * g.strategies.len()));
        for x in &g.matched {
            let cells: Vec<String> = x
                .rows
                .iter()
                .map(|r| {
                    format!(
                        "{} | {} | {} | {}",
                        show(r.forgot, 3) + &outside(r.seeds_outside),
                        show(r.loss_rise, 3),
                        show(r.prior_em_lost, 3),
                        show(r.prior_loss_rise, 3)
                    )
                })
                .collect();
            let _ = writeln!(m, "| {:.3} | {} |", x.level, cells.join(" | "));
        }
        m.push('\n');
    }
    let _ = writeln!(m, "## Every setting\n");
    let _ = writeln!(
        m,
        "| strategy | setting | learned (EM) | forgot (−BWT, EM) | OP (EM) | old-task loss rise | prior lost (EM) | prior loss rise | text loss | trainable | s/step | optimizer MiB | peak RSS MiB |"
    );
    let _ = writeln!(
        m,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in &g.cells {
        // Step time against full fine-tuning at the same setting.
        let base_step = g
            .cells
            .iter()
            .find(|f| f.strategy == "full" && f.setting == c.setting)
            .and_then(|f| f.step_seconds);
        let rel = match (c.step_seconds, base_step) {
            (Some(s), Some(b)) if c.strategy != "full" => {
                format!(" ({:.2}x full)", s.mean / b.mean)
            }
            _ => String::new(),
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {} | {:.0} |",
            c.strategy,
            c.setting.as_ref().map_or("recipe".into(), |s| s.label()),
            show(c.learned, 3),
            show(c.forgot, 3),
            show(c.op, 3),
            show(c.loss_rise, 3),
            show(c.prior_em_lost, 3),
            show(c.prior_loss_rise, 3),
            show(c.text_loss, 3),
            c.trainable
                .map_or("–".into(), |f| format!("{:.1}%", 100.0 * f)),
            show(c.step_seconds, 4),
            rel,
            c.optimizer_mib.map_or("–".into(), |v| format!("{v:.2}")),
            c.peak_rss_mib,
        );
    }
    let _ = writeln!(
        m,
        "\nlearned = mean exact match R[i][i] of the tasks the strategy trained, right after \
         their stage; forgot = −BWT = mean over earlier tasks of (right after learning − after \
         the last stage); OP = mean exact match over tasks after the last stage; old-task loss \
         rise = BWT of the completion loss (nats, positive: forgotten); prior lost and prior \
         loss rise = what the model knew before the first stage and lost by the last, over the \
         eval sets no stage trains (retention sets, plain text): exact match before − after, \
         and loss after − before (nats per token, minus the change of the answer's \
         log-probability on a retention set), both positive when forgotten; text loss = final \
         loss on the eval sets without exact match. s/step and optimizer memory are over the \
         stages the strategy trained. Each run's own report.md (under its directory) has the \
         full R matrices.\n"
    );
    prior_table(g, &mut m);
    let tasks: Vec<&String> = g
        .cells
        .first()
        .map(|c| c.diagonal.keys().collect())
        .unwrap_or_default();
    if !tasks.is_empty() {
        let _ = writeln!(
            m,
            "## Learned per task (R[i][i], exact match right after the task's stage)\n"
        );
        let names: Vec<&str> = tasks.iter().map(|t| t.as_str()).collect();
        let _ = writeln!(m, "| strategy | setting | {} |", names.join(" | "));
        let _ = writeln!(m, "|---|---|{}", "---:|".repeat(tasks.len()));
        for c in &g.cells {
            let cells: Vec<String> = tasks
                .iter()
                .map(|t| show(c.diagonal.get(*t).copied(), 3))
                .collect();
            let _ = writeln!(
                m,
                "| {} | {} | {} |",
                c.strategy,
                c.setting.as_ref().map_or("recipe".into(), |s| s.label()),
                cells.join(" | ")
            );
        }
        m.push('\n');
    }
    let _ = writeln!(m, "## Runs\n");
    let _ = writeln!(
        m,
        "| run | learned | forgot | OP | loss rise | prior lost | prior loss rise | text loss |"
    );
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
    for p in &g.runs {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.dir,
            f(p.learned),
            f(p.forgot),
            f(p.op),
            f(p.loss_rise),
            f(p.prior_em_lost),
            f(p.prior_loss_rise),
            f(p.text_loss)
        );
    }
    m
}

/// What each eval set of prior knowledge lost, per strategy and setting: the means of the
/// table above split by set, since a fact lost and a rise of the text loss are different harms.
fn prior_table(g: &GridReport, m: &mut String) {
    let sets: Vec<&String> = g
        .cells
        .first()
        .map(|c| c.prior_sets.keys().collect())
        .unwrap_or_default();
    if sets.is_empty() {
        return;
    }
    let with_em: Vec<bool> = sets
        .iter()
        .map(|n| {
            g.cells
                .iter()
                .any(|c| c.prior_sets.get(*n).is_some_and(|p| p.em_lost.is_some()))
        })
        .collect();
    let mut head = Vec::new();
    for (n, em) in sets.iter().zip(&with_em) {
        if *em {
            head.push(format!("{n}: EM lost"));
        }
        head.push(format!("{n}: loss rise"));
    }
    let _ = writeln!(
        m,
        "## Prior knowledge per eval set
"
    );
    let _ = writeln!(m, "| strategy | setting | {} |", head.join(" | "));
    let _ = writeln!(m, "|---|---|{}", "---:|".repeat(head.len()));
    for c in &g.cells {
        let mut row = Vec::new();
        for (n, em) in sets.iter().zip(&with_em) {
            let p = c.prior_sets.get(*n);
            if *em {
                row.push(show(p.and_then(|p| p.em_lost), 3));
            }
            row.push(show(p.and_then(|p| p.loss_rise), 3));
        }
        let _ = writeln!(
            m,
            "| {} | {} | {} |",
            c.strategy,
            c.setting.as_ref().map_or("recipe".into(), |s| s.label()),
            row.join(" | ")
        );
    }
    let _ = writeln!(
        m,
        "\nBefore the first stage against after the last, mean ± sd over seeds, positive when \
         forgotten: EM lost = exact match before − after; loss rise = loss after − before \
         (nats per scored token; on a retention set that is minus the change of the answer's \
         mean log-probability per token).\n"
    );
}

/// The comparison in sentences, each carrying its numbers and never more than they carry.
pub fn words(g: &GridReport) -> Vec<String> {
    let mut out = Vec::new();
    let Some(key) = &g.sweep else {
        out.push(
            "No sweep: each strategy has one point, so forgetting cannot be read at equal \
             learning. A strategy that learned less also had less to forget: read \"forgot\" \
             next to \"learned\" below, and run with `--sweep lr=...` to compare at matched \
             learning."
                .into(),
        );
        return out;
    };
    if g.matched.is_empty() {
        let ranges: Vec<String> = g
            .strategies
            .iter()
            .filter(|s| !is_baseline(s))
            .map(|s| {
                let v: Vec<f64> = g
                    .cells
                    .iter()
                    .filter(|c| &c.strategy == s)
                    .filter_map(|c| c.learned.map(|l| l.mean))
                    .collect();
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{s} {lo:.3}–{hi:.3}")
            })
            .collect();
        out.push(format!(
            "The strategies' learning does not overlap across the `{key}` sweep ({}), so \
             there is no level at which to compare them: widen the sweep.",
            ranges.join(", ")
        ));
        return out;
    }
    for x in &g.matched {
        let parts: Vec<String> = x
            .rows
            .iter()
            .map(|r| match r.forgot {
                Some(f) => format!(
                    "{} forgot {}{}",
                    r.strategy,
                    show(Some(f), 3),
                    match (f.n, g.seeds.len()) {
                        (n, all) if n < all => format!(" ({n} of {all} seeds reach it)"),
                        _ => String::new(),
                    }
                ),
                None => format!("{} does not reach it in any seed", r.strategy),
            })
            .collect();
        let mut s = format!(
            "At equal learning of {:.3} (exact match, interpolated along each strategy's \
             `{key}` sweep, seed by seed): {}.",
            x.level,
            parts.join(", ")
        );
        // BWT first, then what the model knew before the first stage (exact match lost, loss
        // rise), each compared with the first strategy.
        type Get = dyn Fn(&MatchedRow) -> Option<Stat>;
        let measures: [(&str, &str, &Get); 3] = [
            ("", "forgot", &|r| r.forgot),
            (
                "prior knowledge lost (exact match)",
                "forgot of what it knew before (exact match)",
                &|r| r.prior_em_lost,
            ),
            (
                "prior knowledge loss rise (nats)",
                "forgot of what it knew before (loss rise)",
                &|r| r.prior_loss_rise,
            ),
        ];
        for (label, what, get) in measures {
            let Some((first, f0)) = x.rows.first().and_then(|r| get(r).map(|f| (r, f))) else {
                continue;
            };
            if !label.is_empty() {
                let vals: Vec<String> = x
                    .rows
                    .iter()
                    .map(|r| format!("{} {}", r.strategy, show(get(r), 3)))
                    .collect();
                s.push_str(&format!(" {}: {}.", capital(label), vals.join(", ")));
            }
            for r in x.rows.iter().skip(1) {
                if let Some(f) = get(r) {
                    s.push(' ');
                    s.push_str(&contrast(what, &first.strategy, f0, &r.strategy, f));
                }
            }
        }
        out.push(s);
    }
    out
}

/// The learn-versus-forget plot: one curve per strategy through its settings (in sweep
/// order), error bars of one standard deviation over seeds on both axes, and dashed lines
/// at the levels of the matched view.
pub fn curves(g: &GridReport, y: Forgetting) -> Curves {
    let series = g
        .strategies
        .iter()
        .map(|s| Series {
            name: s.clone(),
            points: {
                let mut v: Vec<(f64, CurvePoint)> = g
                    .cells
                    .iter()
                    .filter(|c| &c.strategy == s)
                    .filter_map(|c| {
                        let f = match y {
                            Forgetting::Bwt => c.forgot,
                            Forgetting::PriorEm => c.prior_em_lost,
                            Forgetting::PriorLoss => c.prior_loss_rise,
                        };
                        let (l, f) = (c.learned?, f?);
                        Some((
                            c.setting.as_ref().map_or(0.0, |x| x.value),
                            CurvePoint {
                                x: l.mean,
                                y: f.mean,
                                x_err: l.sd,
                                y_err: f.sd,
                                label: c.setting.as_ref().map_or(String::new(), |x| x.text.clone()),
                            },
                        ))
                    })
                    .collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                v.into_iter().map(|(_, p)| p).collect()
            },
        })
        .collect();
    Curves {
        title: format!(
            "learning vs forgetting{} ({})",
            g.sweep
                .as_ref()
                .map_or(String::new(), |k| format!(" across {k}")),
            seeds_phrase(g)
        ),
        x_label: "learned: mean R[i][i] of the tasks trained (exact match)".into(),
        y_label: match y {
            Forgetting::Bwt => "forgot: −BWT (exact match)",
            Forgetting::PriorEm => "prior knowledge lost (exact match before − after)",
            Forgetting::PriorLoss => "prior knowledge: loss rise (nats per token)",
        }
        .into(),
        series,
        vlines: g.matched.iter().map(|m| m.level).collect(),
    }
}

/// The forgetting measure on a learn-versus-forget plot's y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgetting {
    /// −BWT of exact match over the trained tasks.
    Bwt,
    /// Exact match lost on the eval sets no stage trains.
    PriorEm,
    /// Loss rise on the eval sets no stage trains.
    PriorLoss,
}

/// Writes report.md, report.json, learn-forget.svg (and, where the recipe has eval sets no
/// stage trains, learn-forget-prior-em.svg and learn-forget-prior-loss.svg) and heatmap.svg
/// into `dir`, and the BWT plot again to `plot` when given (.svg or .png).
pub fn write(g: &GridReport, dir: &Path, plot_to: Option<&Path>, sink: &dyn Sink) -> Result<()> {
    use crate::io::atomic::write_file;
    write_file(
        &dir.join("report.json"),
        (serde_json::to_string_pretty(g).expect("serialises") + "\n").as_bytes(),
    )?;
    write_file(&dir.join("report.md"), markdown(g).as_bytes())?;
    let svg = plot::curves_svg(&curves(g, Forgetting::Bwt))?;
    plot::write_plot(&svg, &dir.join("learn-forget.svg"), sink)?;
    if let Some(p) = plot_to {
        plot::write_plot(&svg, p, sink)?;
    }
    for (y, has, file) in [
        (
            Forgetting::PriorEm,
            g.cells.iter().any(|c| c.prior_em_lost.is_some()),
            "learn-forget-prior-em.svg",
        ),
        (
            Forgetting::PriorLoss,
            g.cells.iter().any(|c| c.prior_loss_rise.is_some()),
            "learn-forget-prior-loss.svg",
        ),
    ] {
        if has {
            let svg = plot::curves_svg(&curves(g, y))?;
            plot::write_plot(&svg, &dir.join(file), sink)?;
        }
    }
    if let Some(h) = &g.heat {
        let h = Heatmap {
            title: "exact match after each stage (mean over seeds)".into(),
            rows: h.rows.clone(),
            cols: h.cols.clone(),
            values: h.values.clone(),
            legend: "exact match".into(),
        };
        plot::heatmap(&h, &dir.join("heatmap.svg"), sink)?;
    }
    Ok(())
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or(String::new(), |f| {
        f.to_uppercase().collect::<String>() + c.as_str()
    })
}

fn outside(n: usize) -> String {
    if n > 0 {
        format!(" ({n} out)")
    } else {
        String::new()
    }
}

/// One sentence comparing `b` with `a` on one forgetting measure (`what`, a verb phrase):
/// the difference and whether the seeds separate it (twice the standard error of the
/// difference, from each side's standard error over seeds).
fn contrast(what: &str, a: &str, fa: Stat, b: &str, fb: Stat) -> String {
    let d = fb.mean - fa.mean;
    let (more, by) = if d < 0.0 { ("less", -d) } else { ("more", d) };
    let (verb, tail) = what.split_once(' ').unwrap_or((what, ""));
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!(" {tail}")
    };
    match (fa.se(), fb.se()) {
        (Some(sa), Some(sb)) => {
            let se = (sa * sa + sb * sb).sqrt();
            if by > 2.0 * se {
                format!(
                    "{b} {verb} {more}{tail} than {a} by {by:.3}, more than twice the standard \
                     error of the difference ({se:.3})."
                )
            } else {
                format!(
                    "The difference between {b} and {a} ({d:+.3}) is within twice its standard \
                     error ({se:.3}): these seeds do not separate them."
                )
            }
        }
        _ => format!(
            "With one seed there is no estimate of the spread, so the difference between {b} and \
             {a} ({d:+.3}) is not evidence either way: run with --seeds."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrasts_say_the_measure_and_whether_the_seeds_separate_it() {
        let s = |mean: f64| Stat {
            mean,
            sd: Some(0.05),
            n: 4,
        };
        let bwt = contrast("forgot", "full", s(0.5), "category", s(0.3));
        assert!(
            bwt.starts_with("category forgot less than full by 0.200, more than twice"),
            "{bwt}"
        );
        let prior = contrast(
            "forgot of what it knew before (exact match)",
            "full",
            s(0.10),
            "category",
            s(0.12),
        );
        assert!(prior.contains("within twice its standard error"), "{prior}");
        let prior = contrast(
            "forgot of what it knew before (exact match)",
            "full",
            s(0.4),
            "category",
            s(0.1),
        );
        assert!(
            prior
                .starts_with("category forgot less of what it knew before (exact match) than full"),
            "{prior}"
        );
    }
}
