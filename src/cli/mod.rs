//! Command-line definitions (clap derive). Parsing and dispatch only: every command is a call
//! into the library, so tests of the library reach everything the binary does.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::report::diff::{By, SortKey};
use crate::report::Format;

#[cfg(feature = "train")]
mod import;
pub mod plan;
pub use plan::PlanArgs;
#[cfg(feature = "train")]
mod run;
mod surgery;
#[cfg(feature = "train")]
pub use import::{ImportArgs, LogitsArgs};
#[cfg(feature = "train")]
pub use run::RunArgs;
pub use surgery::{AverageArgs, MergeArgs, MergeMethod, OutputArgs, ResetArgs, ResetStrategy};

#[derive(Debug, Parser)]
#[command(
    name = "hft",
    version,
    about = "Checkpoint surgery for Half Fine-Tuning: diff, half-reset, average and merge, freeze plans",
    long_about = "Checkpoint surgery for Half Fine-Tuning (HFT) of large language models.\n\n\
        Every command streams safetensors checkpoints tensor by tensor from memory maps, so \
        models far larger than memory are handled in a bounded resident set.\n\n\
        A checkpoint is any of: a .safetensors file; a directory holding model.safetensors; a \
        directory holding model.safetensors.index.json and its shards; the index file itself.",
    after_help = "Examples:\n  hft diff base/ tuned/\n  hft diff base/ tuned/ --format json > d.json\n  hft completions bash > /etc/bash_completion.d/hft"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Worker threads (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// No progress bars or notes on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Diff(DiffArgs),
    Reset(ResetArgs),
    Average(AverageArgs),
    Merge(MergeArgs),
    Plan(PlanArgs),
    #[cfg(feature = "train")]
    Run(RunArgs),
    #[cfg(feature = "train")]
    Import(ImportArgs),
    #[cfg(feature = "train")]
    #[command(hide = true)]
    Logits(LogitsArgs),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        shell: clap_complete::Shell,
    },
}

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
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Rows of a listing (CSV, or a table listing instead of the layer x category matrix).
    #[arg(long, value_enum)]
    pub by: Option<By>,
    /// Order of the rows (figures largest first, cosine smallest first).
    #[arg(long, value_enum)]
    pub sort: Option<SortKey>,
    /// How many tensors the table lists as most changed.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Also write a heatmap of relative change (layers x categories) to this .svg or .png file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}
