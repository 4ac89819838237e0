//! Rendering of reports: terminal tables, CSV, JSON, Markdown and plots of diffs, plans,
//! resets, runs and grids. Computation lives elsewhere; this module only decides how figures
//! look. It sits above the layers whose structs it formats (analysis, plans, surgery, training
//! metrics), and training reaches it only through the [`Files`] reporter the caller hands in.

pub mod diff;
#[cfg(feature = "train")]
pub mod grid;
pub mod plan;
pub mod plot;
pub mod reset;
#[cfg(feature = "train")]
pub mod run;

#[cfg(feature = "train")]
pub use files::Files;

#[cfg(feature = "train")]
mod files {
    use std::path::Path;
    use std::sync::Arc;

    use crate::error::Result;
    use crate::progress::Sink;
    use crate::train::grid_metrics::GridReport;
    use crate::train::metrics::RunReport;
    use crate::train::Reporter;

    /// Writes a run's and a grid's report files (Markdown, JSON, plots): the [`Reporter`] the
    /// CLI gives `hft run`.
    pub struct Files {
        pub sink: Arc<dyn Sink>,
    }

    impl Reporter for Files {
        fn run(&self, r: &RunReport, dir: &Path) -> Result<()> {
            super::run::write(r, dir)
        }

        fn grid(&self, g: &GridReport, dir: &Path, plot: Option<&Path>) -> Result<()> {
            super::grid::write(g, dir, plot, self.sink.as_ref())
        }
    }
}

use serde::Serialize;

crate::choice! {
    /// Output formats shared by the commands that report.
    pub enum Format {
        Table = "table",
        Json = "json",
        Csv = "csv",
    }
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
