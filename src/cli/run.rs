//! `hft run`: arguments only; the work is in `crate::train`.

use std::path::PathBuf;

use clap::Args;

/// Train a model stage by stage with a freeze plan per stage, score every eval set after every
/// stage, and report forgetting (R matrix, OP, BWT, loss rise, step time, memory).
///
/// The recipe (YAML) names the model, tokenizer, stages (data, steps, learning rate, plan),
/// eval sets, post-hoc baselines and the output directory; see the README (`hft run`). The output gets a
/// checkpoint per stage (loadable by `hft diff`), each stage's plan, run.json (the state that
/// --resume continues from), report.json and report.md. With --compare, one run per strategy
/// under OUTPUT/STRATEGY plus compare.md, compare.json and compare.svg.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft run recipes/tiny-continual.yaml --threads 2\n  \
    hft run recipes/tiny-continual.yaml --compare full,category,layer,element\n  \
    hft run my.yaml --device cuda --resume")]
pub struct RunArgs {
    /// The recipe file.
    pub recipe: PathBuf,
    /// Run once per strategy (comma-separated), replacing the plan of every stage that does
    /// not pin its own; one row per strategy in compare.md.
    #[arg(long, value_delimiter = ',', value_name = "STRATEGIES")]
    pub compare: Vec<String>,
    /// Continue after the last finished stage of an earlier run in the same output.
    #[arg(long)]
    pub resume: bool,
    /// Replace an earlier run in the output.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Output directory (default: the recipe's `output`).
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// cpu, or cuda[:N] (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}
