//! `hft run`: multi-stage training with a freeze plan per stage, evaluation of every task after
//! every stage, and a forgetting report. Built on candle (behind the `train` feature).
//!
//! One concern per module: [`model`] (the differentiable Llama family, its parameters and ops
//! with hand-written backward), [`optim`] (masked AdamW), [`data`] (JSONL and tokenizers),
//! [`objective`] (language modelling and DPO), [`eval`] (loss, exact match, retention),
//! [`recipe`] (the YAML recipe: schema, checks, quick variants, sweeps), [`stage`] (the loop
//! of one stage), [`stages`] (the run of stages and its post-hoc baselines), [`grid`]
//! (strategies × a swept field × seeds, shared stages trained once), [`metrics`] (R, OP, BWT of
//! a run) and [`grid_metrics`] (spread over seeds, forgetting at equal learning). Training
//! computes and never formats: report files are written by the [`Reporter`] the caller passes.

pub mod data;
pub mod derive;
pub mod eval;
pub mod grid;
pub mod grid_metrics;
pub mod grid_stats;
pub mod logits;
pub mod metrics;
pub mod model;
pub mod objective;
pub mod optim;
pub mod recipe;
pub mod stage;
pub mod stages;
pub mod sys;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::progress::Sink;
use grid::{Grid, GridOptions, Sweep};
use grid_metrics::GridReport;
use metrics::RunReport;
use recipe::Recipe;
use stage::Log;
use stages::RunOptions;

/// Writes the report files of a finished run and of a grid. Training hands its metrics to this
/// and never renders them itself; `report::Files` is the implementation the CLI passes.
pub trait Reporter: Send + Sync {
    fn run(&self, r: &RunReport, dir: &Path) -> Result<()>;
    /// `plot`: another copy of the learn-versus-forget plot (.svg or .png).
    fn grid(&self, g: &GridReport, dir: &Path, plot: Option<&Path>) -> Result<()>;
}

/// Maps candle's errors into the library's: a candle failure is ours, not the user's.
pub struct TrainError;

impl TrainError {
    pub fn map(e: candle_core::Error) -> Error {
        Error::Internal(format!("candle: {e}"))
    }
}

/// `cpu`, or `cuda` / `cuda:N` when built with the `cuda` feature and a GPU is present.
pub fn device(name: &str) -> Result<Device> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|_| Error::field("device", format!("{name}: bad device number")))?,
        ),
        None => (name, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(ordinal),
        _ => Err(Error::field(
            "device",
            format!("{name}: expected cpu or cuda[:N]"),
        )),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        Error::field(
            "device",
            format!("cuda: no usable GPU {ordinal} ({e}); run on the cpu device"),
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    Err(Error::field(
        "device",
        "cuda: this hft was built without CUDA support; rebuild with \
         `cargo build --release --features cuda` (scripts/build-cuda.sh) or run on the cpu device",
    ))
}

/// What `hft run` did.
pub enum Outcome {
    One(Box<RunReport>),
    Grid(Box<GridReport>),
}

/// Settings of `hft run` besides the recipe.
#[derive(Clone)]
pub struct Options {
    pub device: Device,
    /// Strategies to compare (`--compare`).
    pub compare: Vec<String>,
    /// `--sweep KEY=V1,V2,...`.
    pub sweep: Option<String>,
    pub seeds: Vec<u64>,
    /// Levels of learning for the matched view (default: from the sweep).
    pub match_at: Vec<f64>,
    /// Runs at once (None: [`grid::auto_jobs`]).
    pub jobs: Option<usize>,
    /// Threads per run.
    pub threads: usize,
    /// Lay the recipe's `quick` block over it.
    pub quick: bool,
    /// Replaces the recipe's `precision` (f32, bf16, f16).
    pub precision: Option<String>,
    /// Another copy of the learn-versus-forget plot (.svg or .png).
    pub plot: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub resume: bool,
    pub force: bool,
    pub quiet: bool,
    pub command: String,
    /// Where log lines and progress go.
    pub sink: Arc<dyn Sink>,
    /// Writes the report files.
    pub reporter: Arc<dyn Reporter>,
}

/// Applies the output policy to a run's (or grid's) directory: never an input or around one;
/// continued (`resume`) or replaced (`force`) only if hft wrote it.
fn claim_output(output: &Path, recipe: &Recipe, recipe_path: &Path, o: &Options) -> Result<()> {
    let mut inputs = recipe.inputs();
    inputs.push(recipe_path.to_path_buf());
    let refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    crate::io::output::check_inputs(output, &refs)?;
    if let Some(p) = &o.plot {
        crate::io::output::check(p, crate::io::output::Kind::File, &refs, o.force)?;
        let (plot, out) = (
            crate::io::output::resolve(p),
            crate::io::output::resolve(output),
        );
        if plot == out || out.starts_with(&plot) {
            return Err(Error::field(
                "plot",
                format!("{} is the run's output directory or holds it", p.display()),
            ));
        }
    }
    let earlier =
        output.join(stages::RUN_STATE).exists() || output.join(crate::io::output::MARKER).exists();
    if !o.force && !o.resume && earlier {
        return Err(Error::input(
            output,
            "holds an earlier run; option `resume` continues it, option `force` starts over",
        ));
    }
    crate::io::output::check_existing(output, crate::io::output::Kind::Dir, o.force || o.resume)
}

/// Runs a recipe once, or (with `--compare`, `--sweep` or `--seeds`) once per cell of the
/// grid, each under `output/STRATEGY[/KEY=VALUE][/seed-N]`, with the grid's report at `output`.
pub fn run_recipe(recipe_path: &Path, o: &Options) -> Result<Outcome> {
    let mut recipe = Recipe::read_variant(recipe_path, o.quick)?;
    if let Some(p) = &o.precision {
        recipe::parse_precision(Some(p))?;
        recipe.precision = Some(p.clone());
    }
    sys::tune_allocator();
    let output = o.output.clone().unwrap_or_else(|| recipe.output.clone());
    claim_output(&output, &recipe, recipe_path, o)?;
    let g = Grid {
        strategies: o.compare.clone(),
        sweep: o.sweep.as_deref().map(Sweep::parse).transpose()?,
        seeds: o.seeds.clone(),
    };
    if g.strategies.is_empty() && g.sweep.is_none() && g.seeds.is_empty() {
        if o.plot.is_some() || o.jobs.is_some() {
            return Err(Error::usage(
                "option `plot` and option `jobs` need a grid: option `compare`, option `sweep` or \
                 option `seeds`",
            ));
        }
        let opts = RunOptions {
            device: o.device.clone(),
            strategy: None,
            output: output.clone(),
            resume: o.resume,
            force: o.force,
            log: if o.quiet { Log::Quiet } else { Log::Lines },
            command: o.command.clone(),
            sink: o.sink.clone(),
        };
        let r = stages::run_stages(&recipe, recipe_path, &opts)?;
        o.reporter.run(&r, &output)?;
        return Ok(Outcome::One(Box::new(r)));
    }
    if let Some(v) = o
        .match_at
        .iter()
        .find(|v| !(v.is_finite() && (0.0..=1.0).contains(*v)))
    {
        return Err(Error::field(
            "match_at",
            format!("{v} is not a level of learning in [0, 1] (a mean exact match)"),
        ));
    }
    if !o.match_at.is_empty() && g.sweep.is_none() {
        return Err(Error::field(
            "match_at",
            "reads forgetting along a sweep: give option `sweep` KEY=V1,V2,...",
        ));
    }
    let cells = grid::expand(&recipe, recipe_path, &g)?;
    let go = GridOptions {
        recipe_path,
        output: &output,
        device: o.device.clone(),
        resume: o.resume,
        force: o.force,
        quiet: o.quiet,
        command: o.command.clone(),
        jobs: o.jobs.unwrap_or_else(|| grid::auto_jobs(o.threads)),
        threads: o.threads,
        sink: o.sink.clone(),
        reporter: o.reporter.as_ref(),
    };
    let reports = grid::run_grid(&cells, &go)?;
    let levels = (!o.match_at.is_empty()).then_some(o.match_at.as_slice());
    let c = GridReport::new(recipe_path, &cells, &reports, levels);
    std::fs::create_dir_all(&output).map_err(|e| Error::io(&output, e))?;
    o.reporter.grid(&c, &output, o.plot.as_deref())?;
    Ok(Outcome::Grid(Box::new(c)))
}
