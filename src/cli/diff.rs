//! `hft diff`: how much every tensor, layer and category changed from A to B.

use std::path::PathBuf;

use clap::Args;

use hft::arch::{Block, Layout};
use hft::defaults;
use hft::error::{Error, Result};
use hft::io::output;
use hft::progress::{Level, Progress, Sink};
use hft::report::{self, diff::By, diff::SortKey, Format};

use super::{choice, open};

/// How much every tensor, layer and category changed from A to B.
///
/// Per tensor: l2_a, l2_b, l2_delta = |B-A|, rel_delta = |B-A|/|A|, cosine, max_abs_delta,
/// mean_abs_delta, changed_frac and numel; per layer, per category and in total the same figures
/// aggregated exactly (from sums of squares). Float tensors (F32, F16, BF16, F64) are compared
/// numerically in f64; other dtypes byte for byte.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft diff base/ tuned/                       # layer x category table, top tensors\n  \
    hft diff base/ tuned/ --format json > d.json\n  \
    hft diff base/ tuned/ --by layer --format csv\n  \
    hft diff base/ tuned/ --plot heat.svg       # heatmap: layers down, categories across")]
pub struct DiffArgs {
    /// The reference checkpoint (usually the base model).
    pub a: PathBuf,
    /// The checkpoint compared against A (usually the fine-tuned model).
    pub b: PathBuf,
    /// Output format on stdout.
    #[arg(long, value_parser = choice::<Format>(), default_value = "table")]
    pub format: Format,
    /// Rows of a listing (CSV, or a table listing instead of the layer x category matrix).
    #[arg(long, value_parser = choice::<By>())]
    pub by: Option<By>,
    /// Order of the rows (figures largest first, cosine smallest first).
    #[arg(long, value_parser = choice::<SortKey>())]
    pub sort: Option<SortKey>,
    /// How many tensors the table lists as most changed.
    #[arg(long, default_value_t = defaults::DIFF_TOP, value_name = "N")]
    pub top: usize,
    /// Also write a heatmap of relative change (layers x categories) to this .svg or .png file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Replace an existing plot FILE that hft wrote (never an input, nor any other file).
    #[arg(long, requires = "plot")]
    pub force: bool,
}

pub fn run(args: &DiffArgs, sink: &dyn Sink) -> Result<String> {
    if let Some(p) = &args.plot {
        let inputs = [args.a.as_path(), args.b.as_path()];
        output::check(p, output::Kind::File, &inputs, args.force)?;
    }
    let a = open(&args.a, sink)?;
    let b = open(&args.b, sink)?;
    let progress = Progress::bytes(sink, a.total_bytes() + b.total_bytes(), "diff");
    if args.by == Some(By::Expert) {
        // Said before a long diff rather than after it.
        let layout = Layout::for_checkpoint(&a);
        let moe = a
            .tensors()
            .iter()
            .any(|t| layout.role(&t.name).block() != Block::Dense);
        if !moe {
            return Err(Error::usage(format!(
                "--by expert: {} has no mixture-of-experts layers (family {})",
                args.a.display(),
                layout.family_name()
            )));
        }
    }
    let r = hft::analysis::diff::diff(&a, &b, &progress)?;
    if let Some(p) = &args.plot {
        report::plot::heatmap(&report::plot::diff_heatmap(&r), p, sink)?;
        sink.say(Level::Log, &format!("wrote {}", p.display()));
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
