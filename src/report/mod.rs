//! Rendering of reports: terminal tables, CSV, JSON and plots. Computation lives elsewhere; this
//! module only decides how figures look.

pub mod diff;
pub mod plan;
pub mod plot;

use serde::Serialize;

/// Output formats shared by the commands that report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// A number for a table cell: `-` for missing or non-finite values, 3 significant digits.
pub fn num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => {
            if x == 0.0 {
                "0".to_string()
            } else if (1e-2..1e4).contains(&x.abs()) {
                let s = format!("{x:.4}");
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                format!("{x:.2e}")
            }
        }
        _ => "-".to_string(),
    }
}

/// A number for CSV: full precision, empty when missing or non-finite.
pub fn csv_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x}"),
        _ => String::new(),
    }
}

/// Quotes a CSV field when it needs it.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Pretty JSON with a trailing newline.
pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("reports serialise") + "\n"
}
