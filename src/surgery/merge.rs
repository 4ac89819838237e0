//! Merge methods over a BASE and N fine-tunes of it: task arithmetic, TIES, DARE, and
//! selective (per-element) merging.
//!
//! Inputs are ordered `[BASE, M1, ..., Mn]` for the task-vector methods (task vector
//! `dᵢ = Mᵢ − BASE`) and `[M1, ..., Mn]` for select. Every random draw is a pure function of
//! (seed, tensor name, element index) through [`crate::rng`], so a merge is reproducible on any
//! machine, in any thread order:
//!
//! * DARE drops element `j` of task vector `i` (0-based) when
//!   `uniform(key(seed, name), j * n + i) < p`, `n` the number of task vectors.
//! * select takes element `j` from the first model `i` with `uniform(key(seed, name), j) <
//!   p₀ + ... + pᵢ`.

use super::radix::{abs_bits, delta_thresholds};
use super::{Combine, TensorOp, TensorView};
use crate::defaults;
use crate::error::{Error, Result};
use crate::plan::mask_count;
use crate::rng;

/// `BASE + λ Σ wᵢ dᵢ`, optionally with DARE's drop-and-rescale of each dᵢ first.
#[derive(Debug, Clone)]
pub struct TaskArithmetic {
    pub weights: Vec<f32>,
    pub lambda: f32,
    /// DARE: (drop rate p, seed). Kept entries are scaled by `1 / (1 - p)`.
    pub dare: Option<(f64, u64)>,
}

impl TaskArithmetic {
    pub fn new(weights: Vec<f64>, lambda: f64) -> Self {
        TaskArithmetic {
            weights: weights.iter().map(|&w| w as f32).collect(),
            lambda: lambda as f32,
            dare: None,
        }
    }

    /// DARE at drop rate `p` (in [0, 1]); `p = 1` drops everything (the result is BASE).
    pub fn dare(weights: Vec<f64>, lambda: f64, p: f64, seed: u64) -> Result<Self> {
        check_unit("drop", p)?;
        let mut t = Self::new(weights, lambda);
        t.dare = Some((p, seed));
        Ok(t)
    }
}

impl Combine for TaskArithmetic {
    fn tensor<'a>(&'a self, t: &TensorView<'a>) -> Result<TensorOp<'a>> {
        let n = self.weights.len();
        check_inputs(t, n + 1)?;
        let lambda = self.lambda;
        match self.dare {
            None => Ok(TensorOp::Values(Box::new(move |_, ins, out| {
                task_sum(ins, &self.weights, lambda, out, |_, _| true)
            }))),
            Some((p, seed)) => {
                let key = rng::key(seed, t.name);
                let scale = if p < 1.0 {
                    (1.0 / (1.0 - p)) as f32
                } else {
                    0.0
                };
                // `uniform(key, i) >= p` in integers: uniform is m / 2^53 with m = draw >> 11,
                // and p · 2^53 is exact, so m >= ceil(p · 2^53) is the same test without an
                // unsigned-to-float conversion per draw.
                let keep_from = (p * (1u64 << 53) as f64).ceil() as u64;
                Ok(TensorOp::Values(Box::new(move |start, ins, out| {
                    let kept = |i: usize, j: usize| {
                        rng::draw(key, ((start + j) * n + i) as u64) >> 11 >= keep_from
                    };
                    task_sum(ins, &self.weights, lambda * scale, out, kept)
                })))
            }
        }
    }
}

/// `out = BASE + factor · Σᵢ wᵢ (Mᵢ − BASE)` over the entries `kept(i, j)` allows (task
/// vector `i`, element `j` of the chunk), `ins = [BASE, M1, ...]`. Summed task vector by task
/// vector with `out` holding the sums: each element gets the same additions in the same order
/// as when summed on its own (the same bits), and the loops vectorise. A dropped entry adds
/// +0.0, which keeps the sum's bits: it starts at +0.0, and a sum is -0.0 only when both terms
/// are.
#[inline(always)]
fn task_sum(
    ins: &[&[f32]],
    weights: &[f32],
    factor: f32,
    out: &mut [f32],
    kept: impl Fn(usize, usize) -> bool,
) {
    let base = ins[0];
    out.fill(0.0);
    for (i, (m, w)) in ins[1..].iter().zip(weights).enumerate() {
        let rows = out.iter_mut().zip(*m).zip(base).enumerate();
        for (j, ((o, &x), &b)) in rows {
            *o += if kept(i, j) { w * (x - b) } else { 0.0 };
        }
    }
    for (o, &b) in out.iter_mut().zip(base) {
        *o = b + factor * *o;
    }
}

/// TIES-merging (Yadav et al. 2023): trim each task vector to its `density` largest
/// magnitudes, elect a sign per element by the sign of Σ wᵢ dᵢ over the trimmed vectors (ties
/// go to +), and take the weighted mean of the entries that agree with it (disjoint mean):
/// `BASE + λ Σ_{agree} wᵢ dᵢ / Σ_{agree} wᵢ`. Entries tied with the k-th largest magnitude
/// are all kept; zero entries never vote.
#[derive(Debug, Clone)]
pub struct Ties {
    pub weights: Vec<f32>,
    pub lambda: f32,
    pub density: f64,
}

impl Ties {
    pub fn new(weights: Vec<f64>, lambda: f64, density: f64) -> Result<Self> {
        check_unit("density", density)?;
        Ok(Ties {
            weights: weights.iter().map(|&w| w as f32).collect(),
            lambda: lambda as f32,
            density,
        })
    }
}

impl Combine for Ties {
    fn tensor<'a>(&'a self, t: &TensorView<'a>) -> Result<TensorOp<'a>> {
        let n = self.weights.len();
        check_inputs(t, n + 1)?;
        let k = mask_count(self.density, t.numel as u64);
        let thresholds = delta_thresholds(t, &vec![k; n]);
        let lambda = self.lambda;
        Ok(TensorOp::Values(Box::new(move |_, ins, out| {
            let mut wd = vec![0f32; n];
            for (j, o) in out.iter_mut().enumerate() {
                let b = ins[0][j];
                let mut sum = 0f32;
                for i in 0..n {
                    let d = ins[i + 1][j] - b;
                    let keep = thresholds[i].is_some_and(|th| abs_bits(d) >= th);
                    wd[i] = if keep { self.weights[i] * d } else { 0.0 };
                    sum += wd[i];
                }
                let positive = sum >= 0.0;
                let (mut num, mut den) = (0f32, 0f32);
                for (x, w) in wd.iter().zip(&self.weights) {
                    if *x != 0.0 && (*x > 0.0) == positive {
                        num += x;
                        den += w;
                    }
                }
                let mixed = if den != 0.0 { num / den } else { 0.0 };
                *o = b + lambda * mixed;
            }
        })))
    }
}

/// Selective merging: each element comes whole from one model, model `i` with probability
/// `pᵢ`. Two models at (0.5, 0.5) is an element-level half-reset.
#[derive(Debug, Clone)]
pub struct Select {
    /// Cumulative probabilities, the last exactly 1.
    cumulative: Vec<f64>,
    pub seed: u64,
}

impl Select {
    /// `probs` are normalised to sum to one; negative entries or a zero sum are refused.
    pub fn new(probs: &[f64], seed: u64) -> Result<Self> {
        if probs.len() > 255 {
            return Err(Error::usage("select merges at most 255 models"));
        }
        if probs.iter().any(|p| *p < 0.0) {
            return Err(Error::field("probs", "must not be negative"));
        }
        let probs = super::normalize(probs, "probs")?;
        let mut acc = 0.0;
        let mut cumulative: Vec<f64> = probs
            .iter()
            .map(|p| {
                acc += p;
                acc
            })
            .collect();
        *cumulative.last_mut().expect("non-empty") = 1.0;
        Ok(Select { cumulative, seed })
    }
}

impl Combine for Select {
    fn tensor<'a>(&'a self, t: &TensorView<'a>) -> Result<TensorOp<'a>> {
        check_inputs(t, self.cumulative.len())?;
        if let Some(i) = self.cumulative.iter().position(|&c| c >= 1.0) {
            if i == 0 || self.cumulative[i - 1] <= 0.0 {
                // A single model with probability 1: every draw picks it.
                return Ok(TensorOp::Copy(i));
            }
        }
        let key = rng::key(self.seed, t.name);
        Ok(TensorOp::Pick(Box::new(move |start, sel| {
            for (j, s) in sel.iter_mut().enumerate() {
                let u = rng::uniform(key, (start + j) as u64);
                *s = self.cumulative.iter().position(|&c| u < c).unwrap_or(0) as u8;
            }
        })))
    }
}

crate::choice! {
    /// A merge method of fine-tunes of one base.
    pub enum Method {
        /// BASE + λ Σ wᵢ (Mᵢ − BASE).
        TaskArithmetic = "task-arithmetic",
        /// Trim each task vector to `density` by magnitude, elect a sign per element, disjoint
        /// mean of the agreeing entries, times λ.
        Ties = "ties",
        /// Drop each task-vector entry with probability `drop`, rescale by 1/(1 − p), then task
        /// arithmetic.
        Dare = "dare",
        /// Per element, take Mᵢ with probability pᵢ (`probs`); no BASE.
        Select = "select",
    }
}

/// A merge's parameters as a user gave them; `None` takes the method's default
/// ([`crate::defaults`]).
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// Task-vector weights wᵢ, one per model (default 1 each).
    pub weights: Option<Vec<f64>>,
    /// Scale λ of the merged task vector.
    pub lambda: Option<f64>,
    /// TIES: fraction of each task vector kept.
    pub density: Option<f64>,
    /// DARE: drop rate of task-vector entries.
    pub drop: Option<f64>,
    /// select: probability of each model (default equal).
    pub probs: Option<Vec<f64>>,
    /// Seed of the random draws (DARE, select).
    pub seed: u64,
}

/// A merge ready to run: the combination and where its inputs go.
pub struct Merge {
    pub combine: Box<dyn Combine>,
    /// Inputs are `[BASE, M1, ..., Mn]` when true, `[M1, ..., Mn]` otherwise.
    pub with_base: bool,
    /// The input whose dtypes, config and metadata the output takes.
    pub primary: usize,
}

impl Method {
    /// The parameters this method takes; any other one given is refused by name.
    pub fn params(self) -> &'static [&'static str] {
        match self {
            Method::TaskArithmetic => &["weights", "lambda"],
            Method::Ties => &["weights", "lambda", "density"],
            Method::Dare => &["weights", "lambda", "drop", "seed"],
            Method::Select => &["probs", "seed"],
        }
    }

    /// Whether the method takes its task vectors from a BASE.
    pub fn needs_base(self) -> bool {
        self != Method::Select
    }

    /// Checks `p` against the method (for `models` fine-tunes, BASE not counted; `base` whether
    /// one was given) and builds it.
    pub fn build(self, models: usize, base: bool, p: &Params) -> Result<Merge> {
        let given = [
            ("weights", p.weights.is_some()),
            ("lambda", p.lambda.is_some()),
            ("density", p.density.is_some()),
            ("drop", p.drop.is_some()),
            ("probs", p.probs.is_some()),
        ];
        for (name, is_given) in given {
            if is_given && !self.params().contains(&name) {
                return Err(Error::field(
                    name,
                    format!("does not apply to method `{self}`"),
                ));
            }
        }
        match (self.needs_base(), base) {
            (true, false) => {
                return Err(Error::field(
                    "base",
                    format!("method `{self}` needs a BASE (the model the task vectors are taken from)"),
                ))
            }
            (false, true) => {
                return Err(Error::field(
                    "base",
                    format!("method `{self}` takes no BASE: list every model to select among (BASE too, for a half-reset)"),
                ))
            }
            _ => {}
        }
        let list = |v: &Option<Vec<f64>>, field: &str| -> Result<Vec<f64>> {
            match v {
                None => Ok(vec![1.0; models]),
                Some(v) if v.len() != models => Err(Error::field(
                    field,
                    format!("{} values for {models} models", v.len()),
                )),
                Some(v) => Ok(v.clone()),
            }
        };
        let lambda = p.lambda.unwrap_or(defaults::LAMBDA);
        if !lambda.is_finite() {
            return Err(Error::field("lambda", "must be a finite number"));
        }
        let (combine, with_base, primary): (Box<dyn Combine>, bool, usize) = match self {
            Method::Select => {
                if models < 2 {
                    return Err(Error::field("models", "select needs at least two models"));
                }
                let probs = list(&p.probs, "probs")?;
                (Box::new(Select::new(&probs, p.seed)?), false, 0)
            }
            Method::TaskArithmetic => {
                let w = list(&p.weights, "weights")?;
                (Box::new(TaskArithmetic::new(w, lambda)), true, 1)
            }
            Method::Dare => {
                let w = list(&p.weights, "weights")?;
                let drop = p.drop.unwrap_or(defaults::DROP);
                (
                    Box::new(TaskArithmetic::dare(w, lambda, drop, p.seed)?),
                    true,
                    1,
                )
            }
            Method::Ties => {
                let w = list(&p.weights, "weights")?;
                let density = p.density.unwrap_or(defaults::DENSITY);
                (Box::new(Ties::new(w, lambda, density)?), true, 1)
            }
        };
        Ok(Merge {
            combine,
            with_base,
            primary,
        })
    }
}

fn check_inputs(t: &TensorView, expected: usize) -> Result<()> {
    if t.n_inputs() != expected {
        return Err(Error::Internal(format!(
            "merge of `{}` got {} inputs, expected {expected}",
            t.name,
            t.n_inputs()
        )));
    }
    Ok(())
}

fn check_unit(field: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        return Err(Error::field(field, format!("must be in [0, 1], got {v}")));
    }
    Ok(())
}
