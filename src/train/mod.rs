//! `hft run`: multi-stage training with a freeze plan per stage, evaluation of every task after
//! every stage, and a forgetting report. Built on candle (behind the `train` feature).
//!
//! The pieces, one idea per file: [`model`] (the differentiable Llama family), [`linear`]
//! (frozen and trainable parameters, the frozen-linear op), [`optim`] (masked AdamW), [`data`]
//! (JSONL and tokenizers), [`recipe`] (the YAML recipe), [`eval`] (loss and exact match),
//! [`stage`] (the stage loop), [`report`] (R matrices, OP/BWT, report.json/report.md),
//! [`dpo`] (the `dpo` stage kind), [`retention`] (the knowledge-retention eval kind) and
//! [`bundle`] (the bundled tiny recipe's model and data), [`grid`] (strategies × a swept
//! field × seeds, with shared stages trained once) and [`compare`] (the grid's report: spread
//! over seeds, forgetting at equal learning, the learn-versus-forget plot).

pub mod bundle;
pub mod compare;
pub mod data;
pub mod dpo;
pub mod eval;
pub mod grid;
pub mod linear;
pub mod model;
pub mod ops;
pub mod optim;
pub mod recipe;
pub mod report;
pub mod retention;
pub mod stage;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::{Error, Result};
use compare::GridReport;
use grid::{Grid, GridOptions, Sweep};
use recipe::Recipe;
use report::RunReport;
use stage::{Log, RunOptions};

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
                .map_err(|_| Error::usage(format!("--device {name}: bad device number")))?,
        ),
        None => (name, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(ordinal),
        _ => Err(Error::usage(format!(
            "--device {name}: expected cpu or cuda[:N]"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        Error::usage(format!(
            "--device cuda: no usable GPU {ordinal} ({e}); run with --device cpu"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    Err(Error::usage(
        "--device cuda: this hft was built without CUDA support; rebuild with \
         `cargo build --release --features cuda` (needs the CUDA toolkit) or use --device cpu",
    ))
}

/// What `hft run` did.
pub enum Outcome {
    One(Box<RunReport>),
    Grid(Box<GridReport>),
}

/// Settings of `hft run` besides the recipe.
#[derive(Debug, Clone)]
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
}

/// Keeps freed tensor buffers in the process instead of handing them back to the kernel.
///
/// Every candle op allocates its output afresh; glibc serves large blocks with mmap and returns
/// them on free, so each step pays page faults and zeroing for every activation (about a fifth
/// of a step on the tiny recipe). Raising the mmap and trim thresholds makes the blocks reused.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before training allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Runs a recipe once, or (with `--compare`, `--sweep` or `--seeds`) once per cell of the
/// grid, each under `output/STRATEGY[/KEY=VALUE][/seed-N]`, with the grid's report at `output`.
pub fn run(recipe_path: &Path, o: &Options) -> Result<Outcome> {
    let mut recipe = Recipe::read_variant(recipe_path, o.quick)?;
    if let Some(p) = &o.precision {
        recipe::parse_precision(Some(p)).map_err(|m| Error::usage(format!("--precision: {m}")))?;
        recipe.precision = Some(p.clone());
    }
    tune_allocator();
    let output = o.output.clone().unwrap_or_else(|| recipe.output.clone());
    let g = Grid {
        strategies: o.compare.clone(),
        sweep: o.sweep.as_deref().map(Sweep::parse).transpose()?,
        seeds: o.seeds.clone(),
    };
    if g.strategies.is_empty() && g.sweep.is_none() && g.seeds.is_empty() {
        if o.plot.is_some() || o.jobs.is_some() {
            return Err(Error::usage(
                "--plot and --jobs need a grid: --compare, --sweep or --seeds",
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
        };
        let r = stage::run(&recipe, recipe_path, &opts)?;
        report::write_run(&r, &output)?;
        return Ok(Outcome::One(Box::new(r)));
    }
    if !o.match_at.is_empty() && g.sweep.is_none() {
        return Err(Error::usage(
            "--match-at reads forgetting along a sweep: give --sweep KEY=V1,V2,...",
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
    };
    let reports = grid::run(&cells, &go)?;
    let levels = (!o.match_at.is_empty()).then_some(o.match_at.as_slice());
    let c = GridReport::new(recipe_path, &cells, &reports, levels);
    std::fs::create_dir_all(&output).map_err(|e| Error::io(&output, e))?;
    c.write(&output, o.plot.as_deref())?;
    Ok(Outcome::Grid(Box::new(c)))
}
