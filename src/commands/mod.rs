//! One function per subcommand: turns parsed arguments into library calls and returns what
//! goes to stdout. Notes for humans go to stderr.

#[cfg(feature = "train")]
mod import;
mod plan;
#[cfg(feature = "train")]
mod run;
mod surgery;

use crate::cli::{Command, DiffArgs};
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::progress::Progress;
use crate::report::{self, diff::By, Format};

/// Runs a parsed command; returns what belongs on stdout.
pub fn run(cmd: &Command, quiet: bool) -> Result<String> {
    match cmd {
        Command::Diff(a) => diff(a, quiet),
        Command::Reset(a) => surgery::reset(a, quiet),
        Command::Average(a) => surgery::average(a, quiet),
        Command::Merge(a) => surgery::merge(a, quiet),
        Command::Plan(a) => plan::plan(a, quiet),
        #[cfg(feature = "train")]
        Command::Run(a) => run::run(a, quiet),
        #[cfg(feature = "train")]
        Command::Import(a) => import::import(a, quiet),
        #[cfg(feature = "train")]
        Command::Logits(a) => import::logits(a),
        Command::Completions { .. } => Err(Error::Internal("completions handled by main".into())),
    }
}

fn open(path: &std::path::Path, quiet: bool) -> Result<Checkpoint> {
    let ck = Checkpoint::open(path)?;
    if !quiet {
        for w in &ck.warnings {
            eprintln!("hft: warning: {w}");
        }
    }
    Ok(ck)
}

fn diff(args: &DiffArgs, quiet: bool) -> Result<String> {
    let a = open(&args.a, quiet)?;
    let b = open(&args.b, quiet)?;
    let progress = Progress::bytes(a.total_bytes() + b.total_bytes(), "diff", quiet);
    let r = crate::diff::diff(&a, &b, &progress)?;
    if let Some(p) = &args.plot {
        report::plot::heatmap(&report::plot::diff_heatmap(&r), p)?;
        if !quiet {
            eprintln!("hft: wrote {}", p.display());
        }
    }
    Ok(match args.format {
        Format::Json => report::json(&r),
        Format::Csv => report::diff::csv(&r, args.by.unwrap_or(By::Tensor), args.sort),
        Format::Table => match args.by {
            None => report::diff::table(&r, args.top, args.sort),
            Some(by) => report::diff::listing(&r, by, args.sort),
        },
    })
}
