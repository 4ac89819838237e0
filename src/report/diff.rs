//! Table and CSV views of a [`DiffReport`].

use std::cmp::Ordering;
use std::fmt::Write;

use super::{csv_field, csv_num, num};
use crate::analysis::diff::DiffReport;
use crate::analysis::stats::Figures;
use crate::arch::Category;
use crate::io::checkpoint::natural_cmp;

crate::choice! {
    /// What one row of a listing is.
    pub enum By {
        Tensor = "tensor",
        Layer = "layer",
        Category = "category",
        /// Each routed expert and shared expert of each mixture-of-experts layer.
        Expert = "expert",
    }
}

crate::choice! {
    /// Row order of listings: figures largest first (cosine smallest first), names naturally.
    pub enum SortKey {
        RelDelta = "rel-delta",
        L2Delta = "l2-delta",
        MaxAbsDelta = "max-abs-delta",
        ChangedFrac = "changed-frac",
        Cosine = "cosine",
        Name = "name",
    }
}

struct Row {
    key: String,
    extra: Vec<String>,
    f: Figures,
}

fn sort_rows(rows: &mut [Row], key: Option<SortKey>) {
    let Some(key) = key else { return };
    let val = |f: &Figures| -> Option<f64> {
        let v = match key {
            SortKey::RelDelta => f.rel_delta,
            SortKey::L2Delta => Some(f.l2_delta),
            SortKey::MaxAbsDelta => Some(f.max_abs_delta),
            SortKey::ChangedFrac => Some(f.changed_frac),
            SortKey::Cosine => f.cosine.map(|c| -c),
            SortKey::Name => None,
        };
        v.filter(|x| x.is_finite())
    };
    rows.sort_by(|a, b| {
        if key == SortKey::Name {
            return natural_cmp(&a.key, &b.key);
        }
        match (val(&a.f), val(&b.f)) {
            (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => natural_cmp(&a.key, &b.key),
        }
    });
}

fn rows(r: &DiffReport, by: By) -> (Vec<&'static str>, Vec<Row>) {
    match by {
        By::Tensor => (
            vec!["name", "layer", "category", "expert", "dtype", "shape"],
            r.tensors
                .iter()
                .map(|t| Row {
                    key: t.name.clone(),
                    extra: vec![
                        t.layer.map_or(String::new(), |l| l.to_string()),
                        t.category.to_string(),
                        t.expert.map_or(String::new(), |e| e.to_string()),
                        t.dtype.clone(),
                        t.shape
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join("x"),
                    ],
                    f: t.figures,
                })
                .collect(),
        ),
        By::Layer => (
            vec!["layer"],
            r.layers
                .iter()
                .map(|l| Row {
                    key: l.layer.to_string(),
                    extra: vec![],
                    f: l.figures,
                })
                .collect(),
        ),
        By::Expert => (
            vec!["layer", "expert"],
            r.experts
                .iter()
                .map(|e| Row {
                    key: e.layer.to_string(),
                    extra: vec![e.expert.clone()],
                    f: e.figures,
                })
                .collect(),
        ),
        By::Category => (
            vec!["category"],
            r.categories
                .iter()
                .map(|c| Row {
                    key: c.category.to_string(),
                    extra: vec![],
                    f: c.figures,
                })
                .collect(),
        ),
    }
}

const FIGURE_COLUMNS: [&str; 11] = [
    "numel",
    "l2_a",
    "l2_b",
    "l2_delta",
    "rel_delta",
    "cosine",
    "max_abs_delta",
    "mean_abs_delta",
    "changed_frac",
    "nonfinite_a",
    "nonfinite_b",
];

fn figure_values(f: &Figures) -> [String; 11] {
    [
        f.numel.to_string(),
        csv_num(Some(f.l2_a)),
        csv_num(Some(f.l2_b)),
        csv_num(Some(f.l2_delta)),
        csv_num(f.rel_delta),
        csv_num(f.cosine),
        csv_num(Some(f.max_abs_delta)),
        csv_num(Some(f.mean_abs_delta)),
        csv_num(Some(f.changed_frac)),
        f.nonfinite_a.to_string(),
        f.nonfinite_b.to_string(),
    ]
}

/// CSV with one row per tensor, layer or category, and every figure as a column.
pub fn csv(r: &DiffReport, by: By, sort: Option<SortKey>) -> String {
    let (head, mut rows) = rows(r, by);
    sort_rows(&mut rows, sort);
    let mut out = String::new();
    let header: Vec<&str> = head.iter().copied().chain(FIGURE_COLUMNS).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for row in rows {
        let mut fields = vec![csv_field(&row.key)];
        fields.extend(row.extra.iter().map(|s| csv_field(s)));
        fields.extend(figure_values(&row.f));
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Short column headers so the layer x category matrix fits a 100-column terminal.
fn short(c: Category) -> &'static str {
    match c {
        Category::AttnQ => "q",
        Category::AttnK => "k",
        Category::AttnV => "v",
        Category::AttnO => "o",
        Category::AttnQkv => "qkv",
        Category::AttnNorm => "qk_norm",
        Category::FfnGate => "gate",
        Category::FfnUp => "up",
        Category::FfnDown => "down",
        Category::FfnGateUp => "gate_up",
        Category::FfnIn => "ffn_in",
        Category::FfnOut => "ffn_out",
        Category::SharedFfnGate => "s_gate",
        Category::SharedFfnUp => "s_up",
        Category::SharedFfnDown => "s_down",
        Category::Norm => "norm",
        Category::Bias => "bias",
        Category::Buffer => "buffer",
        other => other.as_str(),
    }
}

/// The default terminal view: the layer x category matrix of `rel_delta`, the global tensors,
/// the `top` tensors that changed most, then unmatched names and warnings.
pub fn table(r: &DiffReport, top: usize, sort: Option<SortKey>) -> String {
    let mut o = String::new();
    let compared = r.tensors.len();
    let _ = writeln!(o, "A: {}\nB: {}", r.a, r.b);
    let _ = writeln!(
        o,
        "family {}, {compared} tensors compared, total relative change {} (cosine {})",
        r.family,
        num(r.total.rel_delta),
        num(r.total.cosine),
    );
    let layer_cats: Vec<Category> = Category::ALL
        .into_iter()
        .filter(|c| {
            r.cells
                .iter()
                .any(|x| x.layer.is_some() && x.category == *c)
        })
        .collect();
    if !layer_cats.is_empty() {
        let _ = writeln!(o, "\nrelative change |B-A|/|A| per layer and category");
        let mut line = format!("{:>6}", "layer");
        for c in &layer_cats {
            let _ = write!(line, " {:>8}", short(*c));
        }
        let _ = write!(line, " {:>8}", "layer");
        let _ = writeln!(o, "{line}");
        for l in &r.layers {
            let mut line = format!("{:>6}", l.layer);
            for c in &layer_cats {
                let v = r
                    .cells
                    .iter()
                    .find(|x| x.layer == Some(l.layer) && x.category == *c)
                    .map(|x| num(x.figures.rel_delta))
                    .unwrap_or_default();
                let _ = write!(line, " {v:>8}");
            }
            let _ = write!(line, " {:>8}", num(l.figures.rel_delta));
            let _ = writeln!(o, "{line}");
        }
        let mut line = format!("{:>6}", "all");
        for c in &layer_cats {
            let v = r
                .categories
                .iter()
                .find(|x| x.category == *c)
                .map(|x| num(x.figures.rel_delta))
                .unwrap_or_default();
            let _ = write!(line, " {v:>8}");
        }
        let _ = writeln!(o, "{line}");
    }
    let globals: Vec<String> = r
        .cells
        .iter()
        .filter(|x| x.layer.is_none())
        .map(|x| format!("{} {}", x.category, num(x.figures.rel_delta)))
        .collect();
    if !globals.is_empty() {
        let _ = writeln!(o, "outside layers: {}", globals.join(", "));
    }

    let (_, mut rows) = rows(r, By::Tensor);
    sort_rows(&mut rows, Some(sort.unwrap_or(SortKey::RelDelta)));
    let shown = rows.len().min(top);
    if shown > 0 {
        let _ = writeln!(o, "\ntop {shown} tensors");
        let _ = writeln!(
            o,
            "{:>9} {:>9} {:>8} {:>8}  name",
            "rel_delta", "l2_delta", "cosine", "changed"
        );
        for row in rows.iter().take(shown) {
            let _ = writeln!(
                o,
                "{:>9} {:>9} {:>8} {:>6}%  {}",
                num(row.f.rel_delta),
                num(Some(row.f.l2_delta)),
                num(row.f.cosine),
                format!("{:.1}", row.f.changed_frac * 100.0),
                row.key
            );
        }
    }
    list(&mut o, "only in A", &r.only_in_a);
    list(&mut o, "only in B", &r.only_in_b);
    if !r.mismatched.is_empty() {
        let _ = writeln!(o, "\ndtype or shape differs ({}):", r.mismatched.len());
        for m in &r.mismatched {
            let t = r.tensors.iter().find(|t| t.name == m.name);
            let note = match t {
                Some(t) if t.extra_rows_a.is_some() => format!(
                    "  (shared rows compared; extra rows: A {}, B {})",
                    t.extra_rows_a.unwrap_or(0),
                    t.extra_rows_b.unwrap_or(0)
                ),
                Some(_) => "  (compared)".to_string(),
                None => "  (not compared)".to_string(),
            };
            let _ = writeln!(
                o,
                "  {}: A {} {:?}, B {} {:?}{note}",
                m.name, m.a.dtype, m.a.shape, m.b.dtype, m.b.shape
            );
        }
    }
    let bad: Vec<String> = r
        .nonfinite()
        .map(|t| {
            format!(
                "{} (A: {}, B: {})",
                t.name, t.figures.nonfinite_a, t.figures.nonfinite_b
            )
        })
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(
            o,
            "\nwarning: NaN or Inf values (kept out of the norms) in {} tensors:",
            bad.len()
        );
        for b in bad {
            let _ = writeln!(o, "  {b}");
        }
    }
    o
}

fn list(o: &mut String, what: &str, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n{what} ({}):", names.len());
    for n in names.iter().take(20) {
        let _ = writeln!(o, "  {n}");
    }
    if names.len() > 20 {
        let _ = writeln!(o, "  ... and {} more (see --format json)", names.len() - 20);
    }
}

/// A table listing with one row per tensor, layer or category (`--by` with `--format table`).
pub fn listing(r: &DiffReport, by: By, sort: Option<SortKey>) -> String {
    let (head, mut rows) = rows(r, by);
    sort_rows(&mut rows, sort);
    let mut o = String::new();
    // Expert rows are keyed by layer and expert; the other listings by their first column.
    let key_head = if by == By::Expert {
        "layer expert".to_string()
    } else {
        head[0].to_string()
    };
    let _ = writeln!(
        o,
        "{:>9} {:>9} {:>9} {:>8} {:>8} {:>12}  {}",
        "rel_delta", "l2_delta", "max_abs", "cosine", "changed", "numel", key_head
    );
    for row in rows {
        let key = if by == By::Expert {
            format!("{:>5} {}", row.key, row.extra.join(" "))
        } else {
            row.key.clone()
        };
        let _ = writeln!(
            o,
            "{:>9} {:>9} {:>9} {:>8} {:>7}% {:>12}  {}",
            num(row.f.rel_delta),
            num(Some(row.f.l2_delta)),
            num(Some(row.f.max_abs_delta)),
            num(row.f.cosine),
            format!("{:.1}", row.f.changed_frac * 100.0),
            row.f.numel,
            key
        );
    }
    o
}
