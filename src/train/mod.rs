//! `hft run`: multi-stage training with a freeze plan per stage, evaluation of every task after
//! every stage, and a forgetting report. Built on candle (behind the `train` feature).
//!
//! The pieces, one idea per file: [`model`] (the differentiable Llama family), [`linear`]
//! (frozen and trainable parameters, the frozen-linear op), [`optim`] (masked AdamW), [`data`]
//! (JSONL and tokenizers), [`recipe`] (the YAML recipe), [`eval`] (loss and exact match),
//! [`stage`] (the stage loop), [`report`] (R matrices, OP/BWT, report.json/report.md),
//! [`dpo`] (the `dpo` stage kind), [`retention`] (the knowledge-retention eval kind) and
//! [`bundle`] (the bundled tiny recipe's model and data).

pub mod bundle;
pub mod data;
pub mod dpo;
pub mod eval;
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
use recipe::Recipe;
use report::{CompareReport, RunReport};
use stage::{RunOptions, RUN_STATE};

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
    Compare(Box<CompareReport>),
}

/// Settings of `hft run` besides the recipe.
#[derive(Debug, Clone)]
pub struct Options {
    pub device: Device,
    pub compare: Vec<String>,
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

/// Runs a recipe once, or once per strategy of `compare` (each under `output/STRATEGY`). Under
/// `--compare`, the leading stages that pin their own plan are identical for every strategy, so
/// they are trained once and copied (marked `shared` in the report).
pub fn run(recipe_path: &Path, o: &Options) -> Result<Outcome> {
    let recipe = Recipe::read(recipe_path)?;
    tune_allocator();
    let output = o.output.clone().unwrap_or_else(|| recipe.output.clone());
    if o.compare.is_empty() {
        let opts = RunOptions {
            device: o.device.clone(),
            strategy: None,
            output: output.clone(),
            resume: o.resume,
            force: o.force,
            quiet: o.quiet,
            command: o.command.clone(),
        };
        let r = stage::run(&recipe, recipe_path, &opts)?;
        report::write_run(&r, &output)?;
        return Ok(Outcome::One(Box::new(r)));
    }
    for s in &o.compare {
        recipe::parse_strategy(s).map_err(Error::usage)?;
    }
    let shared = recipe
        .stages
        .iter()
        .take_while(|s| s.plan.is_some())
        .count();
    let mut runs: Vec<RunReport> = Vec::new();
    for s in &o.compare {
        let out = output.join(s);
        let mut resume = o.resume;
        if let Some(first) = runs.first() {
            let fresh = !(o.resume && out.join(RUN_STATE).is_file());
            if fresh && shared > 0 {
                seed_shared(first, &output.join(&first.strategy), &out, s, shared)?;
                resume = true;
            }
        }
        if !o.quiet {
            eprintln!("hft: === strategy {s} -> {} ===", out.display());
        }
        let opts = RunOptions {
            device: o.device.clone(),
            strategy: Some(s.clone()),
            output: out.clone(),
            resume,
            force: o.force && !resume,
            quiet: o.quiet,
            command: o.command.clone(),
        };
        let r = stage::run(&recipe, recipe_path, &opts)?;
        report::write_run(&r, &out)?;
        runs.push(r);
    }
    let c = CompareReport::new(recipe_path, runs);
    std::fs::create_dir_all(&output).map_err(|e| Error::io(&output, e))?;
    c.write(&output)?;
    Ok(Outcome::Compare(Box::new(c)))
}

/// Starts `to` as a copy of the first `n` stages of the run in `from`.
fn seed_shared(first: &RunReport, from: &Path, to: &Path, strategy: &str, n: usize) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| Error::io(to, e))?;
    }
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    let mut r = first.clone();
    r.strategy = strategy.to_string();
    r.stages.truncate(n);
    r.post.clear();
    r.metrics = Default::default();
    for s in &mut r.stages {
        copy_dir(&from.join(&s.checkpoint), &to.join(&s.checkpoint))?;
        s.shared_from.get_or_insert_with(|| first.strategy.clone());
    }
    r.write(&to.join(RUN_STATE))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let e = e.map_err(|e| Error::io(from, e))?;
        let dest = to.join(e.file_name());
        std::fs::copy(e.path(), &dest).map_err(|err| Error::io(&dest, err))?;
    }
    Ok(())
}
