//! Checkpoint surgery: half-reset, averaging and merging, all through one driver.
//!
//! Every command here does the same thing per tensor: read the same-named tensor from N
//! inputs and produce one output tensor. That step is the [`Combine`] trait; reset
//! ([`reset::Reset`]), the weighted average ([`average::Linear`]) and each merge method
//! ([`merge`]) are small implementations of it. Everything else (matching names and shapes
//! across inputs, copying what only one input has, resized vocabularies, dtype conversion,
//! parallelism over tensors and over blocks inside a big tensor, progress, dropping input
//! pages once used, feeding the [`CheckpointWriter`]) is [`run`], written once.
//!
//! Values are streamed in chunks of [`CHUNK`] elements decoded to f32; no tensor is ever held
//! whole, so peak memory does not grow with the model. Methods that only choose which input an
//! element comes from (reset, select) say so ([`TensorOp::Pick`]) and are served by copying
//! bytes, which keeps them exact in every dtype.

pub mod average;
pub mod gta;
pub mod merge;
pub mod mergekit;
mod radix;
pub mod reset;
mod side;
mod stream;

use std::path::PathBuf;

use rayon::prelude::*;

use crate::arch::{Layout, Role};
use crate::error::{Error, Result};
use crate::io::checkpoint::natural_cmp;
use crate::io::dtype::{self, DType, CHUNK};
use crate::io::writer::{self, CheckpointWriter, TensorSpec, WriterOptions};
use crate::io::{Checkpoint, TensorInfo};
use crate::progress::Progress;

/// Elements per parallel work item inside a tensor: big enough that the per-item overhead (a
/// positional write, an madvise) vanishes, small enough that a 7B model's large matrices split
/// over every core.
const BLOCK: usize = 16 * CHUNK;

/// How one output tensor is produced, decided per tensor by a [`Combine`].
pub enum TensorOp<'a> {
    /// The whole tensor from input `i`, unchanged (converted only if the output dtype differs).
    Copy(usize),
    /// Per element, which input the value comes from: `f(start, sel)` fills `sel[j]` with the
    /// input index of element `start + j`. Served by copying bytes, so exact in any dtype.
    Pick(PickFn<'a>),
    /// Arithmetic: `f(start, inputs, out)` gets `inputs[i][j]` = element `start + j` of input
    /// `i` decoded to f32 and writes `out[j]`. Chunks are disjoint and come in any order, on any
    /// thread, so a kernel must depend only on its arguments (and per-tensor state it captured).
    Values(ValuesFn<'a>),
}

pub type PickFn<'a> = Box<dyn Fn(usize, &mut [u8]) + Send + Sync + 'a>;
pub type ValuesFn<'a> = Box<dyn Fn(usize, &[&[f32]], &mut [f32]) + Send + Sync + 'a>;

/// The one interface of every surgery: given the same tensor from N inputs, say how the output
/// is made. Called once per float tensor that every input holds; a method that needs a global
/// figure of the tensor first (TIES: a magnitude threshold) computes it here with
/// [`TensorView::fold_chunks`], streaming, and captures it in the returned kernel.
pub trait Combine: Sync {
    fn tensor<'a>(&'a self, t: &TensorView<'a>) -> Result<TensorOp<'a>>;

    /// True when the output is the primary input edited (reset: TUNED with parts put back), so
    /// it keeps exactly the primary's tensors and shapes; false for a merge, whose output holds
    /// every tensor of the inputs (with `--allow-missing`) at the largest vocabulary.
    fn keeps_primary_tensors(&self) -> bool {
        false
    }
}

/// One tensor as the inputs hold it, for a [`Combine`] to decide on.
pub struct TensorView<'a> {
    pub name: &'a str,
    /// The output shape.
    pub shape: &'a [usize],
    /// Elements combined: all of them, or the rows every input shares when a vocabulary was
    /// resized (row-major, so element `i` is the same element in every input).
    pub numel: usize,
    pub role: Role,
    inputs: Vec<(&'a Checkpoint, &'a TensorInfo)>,
}

impl TensorView<'_> {
    pub fn n_inputs(&self) -> usize {
        self.inputs.len()
    }

    /// The dtype input `i` stores this tensor in.
    pub fn dtype(&self, i: usize) -> DType {
        self.inputs[i].1.dtype
    }

    /// Elements `start..end` of every input, decoded to f32 into `bufs` (one per input, each
    /// at least `end - start` long): for a method that must look again at one stretch.
    pub fn decode(&self, start: usize, end: usize, bufs: &mut [Vec<f32>]) {
        decode_inputs(&self.inputs, start, end, bufs);
    }

    /// A parallel fold over the tensor's elements, decoded chunk by chunk:
    /// `fold(acc, start, inputs)` as for [`TensorOp::Values`], then `reduce` merges
    /// accumulators. Memory stays at a few chunks per thread whatever the tensor size.
    pub fn fold_chunks<A, I, F, R>(&self, identity: I, fold: F, reduce: R) -> A
    where
        A: Send,
        I: Fn() -> A + Sync + Send,
        F: Fn(A, usize, &[&[f32]]) -> A + Sync + Send,
        R: Fn(A, A) -> A + Sync + Send,
    {
        let n = self.inputs.len();
        let blocks = self.numel.div_ceil(BLOCK);
        (0..blocks)
            .into_par_iter()
            .fold(
                || (identity(), vec![vec![0f32; CHUNK]; n]),
                |(mut acc, mut bufs), b| {
                    let (lo, hi) = (b * BLOCK, ((b + 1) * BLOCK).min(self.numel));
                    let mut s = lo;
                    while s < hi {
                        let e = (s + CHUNK).min(hi);
                        decode_inputs(&self.inputs, s, e, &mut bufs);
                        let views: Vec<&[f32]> = bufs.iter().map(|v| &v[..e - s]).collect();
                        acc = fold(acc, s, &views);
                        s = e;
                    }
                    (acc, bufs)
                },
            )
            .map(|(acc, _)| acc)
            .reduce(&identity, &reduce)
    }
}

fn decode_inputs(inputs: &[(&Checkpoint, &TensorInfo)], s: usize, e: usize, bufs: &mut [Vec<f32>]) {
    for ((ck, info), buf) in inputs.iter().zip(bufs.iter_mut()) {
        let eb = dtype::elem_bytes(info.dtype).expect("float dtype");
        dtype::decode_f32(
            info.dtype,
            &ck.bytes(info)[s * eb..e * eb],
            &mut buf[..e - s],
        );
    }
}

/// [`decode_inputs`], refusing first an F64 value f32 cannot hold (see [`beyond_f32`]). The
/// written values always pass here; statistics folded before them may see the infinity.
fn decode_checked(
    inputs: &[(&Checkpoint, &TensorInfo)],
    s: usize,
    e: usize,
    bufs: &mut [Vec<f32>],
) -> Result<()> {
    for (ck, info) in inputs {
        let eb = dtype::elem_bytes(info.dtype).expect("float dtype");
        beyond_f32(ck, info, &ck.bytes(info)[s * eb..e * eb], s)?;
    }
    decode_inputs(inputs, s, e, bufs);
    Ok(())
}

/// Refuses an F64 value that f32 arithmetic cannot hold (it would become infinite), naming
/// the file, tensor and element. `bytes` start at element `start`.
fn beyond_f32(ck: &Checkpoint, info: &TensorInfo, bytes: &[u8], start: usize) -> Result<()> {
    match dtype::first_beyond_f32(info.dtype, bytes) {
        None => Ok(()),
        Some((i, v)) => Err(Error::input(
            &ck.source,
            format!(
                "tensor `{}`: element {} is {v:e}, beyond f32's range; hft computes in f32, so \
                 it would become infinite",
                info.name,
                start + i
            ),
        )),
    }
}

/// Which inputs go into an output, and how everything is written.
#[derive(Debug, Clone)]
pub struct Output {
    pub path: PathBuf,
    /// Store float tensors in this dtype (default: the dtype of the primary input).
    pub dtype: Option<DType>,
    pub max_shard_bytes: u64,
    pub force: bool,
    /// Copy a tensor only some inputs hold from one that holds it, and combine the shared rows
    /// of a resized vocabulary (extra rows copied), instead of refusing.
    pub allow_missing: bool,
    /// The command line, recorded in the output's metadata.
    pub command: String,
}

impl Output {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Output {
            path: path.into(),
            dtype: None,
            max_shard_bytes: writer::DEFAULT_MAX_SHARD_BYTES,
            force: false,
            allow_missing: false,
            command: String::new(),
        }
    }
}

/// What [`run`] did, for the notes a command prints.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub path: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    /// Parameters (elements) written.
    pub elements: u64,
    /// Tensors copied whole because not every input holds them: (name, input index).
    pub copied_missing: Vec<(String, usize)>,
    /// Resized tensors: (name, rows combined, rows copied, input the extra rows came from).
    pub resized: Vec<(String, usize, usize, usize)>,
    /// Non-weight files copied from the input whose vocabulary and tying the output has (the
    /// primary input when it has them), and the files hft writes itself (model card).
    pub side_files: Vec<String>,
}

/// How the driver produces one output tensor.
enum Source {
    /// Float tensor every input holds: the combine decides. `shared` elements are combined;
    /// the rest (extra vocabulary rows) come from input `extra_from`.
    Combine { shared: usize, extra_from: usize },
    /// Copied whole from one input (non-float tensors, or tensors not every input holds).
    Copy(usize),
}

struct Job<'a> {
    spec: TensorSpec,
    infos: Vec<Option<&'a TensorInfo>>,
    source: Source,
}

/// Matches the inputs tensor by tensor and decides, before anything is written, how each
/// output tensor is made. Every mismatch is reported at once (the first few, with a count).
fn plan_jobs<'a>(
    inputs: &[&'a Checkpoint],
    primary: usize,
    strict: bool,
    out: &Output,
) -> Result<Vec<Job<'a>>> {
    let mut names: Vec<&str> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for ck in inputs {
        for t in ck.tensors() {
            if seen.insert(t.name.as_str()) {
                names.push(t.name.as_str());
            }
        }
    }
    names.sort_by(|a, b| natural_cmp(a, b));
    let label = |i: usize| inputs[i].display_name();
    let mut problems: Vec<String> = Vec::new();
    let mut hint_allow = false;
    let mut jobs = Vec::with_capacity(names.len());
    for name in names {
        let infos: Vec<Option<&TensorInfo>> = inputs.iter().map(|ck| ck.get(name)).collect();
        let holders: Vec<usize> = (0..inputs.len()).filter(|&i| infos[i].is_some()).collect();
        if strict && out.allow_missing && infos[primary].is_none() {
            continue;
        }
        // The input a copy comes from: the primary when it has the tensor.
        let first = if infos[primary].is_some() {
            primary
        } else {
            holders[0]
        };
        let fi = infos[first].expect("holder");
        let all_float = holders
            .iter()
            .all(|&i| dtype::is_float(infos[i].expect("holder").dtype));
        if holders.len() < inputs.len() {
            let missing: Vec<String> = (0..inputs.len())
                .filter(|i| infos[*i].is_none())
                .map(label)
                .collect();
            if !out.allow_missing {
                hint_allow = true;
                problems.push(format!("`{name}` is missing from {}", missing.join(", ")));
                continue;
            }
            jobs.push(Job {
                spec: spec_for(fi, out.dtype),
                infos,
                source: Source::Copy(first),
            });
            continue;
        }
        let same_shape = holders
            .iter()
            .all(|&i| infos[i].expect("holder").shape == fi.shape);
        if !all_float {
            let same = holders.iter().all(|&i| {
                let t = infos[i].expect("holder");
                t.dtype == fi.dtype
                    && t.shape == fi.shape
                    && inputs[i].bytes(t) == inputs[first].bytes(fi)
            });
            if !same {
                problems.push(format!(
                    "`{name}` is a non-float ({}) tensor that differs between inputs; only float tensors can be combined",
                    fi.dtype
                ));
                continue;
            }
            jobs.push(Job {
                spec: TensorSpec {
                    name: name.to_string(),
                    dtype: fi.dtype,
                    shape: fi.shape.clone(),
                },
                infos,
                source: Source::Copy(first),
            });
            continue;
        }
        if same_shape {
            let spec = spec_for(fi, out.dtype);
            let shared = fi.numel();
            jobs.push(Job {
                spec,
                infos,
                source: Source::Combine {
                    shared,
                    extra_from: first,
                },
            });
            continue;
        }
        // Row-wise resize: same rank (>= 2) and trailing dimensions, different row counts.
        let resizable = holders.iter().all(|&i| {
            let s = &infos[i].expect("holder").shape;
            s.len() == fi.shape.len() && s.len() >= 2 && s[1..] == fi.shape[1..]
        });
        let shapes: Vec<String> = holders
            .iter()
            .map(|&i| format!("{:?} in {}", infos[i].expect("holder").shape, label(i)))
            .collect();
        if !resizable || !out.allow_missing {
            hint_allow |= resizable;
            problems.push(format!("`{name}` has shape {}", shapes.join(" but ")));
            continue;
        }
        let rows = |i: usize| infos[i].expect("holder").shape[0];
        let min_rows = holders.iter().map(|&i| rows(i)).min().expect("holders");
        let max_rows = holders.iter().map(|&i| rows(i)).max().expect("holders");
        let extra_from = if strict || rows(first) == max_rows {
            first
        } else {
            *holders.iter().find(|&&i| rows(i) == max_rows).expect("max")
        };
        let row_len: usize = fi.shape[1..].iter().product();
        let mut spec = spec_for(infos[extra_from].expect("holder"), out.dtype);
        if out.dtype.is_none() {
            spec.dtype = fi.dtype;
        }
        jobs.push(Job {
            spec,
            infos,
            source: Source::Combine {
                shared: min_rows * row_len,
                extra_from,
            },
        });
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(4);
        let more = if n > 4 {
            format!(" (and {} more)", n - 4)
        } else {
            String::new()
        };
        let hint = if hint_allow {
            "; option `allow-missing` copies missing tensors and extra vocabulary rows from the model that has them"
        } else {
            ""
        };
        return Err(Error::usage(format!(
            "inputs do not match: {}{more}{hint}",
            problems.join("; ")
        )));
    }
    Ok(jobs)
}

fn spec_for(t: &TensorInfo, dtype: Option<DType>) -> TensorSpec {
    TensorSpec {
        name: t.name.clone(),
        dtype: match dtype {
            Some(d) if dtype::is_float(t.dtype) => d,
            _ => t.dtype,
        },
        shape: t.shape.clone(),
    }
}

/// Checks that the inputs can be combined and that the output may be written, without
/// writing anything: every bad-input error a surgery can raise before its first byte.
pub fn validate(
    inputs: &[&Checkpoint],
    primary: usize,
    combine: &dyn Combine,
    out: &Output,
) -> Result<()> {
    prepare(inputs, primary, combine, out).map(|_| ())
}

/// What [`validate`] checks and [`run`] then uses.
struct Prepared<'a> {
    jobs: Vec<Job<'a>>,
    specs: Vec<TensorSpec>,
    layout: Layout,
    /// The input the side files (config, tokenizer) come from.
    side: usize,
}

/// Checks the output path against the inputs and lays out every output tensor: each check
/// that can fail on user input, before anything is written.
fn prepare<'a>(
    inputs: &[&'a Checkpoint],
    primary: usize,
    combine: &dyn Combine,
    out: &Output,
) -> Result<Prepared<'a>> {
    if inputs.is_empty() || primary >= inputs.len() {
        return Err(Error::Internal("surgery needs a primary input".into()));
    }
    writer::check_output_path(&out.path, inputs)?;
    let jobs = plan_jobs(inputs, primary, combine.keeps_primary_tensors(), out)?;
    let specs: Vec<TensorSpec> = jobs.iter().map(|j| j.spec.clone()).collect();
    let layout = Layout::for_checkpoint(inputs[primary]);
    let side = side::source(inputs, primary, &specs, &layout, &out.path)?;
    Ok(Prepared {
        jobs,
        specs,
        layout,
        side,
    })
}

/// Runs a surgery: every tensor of the inputs through `combine` into the output. `primary`
/// is the input whose dtype, metadata and non-weight files (config, tokenizer) the output
/// takes (TUNED for reset, the first model otherwise). Nothing is written unless every input
/// check passes; a failure half way leaves no output under the final name.
pub fn run(
    inputs: &[&Checkpoint],
    primary: usize,
    combine: &dyn Combine,
    out: &Output,
    progress: &Progress,
) -> Result<Outcome> {
    let Prepared {
        jobs,
        specs,
        layout,
        side,
    } = prepare(inputs, primary, combine, out)?;
    let ck = inputs[primary];
    let opts = WriterOptions {
        max_shard_bytes: out.max_shard_bytes,
        metadata: writer::provenance(ck.metadata(), &out.command),
        force: out.force,
    };
    let w = CheckpointWriter::create(&out.path, specs, &opts)?;
    let mut outcome = Outcome {
        tensors: jobs.len(),
        bytes: jobs.iter().map(|j| j.spec.nbytes() as u64).sum(),
        elements: jobs
            .iter()
            .map(|j| j.spec.shape.iter().product::<usize>() as u64)
            .sum(),
        ..Outcome::default()
    };
    for j in &jobs {
        match j.source {
            Source::Copy(i) if j.infos.iter().any(Option::is_none) => {
                outcome.copied_missing.push((j.spec.name.clone(), i))
            }
            Source::Combine { shared, extra_from } if shared < j.spec.shape.iter().product() => {
                let row: usize = j.spec.shape[1..].iter().product();
                outcome.resized.push((
                    j.spec.name.clone(),
                    shared / row,
                    j.spec.shape[0] - shared / row,
                    extra_from,
                ))
            }
            _ => {}
        }
    }
    jobs.par_iter().enumerate().try_for_each(|(ti, job)| {
        stream::write_tensor(inputs, &layout, combine, &w, ti, job, progress)
    })?;
    progress.finish();
    outcome.side_files = side::write(inputs, side, &w, out)?;
    outcome.path = w.finish()?;
    Ok(outcome)
}

/// Total input bytes a surgery reads: the progress bar's total.
pub fn input_bytes(inputs: &[&Checkpoint]) -> u64 {
    inputs.iter().map(|c| c.total_bytes()).sum()
}

/// Scales weights to sum to one; refuses a zero sum, which would divide by zero. `field`
/// names the weights in errors.
pub fn normalize(weights: &[f64], field: &str) -> Result<Vec<f64>> {
    let sum: f64 = weights.iter().sum();
    if !sum.is_finite() || weights.iter().any(|w| w.abs() > f32::MAX as f64) {
        return Err(Error::field(
            field,
            "the weights are beyond f32's range, where hft computes; scale them down",
        ));
    }
    if sum.abs() < 1e-12 {
        return Err(Error::field(
            field,
            "the weights sum to zero; they cannot be normalised (option `no-normalize` uses \
             them as given)",
        ));
    }
    Ok(weights.iter().map(|w| w / sum).collect())
}

#[cfg(test)]
mod gta_tests;
#[cfg(test)]
mod tests;
