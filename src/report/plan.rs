//! A plan as a terminal map: one line per layer showing which attention matrices, FFN
//! matrices (per routed expert, a digit: how many of its matrices train), norms and routers
//! train, the layer's realised fraction, then the tensors outside the
//! layers, the totals and the notes. Meant to be read at a glance before training.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::plan::Plan;
use crate::select::units::{self, Kind};
use crate::select::ModelInfo;

/// A unit's cell: its label when it trains whole, dots when frozen, tildes when it trains in
/// part (an element mask, or rows forced by --include on a fused tensor).
fn cell(label: &str, trainable: u64, total: u64) -> String {
    if total > 0 && trainable == total {
        label.to_string()
    } else if trainable == 0 {
        ".".repeat(label.len())
    } else {
        "~".repeat(label.len())
    }
}

fn pct(t: u64, n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * t as f64 / n as f64)
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Experts listed per layer before the map abbreviates.
const MAX_EXPERTS_SHOWN: usize = 64;

/// The map of `plan` over `model` (which the plan must fit).
pub fn map(model: &ModelInfo, plan: &Plan) -> String {
    let us = units::units(model);
    let states = units::unit_states(model, &us, &plan.tensors);
    // layer -> kind -> cells
    let mut rows: BTreeMap<usize, BTreeMap<Kind, Vec<String>>> = BTreeMap::new();
    let mut layer_counts: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let mut global = Vec::new();
    let mut norm_ordinal: BTreeMap<usize, usize> = BTreeMap::new();
    // layer -> expert -> (matrices training whole, any in part)
    let mut experts: BTreeMap<usize, BTreeMap<usize, (u32, bool)>> = BTreeMap::new();
    for s in &states {
        let u = &us.units[s.unit];
        if let Some(l) = u.layer {
            let c = layer_counts.entry(l).or_default();
            c.0 += s.trainable;
            c.1 += s.total;
        }
        match (u.layer, u.expert) {
            (Some(l), Some(expert)) => {
                let cell = experts.entry(l).or_default().entry(expert).or_default();
                if s.total > 0 && s.trainable == s.total {
                    cell.0 += 1;
                } else if s.trainable > 0 {
                    cell.1 = true;
                }
            }
            (Some(l), None) => {
                let label = if u.kind == Kind::Norm {
                    let o = norm_ordinal.entry(l).or_default();
                    *o += 1;
                    u.label(*o - 1)
                } else if u.kind == Kind::Other {
                    "?".to_string()
                } else if u.kind == Kind::Router {
                    "r".to_string()
                } else {
                    u.label(0)
                };
                rows.entry(l)
                    .or_default()
                    .entry(u.kind)
                    .or_default()
                    .push(cell(&label, s.trainable, s.total));
            }
            (None, _) => {
                let state = if s.trainable == s.total && s.total > 0 {
                    "train".to_string()
                } else if s.trainable == 0 {
                    "freeze".to_string()
                } else {
                    format!("{} trains", pct(s.trainable, s.total))
                };
                let name = match u.kind {
                    Kind::Other => u.module.clone(),
                    _ => u.category.as_str().to_string(),
                };
                global.push(format!("{name} {state}"));
            }
        }
    }
    // Routed experts: one digit per expert, how many of its matrices train whole (`~` when
    // some train in part), after the layer's dense or shared-expert cells.
    for (l, es) in &experts {
        let digits: String = es
            .values()
            .take(MAX_EXPERTS_SHOWN)
            .map(|&(n, part)| {
                if part {
                    '~'
                } else {
                    char::from_digit(n.min(9), 10).unwrap_or('9')
                }
            })
            .collect();
        let more = es.len().saturating_sub(MAX_EXPERTS_SHOWN);
        let tail = if more > 0 {
            format!("..(+{more})")
        } else {
            String::new()
        };
        rows.entry(*l)
            .or_default()
            .entry(Kind::Ffn)
            .or_default()
            .push(format!("e:{digits}{tail}"));
    }
    let kinds = [
        Kind::Attention,
        Kind::Ffn,
        Kind::Norm,
        Kind::Router,
        Kind::Other,
    ];
    let joined: BTreeMap<usize, Vec<String>> = rows
        .iter()
        .map(|(l, k)| {
            let cols = kinds
                .iter()
                .map(|kind| k.get(kind).map(|c| c.join(" ")).unwrap_or_default())
                .collect();
            (*l, cols)
        })
        .collect();
    let widths: Vec<usize> = (0..kinds.len())
        .map(|i| joined.values().map(|c| c[i].len()).max().unwrap_or(0))
        .collect();
    let show: Vec<bool> = widths.iter().map(|&w| w > 0).collect();

    let mut out = String::new();
    let fp = &plan.model;
    let _ = writeln!(
        out,
        "plan: {} ratio {} seed {} stage {} | {} model, {} tensors, {} parameters",
        plan.strategy,
        plan.ratio,
        plan.seed,
        plan.stage,
        fp.family,
        fp.tensors,
        thousands(fp.params)
    );
    let heads = ["attention", "ffn", "norms", "router", "other"];
    let mut header = String::from("layer  ");
    for i in 0..kinds.len() {
        if show[i] {
            if header.len() > 7 {
                header.push_str(" | ");
            }
            let _ = write!(
                header,
                "{:<w$}",
                heads[i],
                w = widths[i].max(heads[i].len())
            );
        }
    }
    let _ = writeln!(out, "{header} | trains");
    for (l, cols) in &joined {
        let mut line = format!("{l:>5}  ");
        let mut first = true;
        for i in 0..kinds.len() {
            if show[i] {
                if !first {
                    line.push_str(" | ");
                }
                first = false;
                let _ = write!(line, "{:<w$}", cols[i], w = widths[i].max(heads[i].len()));
            }
        }
        let (t, n) = layer_counts[l];
        let _ = writeln!(out, "{line} | {:>6}", pct(t, n));
    }
    if !global.is_empty() {
        let _ = writeln!(out, "outside the layers: {}", global.join(", "));
    }
    let a = &plan.summary.all;
    let _ = writeln!(
        out,
        "total: {} of {} parameters train ({})",
        thousands(a.trainable),
        thousands(a.total),
        pct(a.trainable, a.total)
    );
    if let Some(s) = &plan.schedule {
        let shown: Vec<String> = s
            .periods
            .iter()
            .take(6)
            .enumerate()
            .map(|(p, l)| format!("{p}:{l:?}"))
            .collect();
        let _ = writeln!(
            out,
            "schedule: {} layers per {} steps; periods {}{}",
            s.layers,
            s.interval,
            shown.join(" "),
            if s.periods.len() > 6 {
                format!(" ... ({} listed)", s.periods.len())
            } else {
                String::new()
            }
        );
    }
    for n in &plan.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::{build, SelectOptions, Strategy};

    #[test]
    fn map_shows_each_layer_and_the_totals() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama-base");
        let m = ModelInfo::open(&path).unwrap();
        let p = build(&m, &SelectOptions::new(Strategy::Category, 0.5, 7), None).unwrap();
        let text = map(&m, &p);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("layer  attention"), "{text}");
        for l in 0..4 {
            let line = lines[2 + l];
            assert!(line.trim_start().starts_with(&l.to_string()), "{text}");
            // 2 of q k v o as letters, 2 as dots.
            let attn = line.split('|').next().unwrap();
            let letters = attn
                .split_whitespace()
                .skip(1)
                .filter(|c| *c != ".")
                .count();
            assert_eq!(letters, 2, "{line}");
            let pct = &p.summary.layers[&l.to_string()];
            assert!(
                line.ends_with(&format!("{:.1}%", pct.fraction * 100.0)),
                "{line}"
            );
        }
        assert!(
            text.contains("embed train") && text.contains("lm_head train"),
            "{text}"
        );
        assert!(text.contains("total: "), "{text}");
    }
}
