//! The LM head fused with the cross-entropy loss, over chunks of rows, so the `[tokens ×
//! vocab]` logits, their softmax and their gradient never exist whole (the idea of Liger-Kernel's
//! fused linear cross-entropy). With a 49k vocabulary and 512 tokens that is 100 MB per copy,
//! and the composed path makes several.
//!
//! The op returns the weighted sum `Σ wᵢ nllᵢ`. Because its output is a scalar, the gradients
//! with respect to the hidden states and the head weight are computed chunk by chunk during the
//! forward pass (unit upstream gradient) and only scaled by the upstream scalar in the backward
//! pass: no logits are kept or recomputed.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::linear::{GradSink, SunkElem};
use super::ops::{slice, Elem};

/// Logits held at once, at most (elements): 8M f32 is 32 MB.
const CHUNK_ELEMS: usize = 8 << 20;

/// `Σᵢ wᵢ · (logsumexp(hᵢ Wᵀ) − (hᵢ Wᵀ)[tᵢ])` for hidden states `h [n, d]` and a head
/// `W [v, d]`; arguments `(h, W)`. Targets and weights live in the op.
pub struct HeadNll<T> {
    targets: Vec<u32>,
    weights: Vec<T>,
    /// Compute gradients in the forward pass (training); the head's own only when it trains.
    grad_h: bool,
    grad_w: bool,
    /// Logits held at once (elements).
    chunk: usize,
    /// Where the head's gradient goes, instead of candle's store (see [`GradSink`]).
    sink: Option<GradSink>,
    saved: Mutex<Option<Saved<T>>>,
}

/// Gradients computed in the forward pass for a unit upstream gradient: the hidden states'
/// and, when the head trains, the head's.
type Saved<T> = (Vec<T>, Option<Vec<T>>);

/// `dst[m×n] (+)= lhs × rhs` with explicit strides (row stride, column stride) of each.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert!(dst.len() >= m * n, "matmul: destination too small");
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above keep every index the strides reach inside the slices; dst is
    // row-major m×n; T is f32 or f64, which gemm supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::from_f64(1.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

impl<T: SunkElem> HeadNll<T> {
    pub fn new(targets: Vec<u32>, weights: Vec<T>, grad_h: bool, grad_w: bool) -> Self {
        HeadNll {
            targets,
            weights,
            grad_h,
            grad_w,
            chunk: CHUNK_ELEMS,
            sink: None,
            saved: Mutex::new(None),
        }
    }

    fn run(&self, h: &[T], w: &[T], n: usize, d: usize, v: usize) -> Result<T> {
        if self.targets.len() != n || self.weights.len() != n {
            candle_core::bail!("head-nll: {n} rows, {} targets", self.targets.len())
        }
        if self.targets.iter().any(|&t| t as usize >= v) {
            candle_core::bail!("head-nll: a target is past the vocabulary of {v}")
        }
        // Rows of weight zero (prompt tokens, padding) add nothing to the loss or to either
        // gradient, so only the scored rows meet the head: in SFT with the prompt masked that
        // is most of the head's work saved.
        let live: Vec<usize> = (0..n).filter(|&i| self.weights[i].f() != 0.0).collect();
        let compact: (Vec<T>, Vec<u32>, Vec<T>);
        let (h, targets, weights, m) = if live.len() == n {
            (h, &self.targets[..], &self.weights[..], n)
        } else {
            compact = (
                live.iter()
                    .flat_map(|&i| h[i * d..(i + 1) * d].iter().copied())
                    .collect(),
                live.iter().map(|&i| self.targets[i]).collect(),
                live.iter().map(|&i| self.weights[i]).collect(),
            );
            (&compact.0[..], &compact.1[..], &compact.2[..], live.len())
        };
        let rows = (self.chunk / v.max(1)).clamp(1, m.max(1));
        let grad = self.grad_h || self.grad_w;
        let mut dh = vec![T::from_f64(0.0); if self.grad_h { m * d } else { 0 }];
        let mut dw = vec![T::from_f64(0.0); if self.grad_w { v * d } else { 0 }];
        let mut logits = vec![T::from_f64(0.0); rows * v];
        let mut total = 0f64;
        for start in (0..m).step_by(rows) {
            let c = rows.min(m - start);
            let hc = &h[start * d..(start + c) * d];
            // logits[c×v] = h_c × Wᵀ
            matmul((c, v, d), &mut logits, false, hc, (d, 1), w, (1, d));
            let lg = &mut logits[..c * v];
            let ts = &targets[start..start + c];
            let ws = &weights[start..start + c];
            // Per row: the loss, and (training) the gradient `w · (softmax − onehot)` in place.
            total += lg
                .par_chunks_mut(v)
                .zip(ts.par_iter().zip(ws.par_iter()))
                .map(|(row, (&t, &wt))| {
                    let xt = row[t as usize].f();
                    let max = row
                        .iter()
                        .copied()
                        .fold(row[0], |a, x| if x.f() > a.f() { x } else { a });
                    // exp(x - max) in place (in the row's own precision), summed in f64.
                    let mut sum = 0f64;
                    for x in row.iter_mut() {
                        *x = (*x - max).exp();
                        sum += x.f();
                    }
                    let nll = max.f() + sum.ln() - xt;
                    if grad {
                        let scale = T::from_f64(wt.f() / sum);
                        for x in row.iter_mut() {
                            *x = *x * scale;
                        }
                        row[t as usize] = T::from_f64(row[t as usize].f() - wt.f());
                    }
                    wt.f() * nll
                })
                .sum::<f64>();
            if self.grad_h {
                // dh_c[c×d] = G_c[c×v] × W[v×d]
                let dst = &mut dh[start * d..(start + c) * d];
                matmul((c, d, v), dst, false, lg, (v, 1), w, (d, 1));
            }
            if self.grad_w {
                // dW[v×d] += G_cᵀ[v×c] × h_c[c×d]
                matmul((v, d, c), &mut dw, true, lg, (1, v), hc, (d, 1));
            }
        }
        if self.grad_h && m < n {
            let mut full = vec![T::from_f64(0.0); n * d];
            for (k, &i) in live.iter().enumerate() {
                full[i * d..(i + 1) * d].copy_from_slice(&dh[k * d..(k + 1) * d]);
            }
            dh = full;
        }
        if grad {
            let dw = self.grad_w.then_some(dw);
            *self.saved.lock().expect("not poisoned") = Some((dh, dw));
        }
        Ok(T::from_f64(total))
    }

    fn grads(
        &self,
        h: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = g.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (dh, dw) = self
            .saved
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| candle_core::Error::Msg("head-nll: backward without forward".into()))?;
        let scaled = |mut v: Vec<T>| {
            if scale != 1.0 {
                v.par_iter_mut()
                    .for_each(|x| *x = T::from_f64(x.f() * scale));
            }
            v
        };
        let dh = if self.grad_h {
            Some(T::tensor(scaled(dh), h)?)
        } else {
            None
        };
        let dw = match (dw, &self.sink) {
            (Some(dw), Some(sink)) => {
                sink.add_owned(scaled(dw))?;
                None
            }
            (Some(dw), None) => Some(T::tensor(scaled(dw), w)?),
            (None, _) => None,
        };
        Ok((dh, dw))
    }
}

fn contiguous<'a, T: Elem>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let v = T::values(s).ok_or_else(|| candle_core::Error::Msg("head-nll: dtype".into()))?;
    slice(v, l, "head-nll")
}

impl<T: SunkElem> CustomOp2 for HeadNll<T> {
    fn name(&self) -> &'static str {
        "hft-head-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d) = l1.shape().dims2()?;
        let (v, d2) = l2.shape().dims2()?;
        if d != d2 {
            candle_core::bail!("head-nll: hidden [{n}, {d}] and head [{v}, {d2}] do not fit")
        }
        let total = self.run(contiguous(s1, l1)?, contiguous(s2, l2)?, n, d, v)?;
        Ok((T::storage(vec![total]), Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(h, w, g)
    }
}

/// `Σᵢ wᵢ nll(hᵢ Wᵀ, tᵢ)` for `h [n, d]`, `W [v, d]`, u32 targets and weights `[n]`, on the
/// CPU in f32 or f64. `grad` says whether a backward pass follows; a trainable head's gradient
/// then goes to `sink` when one is given, else to candle's store.
pub fn head_nll(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    grad: bool,
    sink: Option<&GradSink>,
) -> Result<Tensor> {
    head_nll_in_chunks(h, w, (targets, weights), grad, sink, CHUNK_ELEMS)
}

fn head_nll_in_chunks(
    h: &Tensor,
    w: &Tensor,
    (targets, weights): (&Tensor, &Tensor),
    grad: bool,
    sink: Option<&GradSink>,
    chunk: usize,
) -> Result<Tensor> {
    let t = targets.flatten_all()?.to_vec1::<u32>()?;
    let (h, w) = (h.contiguous()?, w.contiguous()?);
    let grad_h = grad;
    let grad_w = grad && w.is_variable();
    match h.dtype() {
        DType::F32 => {
            let ws = weights
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let op = HeadNll {
                chunk,
                sink: sink.cloned(),
                ..HeadNll::new(t, ws, grad_h, grad_w)
            };
            h.apply_op2(&w, op)
        }
        DType::F64 => {
            let ws = weights
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let op = HeadNll {
                chunk,
                sink: sink.cloned(),
                ..HeadNll::new(t, ws, grad_h, grad_w)
            };
            h.apply_op2(&w, op)
        }
        d => candle_core::bail!("head-nll: {d:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f64>())
            .unwrap()
    }

    /// The fused op equals the composed head, log-softmax and gather, value and gradients,
    /// over several chunks (a vocabulary large enough that a chunk holds a few rows), with
    /// every row scored and with a third of the rows at weight zero (skipped by the op).
    #[test]
    fn fused_head_loss_equals_the_composed_one() -> Result<()> {
        for skipped in [false, true] {
            fused_head_against_composed(skipped)?;
        }
        Ok(())
    }

    fn fused_head_against_composed(skipped: bool) -> Result<()> {
        let dev = Device::Cpu;
        // 37 rows of a 300-word vocabulary, 5 rows (1500 logits) at a time.
        let (n, d, v) = (37, 8, 300);
        let h = Var::from_tensor(&Tensor::randn(0f64, 1., (n, d), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f64, 0.5, (v, d), &dev)?)?;
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % v as u32).collect();
        let t = Tensor::new(t.as_slice(), &dev)?;
        let wt: Vec<f64> = (0..n)
            .map(|i| (i % 3 + usize::from(!skipped)) as f64 * 0.5)
            .collect();
        let wt = Tensor::new(wt.as_slice(), &dev)?;
        let nll =
            |h: &Tensor, w: &Tensor, grad| head_nll_in_chunks(h, w, (&t, &wt), grad, None, 1500);
        let fused = (nll(h.as_tensor(), w.as_tensor(), true)? * 0.25)?;
        let logits = h.as_tensor().matmul(&w.as_tensor().t()?)?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let rows = lp.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
        let comp = ((rows * &wt)?.sum_all()? * 0.25)?;
        assert!(max_diff(&fused, &comp) < 1e-9, "{fused} {comp}");
        let (gf, gc) = (fused.backward()?, comp.backward()?);
        for x in [h.as_tensor(), w.as_tensor()] {
            let e = max_diff(gf.get(x).unwrap(), gc.get(x).unwrap());
            assert!(e < 1e-12, "gradient differs by {e}");
        }
        // A frozen head: the hidden states' gradient only; no backward: no gradient work.
        let frozen = w.as_tensor().detach();
        let g = nll(h.as_tensor(), &frozen, true)?.backward()?;
        assert!(g.get(&frozen).is_none() && g.get(h.as_tensor()).is_some());
        let plain = nll(h.as_tensor(), &frozen, false)?;
        assert!(max_diff(&(plain * 0.25)?, &comp) < 1e-9);
        Ok(())
    }
}
