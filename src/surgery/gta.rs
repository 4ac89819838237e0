//! Merges as mergekit defines them: its generalized task arithmetic (`task_arithmetic`, `ties`,
//! `dare_linear`, `dare_ties`; mergekit 0.1.5, `merge_methods/generalized_task_arithmetic.py`
//! and `sparsify.py`), so that `hft merge --config` gives what `mergekit-yaml` gives.
//!
//! hft's own methods ([`super::merge`]) work in f32 and round once. mergekit works in the dtype
//! it loads tensors in (the config's `dtype`, else the tensor's own) and rounds after every
//! operation; this module does the same. Per tensor, with W that dtype (here: the config's, else
//! BASE's) and r(·) rounding to it, n task vectors and `len` elements:
//!
//! 1. dᵢ = r(r(Mᵢ) − r(BASE)).
//! 2. Sparsify each dᵢ at its density ρᵢ (ρ ≥ 1 leaves it whole and unscaled):
//!    * magnitude (`ties`): ρ ≤ 0 keeps nothing, else the k = max(1, ⌊ρ·len⌋) entries of
//!      largest |dᵢ|. mergekit takes them from torch's argsort, which is not stable: its order
//!      among equal magnitudes is not specified anywhere. hft keeps the first ones by position.
//!      Only entries whose |dᵢ| equals the k-th largest can be chosen differently.
//!    * random (`dare_*`): each entry kept with probability ρ. The draw is hft's counter-based
//!      hash, `uniform(key(seed, name), j·n + i) < ρ`, not torch's generator: the same
//!      distribution, not the same entries (mergekit's own draw changes from run to run unless
//!      seeded).
//!    * `rescale` (the default of `dare_*`): the kept entries times r(r(‖dᵢ‖₁) / r(‖kept‖₁)), so
//!      the tensor keeps its L1 norm (not DARE's 1/ρ), unless either norm is below 1e-7.
//! 3. wdᵢ = r(dᵢ · r(wᵢ)).
//! 4. Consensus (`ties`, `dare_ties`): the sign of Σ wdᵢ elects (0 counts as +); entries of the
//!    other sign, and zero entries, are left out of both sums of step 5.
//! 5. mixed = r(Σ wdᵢ) and divisor = r(Σ r(wᵢ)) over the entries kept. A zero divisor is 1
//!    (without consensus: |divisor| < 1e-8). `normalize`: mixed = r(mixed / divisor).
//! 6. λ ≠ 1: mixed = r(mixed · λ). The output is r(BASE + mixed).
//!
//! Sums of the rounded terms are taken in f32 and rounded once, as torch reduces bf16.

use super::radix::{abs_bits, thresholds_by};
use super::{Combine, TensorOp, TensorView};
use crate::error::{Error, Result};
use crate::io::dtype::CHUNK;
use crate::io::DType;
use crate::rng;

/// How each task vector is thinned first (mergekit's `sparsification_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsify {
    None,
    /// Keep the largest magnitudes (TIES).
    Magnitude,
    /// Keep each entry at random (DARE).
    Random,
}

/// One of mergekit's generalized task-arithmetic merges with its values.
#[derive(Debug, Clone)]
pub struct Gta {
    /// `weight` of every model (BASE excluded).
    pub weights: Vec<f64>,
    /// `density` of every model (1 when not given).
    pub densities: Vec<f64>,
    pub sparsify: Sparsify,
    /// Sign consensus (`ties`, `dare_ties`).
    pub consensus: bool,
    pub normalize: bool,
    pub rescale: bool,
    pub lambda: f64,
    /// Seed of the random sparsification.
    pub seed: u64,
    /// The working dtype W; `None` works in BASE's dtype, tensor by tensor.
    pub dtype: Option<DType>,
}

impl Gta {
    /// mergekit's method `name` (`task_arithmetic`, `ties`, `dare_linear`, `dare_ties`) with its
    /// defaults: its `normalize` and `rescale`, λ 1, seed 0, BASE's dtype. `None` for any other
    /// name.
    pub fn of(name: &str, weights: Vec<f64>, densities: Vec<f64>) -> Option<Gta> {
        let (sparsify, consensus, normalize, rescale) = match name {
            "task_arithmetic" => (Sparsify::None, false, false, false),
            "ties" => (Sparsify::Magnitude, true, true, false),
            "dare_linear" => (Sparsify::Random, false, false, true),
            "dare_ties" => (Sparsify::Random, true, false, true),
            _ => return None,
        };
        Some(Gta {
            weights,
            densities,
            sparsify,
            consensus,
            normalize,
            rescale,
            lambda: 1.0,
            seed: 0,
            dtype: None,
        })
    }
}

impl Gta {
    /// Checks the values: one weight and one density per model, every number finite.
    pub fn check(&self) -> Result<()> {
        if self.weights.is_empty() || self.weights.len() != self.densities.len() {
            return Err(Error::Internal(format!(
                "{} weights for {} densities",
                self.weights.len(),
                self.densities.len()
            )));
        }
        for (field, values) in [("weight", &self.weights), ("density", &self.densities)] {
            if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                return Err(Error::field(
                    field,
                    format!("must be a finite number, got {v}"),
                ));
            }
        }
        if !self.lambda.is_finite() {
            return Err(Error::field("lambda", "must be a finite number"));
        }
        Ok(())
    }
}

/// Rounding to the working dtype.
fn rounder(d: DType) -> fn(f32) -> f32 {
    match d {
        DType::BF16 => |x| half::bf16::from_f32(x).to_f32(),
        DType::F16 => |x| half::f16::from_f32(x).to_f32(),
        _ => |x| x,
    }
}

/// Which entries of one task vector survive sparsification.
#[derive(Debug, Clone, Copy)]
enum Keep {
    All,
    Nothing,
    /// |d| above `bits`, or equal to it at a position up to `last`.
    Largest {
        bits: u32,
        last: usize,
    },
    Random {
        key: u64,
        density: f64,
    },
}

impl Keep {
    #[inline]
    fn keeps(self, idx: usize, i: usize, n: usize, d: f32) -> bool {
        match self {
            Keep::All => true,
            Keep::Nothing => false,
            Keep::Largest { bits, last } => {
                let a = abs_bits(d);
                a > bits || (a == bits && idx <= last)
            }
            Keep::Random { key, density } => rng::uniform(key, (idx * n + i) as u64) < density,
        }
    }
}

impl Combine for Gta {
    fn tensor<'a>(&'a self, t: &TensorView<'a>) -> Result<TensorOp<'a>> {
        let n = self.weights.len();
        if t.n_inputs() != n + 1 {
            return Err(Error::Internal(format!(
                "merge of `{}` got {} inputs, expected {}",
                t.name,
                t.n_inputs(),
                n + 1
            )));
        }
        let r = rounder(self.dtype.unwrap_or(t.dtype(0)));
        let delta = move |x: f32, b: f32| r(r(x) - r(b));
        let keeps = self.keeps(t, &delta);
        let factors = self.factors(t, &keeps, &delta, r);
        let w: Vec<f32> = self.weights.iter().map(|&x| r(x as f32)).collect();
        let plain_div = {
            let d = r(w.iter().sum());
            if d.abs() < 1e-8 {
                1.0
            } else {
                d
            }
        };
        let (consensus, normalize) = (self.consensus, self.normalize);
        let lambda = self.lambda as f32;
        Ok(TensorOp::Values(Box::new(move |start, ins, out| {
            let mut wd = vec![0f32; n];
            for (j, o) in out.iter_mut().enumerate() {
                let b = r(ins[0][j]);
                for i in 0..n {
                    let d = delta(ins[i + 1][j], b);
                    let d = if keeps[i].keeps(start + j, i, n, d) {
                        d
                    } else {
                        0.0
                    };
                    let d = factors[i].map_or(d, |f| r(d * f));
                    wd[i] = r(d * w[i]);
                }
                let (mut mixed, div) = if consensus {
                    let positive = wd.iter().sum::<f32>() >= 0.0;
                    let (mut m, mut dv) = (0f32, 0f32);
                    for (x, wi) in wd.iter().zip(&w) {
                        if *x != 0.0 && (*x > 0.0) == positive {
                            m += x;
                            dv += wi;
                        }
                    }
                    let dv = r(dv);
                    (r(m), if dv == 0.0 { 1.0 } else { dv })
                } else {
                    (r(wd.iter().sum()), plain_div)
                };
                if normalize {
                    mixed = r(mixed / div);
                }
                if lambda != 1.0 {
                    mixed = r(mixed * lambda);
                }
                *o = r(b + mixed);
            }
        })))
    }
}

impl Gta {
    /// Each task vector's [`Keep`] for this tensor (streaming passes for the magnitudes).
    fn keeps(&self, t: &TensorView, delta: &(dyn Fn(f32, f32) -> f32 + Sync)) -> Vec<Keep> {
        let len = t.numel;
        // Magnitude sparsification below density 1 keeps the k largest: their threshold, then
        // the position of the last tie kept.
        let ks: Vec<u64> = self
            .densities
            .iter()
            .map(|&rho| match self.sparsify {
                Sparsify::Magnitude if rho > 0.0 && rho < 1.0 && len > 0 => {
                    ((rho * len as f64).floor() as u64).max(1)
                }
                _ => 0,
            })
            .collect();
        let th = if ks.iter().any(|k| *k > 0) {
            thresholds_by(t, &ks, delta)
        } else {
            vec![None; ks.len()]
        };
        let need: Vec<(usize, u32, u64)> = th
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.map(|(bits, ties)| (i, bits, ties)))
            .collect();
        let mut lasts = last_ties(t, &need, delta).into_iter();
        self.densities
            .iter()
            .zip(&th)
            .map(|(&rho, th)| match (self.sparsify, th) {
                _ if rho >= 1.0 => Keep::All,
                (Sparsify::None, _) => Keep::All,
                (Sparsify::Random, _) => Keep::Random {
                    key: rng::key(self.seed, t.name),
                    density: rho,
                },
                (Sparsify::Magnitude, Some((bits, _))) => Keep::Largest {
                    bits: *bits,
                    last: lasts.next().expect("one per threshold"),
                },
                (Sparsify::Magnitude, None) => Keep::Nothing,
            })
            .collect()
    }

    /// mergekit's L1 rescale factor of each sparsified task vector (`None`: unscaled).
    fn factors(
        &self,
        t: &TensorView,
        keeps: &[Keep],
        delta: &(dyn Fn(f32, f32) -> f32 + Sync),
        r: fn(f32) -> f32,
    ) -> Vec<Option<f32>> {
        let n = keeps.len();
        let scaled = |k: &Keep| self.rescale && !matches!(k, Keep::All);
        if !keeps.iter().any(scaled) {
            return vec![None; n];
        }
        let sums = t.fold_chunks(
            || vec![(0f64, 0f64); n],
            |mut acc, start, ins| {
                for (i, k) in keeps.iter().enumerate().filter(|(_, k)| scaled(k)) {
                    for (j, (x, b)) in ins[i + 1].iter().zip(ins[0]).enumerate() {
                        let d = delta(*x, *b);
                        let a = d.abs() as f64;
                        acc[i].0 += a;
                        if k.keeps(start + j, i, n, d) {
                            acc[i].1 += a;
                        }
                    }
                }
                acc
            },
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    x.0 += y.0;
                    x.1 += y.1;
                }
                a
            },
        );
        keeps
            .iter()
            .zip(sums)
            .map(|(k, (before, after))| {
                let (before, after) = (r(before as f32), r(after as f32));
                (scaled(k) && before >= 1e-7 && after >= 1e-7).then(|| r(before / after))
            })
            .collect()
    }
}

/// For each `(task vector i, threshold bits, ties to keep)`, the position of the last entry
/// equal to the threshold that is kept when ties are taken in order of position
/// (`usize::MAX` when all of them are).
fn last_ties(
    t: &TensorView,
    need: &[(usize, u32, u64)],
    delta: &(dyn Fn(f32, f32) -> f32 + Sync),
) -> Vec<usize> {
    if need.is_empty() {
        return Vec::new();
    }
    let tie = |q: usize, x: f32, b: f32| abs_bits(delta(x, b)) == need[q].1;
    // Ties per chunk, then the chunk where each count is reached, then the entry inside it.
    let mut per_chunk: Vec<(usize, Vec<u64>)> = t.fold_chunks(
        Vec::new,
        |mut acc, start, ins| {
            let counts = (0..need.len())
                .map(|q| {
                    let i = need[q].0;
                    ins[i + 1]
                        .iter()
                        .zip(ins[0])
                        .filter(|(x, b)| tie(q, **x, **b))
                        .count() as u64
                })
                .collect();
            acc.push((start, counts));
            acc
        },
        |mut a, mut b| {
            a.append(&mut b);
            a
        },
    );
    per_chunk.sort_by_key(|(s, _)| *s);
    let mut bufs = vec![vec![0f32; CHUNK]; t.n_inputs()];
    (0..need.len())
        .map(|q| {
            let (i, _, wanted) = need[q];
            let total: u64 = per_chunk.iter().map(|(_, c)| c[q]).sum();
            if wanted >= total {
                return usize::MAX;
            }
            let mut seen = 0u64;
            for (start, counts) in &per_chunk {
                if seen + counts[q] < wanted {
                    seen += counts[q];
                    continue;
                }
                let end = (start + CHUNK).min(t.numel);
                t.decode(*start, end, &mut bufs);
                let (x, b) = (&bufs[i + 1][..end - start], &bufs[0][..end - start]);
                for (j, (x, b)) in x.iter().zip(b).enumerate() {
                    if tie(q, *x, *b) {
                        seen += 1;
                        if seen == wanted {
                            return start + j;
                        }
                    }
                }
            }
            usize::MAX
        })
        .collect()
}
