//! AdamW with element masks.
//!
//! Only trainable tensors (candle `Var`s) are given to the optimizer, so frozen tensors have no
//! state at all. A tensor the plan trains in part (an element mask, or the row ranges of a fused
//! tensor) carries a 0/1 mask: its gradient is masked before the moments, and the whole update,
//! weight decay included, is masked too, so masked elements stay bit-identical. Where the
//! trained elements form few runs (the row ranges of a fused tensor), the moments exist only
//! for them ([`Moments::Spans`]): a tensor trained in quarter keeps a quarter of the state.
//!
//! On the CPU with f32 parameters (training's master weights) the update is one fused pass per
//! tensor, in place ([`Update`]); other devices and dtypes use composed candle ops.

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;

use crate::train::model::ops::with_values;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// A recipe stage's defaults ([`crate::defaults::stage`]).
    fn default() -> Self {
        use crate::defaults::stage;
        AdamWConfig {
            beta1: stage::BETAS[0],
            beta2: stage::BETAS[1],
            eps: stage::EPS,
            weight_decay: stage::WEIGHT_DECAY,
        }
    }
}

/// The two moments of one tensor: plain vectors updated in place by the fused CPU kernel
/// (f32 parameters on the CPU), or tensors updated by composed candle ops elsewhere.
enum Moments {
    Fused {
        m: Vec<f32>,
        v: Vec<f32>,
        /// 1.0 where the element trains, 0.0 where the plan freezes it.
        mask: Option<Vec<f32>>,
    },
    /// A tensor trained in part whose trained elements form few runs (row ranges of a fused
    /// tensor, say): moments only for the trained elements, in order, and the runs
    /// `[start, end)` they cover. Chosen where it takes less memory than full-size moments
    /// plus a mask.
    Spans {
        m: Vec<f32>,
        v: Vec<f32>,
        spans: Vec<(usize, usize)>,
    },
    Composed {
        m: Tensor,
        v: Tensor,
    },
}

struct Slot {
    var: Var,
    mask: Option<Tensor>,
    moments: Moments,
    /// Updates this tensor has had: its bias correction, counted per tensor as PyTorch's
    /// AdamW counts it, so a tensor whose state starts afresh mid-stage (LISA) restarts it.
    step: u64,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
}

impl AdamW {
    /// One slot per trainable variable, with its mask (if it trains in part).
    pub fn new(vars: Vec<(Var, Option<Tensor>)>, cfg: AdamWConfig) -> Result<AdamW> {
        let slots = vars
            .into_iter()
            .map(|(var, mask)| {
                let n = var.elem_count();
                let fused = var.device().is_cpu() && var.dtype() == DType::F32;
                let moments = if fused {
                    let mask = match &mask {
                        Some(m) => Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
                        None => None,
                    };
                    fused_moments(n, mask)
                } else {
                    Moments::Composed {
                        m: var.zeros_like()?,
                        v: var.zeros_like()?,
                    }
                };
                // The fused kernels hold the mask in their own form; the tensor is for the
                // composed path only.
                let mask = if fused { None } else { mask };
                Ok(Slot {
                    var,
                    mask,
                    moments,
                    step: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { cfg, slots })
    }

    /// Moves the state (moments, step count) of `old`'s slot `from` into slot `to`, which
    /// must hold the same variable: when LISA draws new layers, the tensors that train
    /// throughout (embeddings, head, final norm) keep their state.
    pub fn adopt(&mut self, to: usize, old: &mut AdamW, from: usize) {
        let (new, old) = (&mut self.slots[to], &mut old.slots[from]);
        debug_assert!(new.var.shape() == old.var.shape());
        std::mem::swap(&mut new.moments, &mut old.moments);
        std::mem::swap(&mut new.mask, &mut old.mask);
        new.step = old.step;
    }

    /// Bytes of optimizer state: the moments, and the mask or runs of a tensor trained in part.
    pub fn state_bytes(&self) -> u64 {
        let f = std::mem::size_of::<f32>();
        self.slots
            .iter()
            .map(|s| match &s.moments {
                Moments::Fused { m, v, mask } => {
                    (m.len() + v.len() + mask.as_ref().map_or(0, Vec::len)) * f
                }
                Moments::Spans { m, v, spans } => {
                    (m.len() + v.len()) * f + std::mem::size_of_val(spans.as_slice())
                }
                Moments::Composed { m, v } => {
                    let mask = s.mask.as_ref().map_or(0, |t| t.elem_count());
                    (m.elem_count() + v.elem_count() + mask) * s.var.dtype().size_in_bytes()
                }
            } as u64)
            .sum()
    }

    /// Returns the global L2 norm of `grads` (one per slot, in order; `None` where no gradient
    /// arrived) over the elements that train. On the fused path the gradients stay as they
    /// are (the update applies the mask); elsewhere they are masked in place.
    pub fn mask_and_norm(&self, grads: &mut [Option<Tensor>]) -> Result<f64> {
        let mut total = 0f64;
        for (s, g) in self.slots.iter().zip(grads.iter_mut()) {
            let Some(gt) = g.as_mut() else { continue };
            // Fused moments exist only for f32 CPU variables, whose gradients are f32 CPU too.
            if let Moments::Fused { mask, .. } = &s.moments {
                let g = gt.contiguous()?;
                total += with_values::<f32, _>(&[&g], |g| sum_squares(g[0], mask.as_deref()))?;
                continue;
            }
            if let Moments::Spans { spans, .. } = &s.moments {
                let g = gt.contiguous()?;
                total += with_values::<f32, _>(&[&g], |g| {
                    spans
                        .par_iter()
                        .map(|&(a, b)| sum_squares(&g[0][a..b], None))
                        .sum::<f64>()
                })?;
                continue;
            }
            if let Some(m) = &s.mask {
                *gt = gt.mul(m)?;
            }
            total += gt
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`; `grads` as given to [`Self::mask_and_norm`], to be
    /// scaled by `scale` (gradient clipping).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, scale: f64) -> Result<()> {
        let c = self.cfg;
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            s.step += 1;
            let bc1 = 1.0 - c.beta1.powi(s.step as i32);
            let bc2 = 1.0 - c.beta2.powi(s.step as i32);
            let (m, v, mask, spans) = match &mut s.moments {
                Moments::Fused { m, v, mask } => (m, v, mask.as_deref(), None),
                Moments::Spans { m, v, spans } => (m, v, None, Some(spans.as_slice())),
                Moments::Composed { m, v } => {
                    composed_step(
                        &s.var,
                        s.mask.as_ref(),
                        (m, v),
                        g,
                        (lr, scale),
                        c,
                        (bc1, bc2),
                    )?;
                    continue;
                }
            };
            let g = g.contiguous()?;
            let k = Update {
                state: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                mask,
                spans,
                lr: lr as f32,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                one_minus_beta1: (1.0 - c.beta1) as f32,
                one_minus_beta2: (1.0 - c.beta2) as f32,
                inv_bc1: (1.0 / bc1) as f32,
                inv_bc2: (1.0 / bc2) as f32,
                eps: c.eps as f32,
                decay: c.weight_decay as f32,
                scale: scale as f32,
            };
            s.var.as_tensor().inplace_op2(&g, &k)?;
        }
        Ok(())
    }
}

/// The mean run length below which a partly trained tensor keeps full-size moments.
const MIN_RUN: usize = 64;

/// Full-size moments (with the mask, if any), or moments of the trained runs only where that
/// takes less memory.
fn fused_moments(n: usize, mask: Option<Vec<f32>>) -> Moments {
    let dense = |mask| Moments::Fused {
        m: vec![0.0; n],
        v: vec![0.0; n],
        mask,
    };
    let Some(k) = mask else { return dense(None) };
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, _) in k.iter().enumerate().filter(|(_, x)| **x != 0.0) {
        match spans.last_mut() {
            Some(last) if last.1 == i => last.1 = i + 1,
            _ => spans.push((i, i + 1)),
        }
    }
    let trained: usize = spans.iter().map(|(a, b)| b - a).sum();
    let f = std::mem::size_of::<f32>();
    let compact = 2 * trained * f + std::mem::size_of_val(spans.as_slice());
    // Runs of a random element mask are a few elements long: bookkeeping would eat the
    // saving, so those keep full-size moments and the mask.
    if compact < 3 * n * f && spans.len() * MIN_RUN <= trained {
        Moments::Spans {
            m: vec![0.0; trained],
            v: vec![0.0; trained],
            spans,
        }
    } else {
        dense(Some(k))
    }
}

/// AdamW from candle ops (other devices and dtypes), the mask applied to the update.
fn composed_step(
    var: &Var,
    mask: Option<&Tensor>,
    (m, v): (&mut Tensor, &mut Tensor),
    g: &Tensor,
    (lr, scale): (f64, f64),
    c: AdamWConfig,
    (bc1, bc2): (f64, f64),
) -> Result<()> {
    let g = g.detach();
    let g = if scale != 1.0 { (g * scale)? } else { g };
    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let mhat = (&*m / bc1)?;
    let denom = ((&*v / bc2)?.sqrt()? + c.eps)?;
    let theta = &var.as_tensor().detach();
    let mut upd = ((mhat / denom)? + (theta * c.weight_decay)?)?;
    upd = (upd * lr)?;
    if let Some(k) = mask {
        upd = upd.mul(k)?;
    }
    var.set(&(theta - upd)?)
}

/// Σ (g·mask)² in f64, over chunks in parallel.
fn sum_squares(g: &[f32], mask: Option<&[f32]>) -> f64 {
    let sq = |x: f32| (x as f64) * (x as f64);
    match mask {
        None => g
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&x| sq(x)).sum::<f64>())
            .sum(),
        Some(m) => g
            .par_chunks(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .map(|(c, k)| c.iter().zip(k).map(|(&x, &k)| sq(x * k)).sum::<f64>())
            .sum(),
    }
}

/// Elements per parallel chunk of the fused kernels.
const CHUNK: usize = 1 << 15;

/// The fused AdamW update of one f32 tensor on the CPU, in place: one pass over parameter,
/// gradient and both moments, where the composed version makes a dozen full-size temporaries.
/// Masked elements are skipped: parameter and moments stay bit-identical.
struct Update<'a> {
    /// The moments: full-size, or (with `spans`) of the trained runs only, in order.
    state: Mutex<(&'a mut [f32], &'a mut [f32])>,
    mask: Option<&'a [f32]>,
    /// Runs `[start, end)` of the elements that train (the rest are left alone).
    spans: Option<&'a [(usize, usize)]>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    decay: f32,
    scale: f32,
}

impl Update<'_> {
    fn apply(&self, p: &mut [f32], g: &[f32]) {
        let mut state = self.state.lock().expect("not poisoned");
        let (m, v) = &mut *state;
        // The composed ops' arithmetic, operation for operation (candle scales by a constant
        // as `x * c + 0` and divides by one as a product with its inverse), so both paths
        // round alike.
        let one = |p: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
            let g = if self.scale != 1.0 { g * self.scale } else { g };
            *m = *m * self.beta1 + g * self.one_minus_beta1;
            *v = *v * self.beta2 + (g * g) * self.one_minus_beta2;
            let mhat = *m * self.inv_bc1;
            let denom = (*v * self.inv_bc2).sqrt() + self.eps;
            *p -= (mhat / denom + *p * self.decay) * self.lr;
        };
        if let Some(spans) = self.spans {
            // Disjoint pieces of parameter, gradient and moments, one per run.
            let mut pieces = Vec::with_capacity(spans.len());
            let (mut p, mut m, mut v) = (&mut *p, &mut m[..], &mut v[..]);
            let mut at = 0;
            for &(a, b) in spans {
                let (_, rest) = std::mem::take(&mut p).split_at_mut(a - at);
                let (pp, rest) = rest.split_at_mut(b - a);
                p = rest;
                let (mm, rest) = std::mem::take(&mut m).split_at_mut(b - a);
                m = rest;
                let (vv, rest) = std::mem::take(&mut v).split_at_mut(b - a);
                v = rest;
                pieces.push((pp, &g[a..b], mm, vv));
                at = b;
            }
            pieces.into_par_iter().for_each(|(p, g, m, v)| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    one(p, g, m, v);
                }
            });
            return;
        }
        let chunks = p
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK));
        match self.mask {
            None => chunks.for_each(|(((p, g), m), v)| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    one(p, g, m, v);
                }
            }),
            Some(mask) => chunks
                .zip(mask.par_chunks(CHUNK))
                .for_each(|((((p, g), m), v), k)| {
                    for ((((p, &g), m), v), &k) in p.iter_mut().zip(g).zip(m).zip(v).zip(k) {
                        if k != 0.0 {
                            one(p, g, m, v);
                        }
                    }
                }),
        }
    }
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "hft-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("hft-adamw: f32 parameters and gradients only");
        };
        let (Some((pa, pb)), Some((ga, gb))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("hft-adamw: contiguous tensors only");
        };
        self.apply(&mut p[pa..pb], &g[ga..gb]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn masked_elements_stay_bit_identical_weight_decay_included() -> Result<()> {
        let dev = Device::Cpu;
        let w0 = Tensor::new(&[1.5f32, -2.0, 0.25, 3.0], &dev)?;
        let var = Var::from_tensor(&w0)?;
        let mask = Tensor::new(&[1f32, 0., 1., 0.], &dev)?;
        let mut opt = AdamW::new(vec![(var.clone(), Some(mask))], AdamWConfig::default())?;
        for _ in 0..3 {
            let mut g = vec![Some(Tensor::new(&[0.1f32, 0.2, -0.3, 0.4], &dev)?)];
            let n = opt.mask_and_norm(&mut g)?;
            assert!((n - (0.01f64 + 0.09).sqrt()).abs() < 1e-6);
            opt.step(&g, 0.1, 1.0)?;
        }
        let w = var.as_tensor().to_vec1::<f32>()?;
        assert_eq!(w[1].to_bits(), (-2.0f32).to_bits());
        assert_eq!(w[3].to_bits(), 3.0f32.to_bits());
        assert!(w[0] < 1.5 && w[2] > 0.25);
        // Two runs of one element: full-size moments and the mask take no more memory.
        assert_eq!(opt.state_bytes(), 2 * 4 * 4 + 4 * 4);
        Ok(())
    }

    /// LISA's switch: a tensor whose state is adopted by a new optimizer continues exactly as
    /// if the optimizer had never changed; one that starts afresh restarts its bias correction
    /// (its first update has the size `lr`, as any first Adam step).
    #[test]
    fn adopted_state_continues_and_fresh_state_restarts() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let grad = |k: usize| Tensor::new(&[0.3f32 * k as f32, -0.1, 0.7], &dev);
        let start = Tensor::new(&[1.0f32, 2.0, 3.0], &dev)?;
        // Reference: one optimizer for four steps.
        let a = Var::from_tensor(&start)?;
        let mut one = AdamW::new(vec![(a.clone(), None)], cfg)?;
        for k in 1..=4 {
            one.step(&[Some(grad(k)?)], 1e-2, 1.0)?;
        }
        // Two steps, then a new optimizer adopting the state, two more.
        let b = Var::from_tensor(&start)?;
        let fresh = Var::from_tensor(&start)?;
        let mut first = AdamW::new(vec![(b.clone(), None)], cfg)?;
        for k in 1..=2 {
            first.step(&[Some(grad(k)?)], 1e-2, 1.0)?;
        }
        let mut second = AdamW::new(vec![(fresh.clone(), None), (b.clone(), None)], cfg)?;
        second.adopt(1, &mut first, 0);
        for k in 3..=4 {
            second.step(&[None, Some(grad(k)?)], 1e-2, 1.0)?;
        }
        assert_eq!(
            a.as_tensor().to_vec1::<f32>()?,
            b.as_tensor().to_vec1::<f32>()?
        );
        // A fresh slot's first update is lr·sign(g) (bias-corrected moments of one step).
        second.step(&[Some(grad(1)?), None], 1e-2, 1.0)?;
        let moved: Vec<f32> = (fresh.as_tensor() - &start)?.to_vec1()?;
        for (m, g) in moved.iter().zip(grad(1)?.to_vec1::<f32>()?) {
            assert!((m + 1e-2 * g.signum()).abs() < 1e-6, "{moved:?}");
        }
        Ok(())
    }

    /// Row ranges keep moments for their rows only, and update exactly as full-size moments
    /// with a mask do.
    #[test]
    fn row_ranges_keep_state_for_their_rows_only_and_update_alike() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, cols) = (64, 48);
        let n = rows * cols;
        // Rows 8..24 and 40..44 train, as a fused tensor's row ranges would.
        let mask: Vec<f32> = (0..n)
            .map(|i| matches!(i / cols, 8..24 | 40..44) as u8 as f32)
            .collect();
        let w0: Vec<f32> = (0..n).map(|i| ((i % 89) as f32 - 44.0) / 13.0).collect();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let spans = Var::from_tensor(&Tensor::from_vec(w0.clone(), (rows, cols), &dev)?)?;
        let m = Tensor::from_vec(mask.clone(), (rows, cols), &dev)?;
        let mut a = AdamW::new(vec![(spans.clone(), Some(m.clone()))], cfg)?;
        assert!(matches!(&a.slots[0].moments, Moments::Spans { spans, .. } if spans.len() == 2));
        assert_eq!(a.state_bytes(), (2 * 20 * cols * 4 + 2 * 16) as u64);
        let dense = Var::from_tensor(&Tensor::from_vec(w0.clone(), (rows, cols), &dev)?)?;
        let mut b = AdamW {
            cfg,
            slots: vec![Slot {
                var: dense.clone(),
                mask: Some(m),
                moments: Moments::Fused {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    mask: Some(mask.clone()),
                },
                step: 0,
            }],
        };
        for step in 0..4 {
            let g: Vec<f32> = (0..n)
                .map(|i| (((i * 5 + step * 11) % 29) as f32 - 14.0) / 9.0)
                .collect();
            let g = Tensor::from_vec(g, (rows, cols), &dev)?;
            let (mut ga, mut gb) = (vec![Some(g.clone())], vec![Some(g)]);
            let (na, nb) = (a.mask_and_norm(&mut ga)?, b.mask_and_norm(&mut gb)?);
            assert!((na - nb).abs() < 1e-9 * nb, "norms {na} {nb}");
            a.step(&ga, 1e-2, 0.7)?;
            b.step(&gb, 1e-2, 0.7)?;
        }
        let wa = spans.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let wb = dense.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for i in 0..n {
            assert_eq!(wa[i].to_bits(), wb[i].to_bits(), "element {i}");
            if mask[i] == 0.0 {
                assert_eq!(wa[i].to_bits(), w0[i].to_bits(), "frozen element {i} moved");
            }
        }
        assert!(wa.iter().zip(&w0).any(|(a, b)| a != b));
        Ok(())
    }

    /// The fused CPU kernel computes what the composed ops compute (run here in f64, which
    /// takes the composed path), masks and weight decay included.
    #[test]
    fn the_fused_update_equals_the_composed_one() -> Result<()> {
        let dev = Device::Cpu;
        let n = 100_003; // several parallel chunks and a ragged end
        let w0: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 17.0).collect();
        let mask: Vec<f32> = (0..n).map(|i| (i % 3 != 0) as u8 as f32).collect();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let fused = Var::from_tensor(&Tensor::new(w0.as_slice(), &dev)?)?;
        let composed = Var::from_tensor(&Tensor::new(w0.as_slice(), &dev)?.to_dtype(DType::F64)?)?;
        let m = Tensor::new(mask.as_slice(), &dev)?;
        let mut a = AdamW::new(vec![(fused.clone(), Some(m.clone()))], cfg)?;
        let mut b = AdamW::new(vec![(composed.clone(), Some(m.to_dtype(DType::F64)?))], cfg)?;
        for step in 0..5 {
            let g: Vec<f32> = (0..n)
                .map(|i| (((i * 7 + step * 13) % 31) as f32 - 15.0) / 10.0)
                .collect();
            let ga = Tensor::new(g.as_slice(), &dev)?;
            let mut gs_a = vec![Some(ga.clone())];
            let mut gs_b = vec![Some(ga.to_dtype(DType::F64)?)];
            let (na, nb) = (a.mask_and_norm(&mut gs_a)?, b.mask_and_norm(&mut gs_b)?);
            assert!((na - nb).abs() < 1e-9 * nb, "norms {na} {nb}");
            a.step(&gs_a, 1e-2, 0.5)?;
            b.step(&gs_b, 1e-2, 0.5)?;
        }
        let wa = fused.as_tensor().to_vec1::<f32>()?;
        let wb = composed.as_tensor().to_vec1::<f64>()?;
        for i in 0..n {
            if mask[i] == 0.0 {
                assert_eq!(wa[i].to_bits(), w0[i].to_bits(), "masked element {i} moved");
            } else {
                let d = (wa[i] as f64 - wb[i]).abs();
                assert!(
                    d < 1e-5 * (1.0 + wb[i].abs()),
                    "element {i}: {} vs {}",
                    wa[i],
                    wb[i]
                );
            }
        }
        Ok(())
    }
}
