//! The table `hft reset` prints: per layer, what was put back to BASE.

use std::fmt::Write;

use crate::surgery::reset::ResetReport;

/// The table `hft reset` prints.
pub fn table(r: &ResetReport, headline: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{headline}");
    let _ = writeln!(s, "{:<7} {:>7}  tensors reset to BASE", "layer", "reset");
    // Layers in order, then what lies outside them (embeddings, final norm, head).
    let rows = r.layers.iter().filter(|(l, _)| l.is_some());
    for (layer, row) in rows.chain(r.layers.iter().filter(|(l, _)| l.is_none())) {
        let label = layer.map_or("global".to_string(), |l| l.to_string());
        let list: Vec<String> = row
            .tensors
            .iter()
            .map(|(name, f)| {
                if *f >= 1.0 {
                    name.clone()
                } else {
                    format!("{name}({:.1}%)", 100.0 * f)
                }
            })
            .collect();
        let list = if list.is_empty() {
            "-".to_string()
        } else {
            list.join(" ")
        };
        let _ = writeln!(
            s,
            "{label:<7} {:>6.1}%  {list}",
            100.0 * row.reset as f64 / row.total.max(1) as f64
        );
    }
    let _ = writeln!(
        s,
        "total: {:.2}% of parameters reset ({} of {})",
        100.0 * r.fraction(),
        r.reset,
        r.total
    );
    s
}
