//! `hft run`: multi-stage training with a freeze plan per stage and a forgetting report.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use hft::error::Result;
use hft::report;
use hft::train::{self, Options, Outcome};

use super::Terminal;

/// Train a model stage by stage with a freeze plan per stage, score every eval set after every
/// stage, and report forgetting (R matrix, OP, BWT, loss rise, step time, memory).
///
/// The recipe (YAML) names the model, tokenizer, stages (data, steps, learning rate, plan),
/// eval sets, post-hoc baselines and the output directory; see docs/recipe.md. The output gets a
/// checkpoint per stage (loadable by `hft diff`), each stage's plan, run.json (the state that
/// --resume continues from), report.json, report.md and loss.svg (training loss per stage).
///
/// With --compare, --sweep or --seeds, one run per cell of the grid under
/// OUTPUT/STRATEGY[/KEY=VALUE][/seed-N]; stages that are identical across cells (the same seed,
/// settings and plan from the same start) train once and are linked into the others. OUTPUT
/// then gets the grid's report.md (forgetting compared at equal learning, mean ± sd over
/// seeds), report.json, learn-forget.svg and heatmap.svg.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft run recipes/tiny-continual.yaml --threads 2\n  \
    hft run recipes/tiny-continual.yaml --compare full,category,layer,element\n  \
    hft run recipes/tiny-continual.yaml --compare full,category --sweep lr=1e-4,3e-4,1e-3 --seeds 0,1,2\n  \
    hft run recipes/tiny-continual.yaml --compare full,category --sweep lr=x0.3,x1,x3\n  \
    hft run my.yaml --device cuda --resume")]
pub struct RunArgs {
    /// The recipe file.
    pub recipe: PathBuf,
    /// Run once per strategy (comma-separated), replacing the plan of every stage that does
    /// not pin its own; crossed with --sweep and --seeds when given.
    #[arg(long, value_delimiter = ',', value_name = "STRATEGIES")]
    pub compare: Vec<String>,
    /// Run every cell once per value of one numeric stage field: KEY=V1,V2,... sets it on every
    /// stage without a plan of its own (the stages --compare varies), STAGE.KEY=... on one
    /// stage; a value written xF multiplies each stage's own. Keys: lr, steps, warmup, min_lr,
    /// weight_decay, clip, accumulate, seq_len, beta (dpo stages), ratio (the plan's).
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub sweep: Option<String>,
    /// Run every cell once per seed (the recipe's `seed`; explicit plan and reset seeds move by
    /// the same offset) and report mean ± standard deviation.
    #[arg(long, value_delimiter = ',', value_name = "SEEDS")]
    pub seeds: Vec<u64>,
    /// Levels of learning (mean exact match of the tasks trained) at which to compare
    /// forgetting; default: the quartiles of the range every strategy's sweep covers.
    #[arg(long, value_delimiter = ',', value_name = "LEVELS")]
    pub match_at: Vec<f64>,
    /// Runs at once (each with --threads threads); default: one per --threads cores, keeping a
    /// core free, so a 2-core machine runs one at a time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// Also write the learn-versus-forget plot here (.svg or .png).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Continue after the last finished stage of an earlier run in the same output (for a grid:
    /// finished runs are read back, unfinished ones continue, missing ones start).
    #[arg(long)]
    pub resume: bool,
    /// Replace an earlier run in the output.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Output directory (default: the recipe's `output`).
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Run the recipe's smaller variant: its `quick` block laid over it (fewer steps, eval
    /// subsets, another output; see docs/recipe.md).
    #[arg(long)]
    pub quick: bool,
    /// The dtype of matrix products: f32, or bf16/f16 (autocast: master weights, gradients,
    /// optimizer state, norms, softmax and loss stay f32); replaces the recipe's `precision`.
    /// bf16 is meant for GPUs (tensor cores); on a CPU it is slower than f32.
    #[arg(long, value_name = "DTYPE")]
    pub precision: Option<String>,
    /// cpu, or cuda[:N] (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: &RunArgs, sink: &Terminal) -> Result<String> {
    // candle's CPU kernels size their thread pools from RAYON_NUM_THREADS, not from rayon's
    // global pool (which `--threads` sets in main): pass the count on.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var(
            "RAYON_NUM_THREADS",
            rayon::current_num_threads().to_string(),
        );
    }
    let device = train::device(&a.device)?;
    let command = super::command_line();
    let o = Options {
        device,
        compare: a.compare.clone(),
        sweep: a.sweep.clone(),
        seeds: a.seeds.clone(),
        match_at: a.match_at.clone(),
        jobs: a.jobs.map(|j| j as usize),
        threads: rayon::current_num_threads(),
        plot: a.plot.clone(),
        precision: a.precision.clone(),
        quick: a.quick,
        output: a.output.clone(),
        resume: a.resume,
        force: a.force,
        quiet: sink.quiet,
        sink: Arc::new(Terminal { quiet: sink.quiet }),
        reporter: Arc::new(report::Files {
            sink: Arc::new(Terminal { quiet: sink.quiet }),
        }),
        command,
    };
    Ok(match train::run_recipe(&a.recipe, &o)? {
        Outcome::One(r) => report::run::markdown(&r),
        Outcome::Grid(g) => report::grid::markdown(&g),
    })
}
