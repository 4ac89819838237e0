//! Fused CPU kernels with explicit backward passes: softmax over the last dimension and RMS
//! norm. candle's own fused versions record no backward; composing them from small ops (what
//! the model does on other devices) costs a dozen tensor allocations per call on the CPU.
//! The RMS norm skips its weight gradient when the weight is frozen (not a variable).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

fn softmax_rows<T: num_like::Float>(x: &[T], n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    for (src, dst) in x.chunks(n).zip(out.chunks_mut(n)) {
        let max = src.iter().copied().fold(T::neg_inf(), T::max);
        let mut sum = T::zero();
        for (d, s) in dst.iter_mut().zip(src) {
            *d = (*s - max).exp();
            sum = sum + *d;
        }
        let inv = T::one() / sum;
        for d in dst.iter_mut() {
            *d = *d * inv;
        }
    }
    out
}

fn rms_rows<T: num_like::Float>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let mut out = vec![T::zero(); x.len()];
    for (src, dst) in x.chunks(n).zip(out.chunks_mut(n)) {
        let ms = src.iter().fold(T::zero(), |a, v| a + *v * *v) / T::from_usize(n);
        let r = T::one() / (ms + T::from_f64(eps)).sqrt();
        for ((d, s), g) in dst.iter_mut().zip(src).zip(w) {
            *d = *s * r * *g;
        }
    }
    out
}

/// Softmax over the last dimension.
pub struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "hft-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(softmax_rows(slice(v, l, "softmax")?, n)),
            CpuStorage::F64(v) => CpuStorage::F64(softmax_rows(slice(v, l, "softmax")?, n)),
            _ => candle_core::bail!("softmax: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // Detached: the gradient must not carry (and keep alive) the forward graph.
        let (y, g) = (&y.detach(), &g.detach());
        let s = (g * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((g.broadcast_sub(&s)? * y)?))
    }
}

/// RMS norm `x / sqrt(mean(x²) + eps) * w` over the last dimension; arguments `(x, w)`.
pub struct RmsNorm {
    pub eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "hft-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims().last() != l2.dims().last() || l2.dims().len() != 1 {
            candle_core::bail!(
                "rms-norm: weight {:?} does not fit {:?}",
                l2.dims(),
                l1.dims()
            )
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(rms_rows(
                slice(x, l1, "rms-norm")?,
                slice(w, l2, "rms-norm")?,
                self.eps,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(rms_rows(
                slice(x, l1, "rms-norm")?,
                slice(w, l2, "rms-norm")?,
                self.eps,
            )),
            _ => candle_core::bail!("rms-norm: f32 or f64 only, same for both"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let is_var = w.is_variable();
        // Detached: the gradients must not carry (and keep alive) the forward graph.
        let (x, w, g) = (&x.detach(), &w.detach(), &g.detach());
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xr = x.broadcast_mul(&r)?;
        let gw = g.broadcast_mul(w)?;
        let n = *x.dims().last().unwrap_or(&1) as f64;
        let dot = ((&gw * &xr)?.sum_keepdim(D::Minus1)? / n)?;
        let dx = (gw - xr.broadcast_mul(&dot)?)?.broadcast_mul(&r)?;
        let dw = if is_var {
            let lead = x.elem_count() / w.elem_count();
            Some((g * &xr)?.reshape((lead, w.elem_count()))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

fn nll_rows<T: num_like::Float>(x: &[T], t: &[u32], v: usize) -> Vec<T> {
    x.chunks(v)
        .zip(t)
        .map(|(row, &t)| {
            let max = row.iter().copied().fold(T::neg_inf(), T::max);
            let sum = row.iter().fold(T::zero(), |a, x| a + (*x - max).exp());
            max + sum.ln() - row[t as usize]
        })
        .collect()
}

fn nll_grad_rows<T: num_like::Float>(x: &[T], t: &[u32], g: &[T], v: usize) -> Vec<T> {
    let mut out = softmax_rows(x, v);
    for ((row, &t), &g) in out.chunks_mut(v).zip(t).zip(g) {
        row[t as usize] = row[t as usize] - T::one();
        for d in row.iter_mut() {
            *d = *d * g;
        }
    }
    out
}

/// Cross-entropy per row: `logsumexp(x) - x[target]` for logits `[n, v]` and targets `[n]`
/// (u32); one pass forward, and backward `(softmax(x) - onehot) * grad`.
pub struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "hft-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let t = match s2 {
            CpuStorage::U32(t) => slice(t, l2, "cross-entropy")?,
            _ => candle_core::bail!("cross-entropy: targets must be u32"),
        };
        if t.len() != n || t.iter().any(|&i| i as usize >= v) {
            candle_core::bail!("cross-entropy: targets do not fit logits [{n}, {v}]")
        }
        let out = match s1 {
            CpuStorage::F32(x) => CpuStorage::F32(nll_rows(slice(x, l1, "cross-entropy")?, t, v)),
            CpuStorage::F64(x) => CpuStorage::F64(nll_rows(slice(x, l1, "cross-entropy")?, t, v)),
            _ => candle_core::bail!("cross-entropy: f32 or f64 logits only"),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let v = x.dim(1)?;
        let tv = t.to_vec1::<u32>()?;
        let dx = match x.dtype() {
            candle_core::DType::F32 => {
                let xs = x.detach().flatten_all()?.to_vec1::<f32>()?;
                let gs = g.detach().to_vec1::<f32>()?;
                Tensor::from_vec(nll_grad_rows(&xs, &tv, &gs, v), x.shape(), x.device())?
            }
            candle_core::DType::F64 => {
                let xs = x.detach().flatten_all()?.to_vec1::<f64>()?;
                let gs = g.detach().to_vec1::<f64>()?;
                Tensor::from_vec(nll_grad_rows(&xs, &tv, &gs, v), x.shape(), x.device())?
            }
            d => candle_core::bail!("cross-entropy: {d:?} logits"),
        };
        Ok((Some(dx), None))
    }
}

/// Negative log-likelihood of each target: `[..., v]` logits and `[...]` u32 targets give
/// `[...]`. The fused kernel on the CPU, composed ops elsewhere.
pub fn nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let lead = targets.dims().to_vec();
    if logits.device().is_cpu() {
        let x = logits.reshape(((), v))?.contiguous()?;
        let t = targets.flatten_all()?.contiguous()?;
        x.apply_op2(&t, CrossEntropy)?.reshape(lead)
    } else {
        let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        lp.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?
            .neg()
    }
}

/// Softmax over the last dimension: the fused kernel on the CPU, composed ops elsewhere.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// RMS norm: the fused kernel on the CPU, composed ops elsewhere.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op2(w, RmsNorm { eps })
    } else {
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&r)?.broadcast_mul(w)
    }
}

/// The little float arithmetic the kernels need, for f32 and f64.
mod num_like {
    pub trait Float:
        Copy
        + std::ops::Add<Output = Self>
        + std::ops::Sub<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
    {
        fn zero() -> Self;
        fn one() -> Self;
        fn neg_inf() -> Self;
        fn max(self, o: Self) -> Self;
        fn exp(self) -> Self;
        fn sqrt(self) -> Self;
        fn ln(self) -> Self;
        fn from_usize(n: usize) -> Self;
        fn from_f64(x: f64) -> Self;
    }

    macro_rules! float {
        ($t:ty) => {
            impl Float for $t {
                fn zero() -> Self {
                    0.0
                }
                fn one() -> Self {
                    1.0
                }
                fn neg_inf() -> Self {
                    <$t>::NEG_INFINITY
                }
                fn max(self, o: Self) -> Self {
                    <$t>::max(self, o)
                }
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
                fn sqrt(self) -> Self {
                    <$t>::sqrt(self)
                }
                fn ln(self) -> Self {
                    <$t>::ln(self)
                }
                fn from_usize(n: usize) -> Self {
                    n as $t
                }
                fn from_f64(x: f64) -> Self {
                    x as $t
                }
            }
        };
    }
    float!(f32);
    float!(f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn fused_kernels_match_composed_ops_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1., (3, 5, 8), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f64, 0.1, 8, &dev)?)?;
        let probe = Tensor::randn(0f64, 1., (3, 5, 8), &dev)?;
        let fused = (rms_norm(x.as_tensor(), w.as_tensor(), 1e-5)? * &probe)?.sum_all()?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?
            .sqrt()?
            .recip()?;
        let comp = (x.broadcast_mul(&r)?.broadcast_mul(w.as_tensor())? * &probe)?.sum_all()?;
        assert!(max_diff(&fused, &comp) < 1e-12);
        let (gf, gc) = (fused.backward()?, comp.backward()?);
        for t in [x.as_tensor(), w.as_tensor()] {
            assert!(max_diff(gf.get(t).unwrap(), gc.get(t).unwrap()) < 1e-10);
        }
        let fused = (softmax(x.as_tensor())? * &probe)?.sum_all()?;
        let comp = (candle_nn::ops::softmax(x.as_tensor(), D::Minus1)? * &probe)?.sum_all()?;
        assert!(max_diff(&fused, &comp) < 1e-12);
        let (gf, gc) = (fused.backward()?, comp.backward()?);
        assert!(
            max_diff(
                gf.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap()
            ) < 1e-10
        );
        // Cross-entropy against log_softmax + gather.
        let logits = Var::from_tensor(&Tensor::randn(0f64, 2., (6, 7), &dev)?)?;
        let t = Tensor::new(&[0u32, 6, 3, 3, 1, 5], &dev)?;
        let wt = Tensor::new(&[1f64, 0., 2., 1., 1., 0.5], &dev)?;
        let fused = (nll(logits.as_tensor(), &t)? * &wt)?.sum_all()?;
        let lp = candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1)?;
        let comp = (lp.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.neg()? * &wt)?.sum_all()?;
        assert!(max_diff(&fused, &comp) < 1e-12);
        let (gf, gc) = (fused.backward()?, comp.backward()?);
        assert!(
            max_diff(
                gf.get(logits.as_tensor()).unwrap(),
                gc.get(logits.as_tensor()).unwrap()
            ) < 1e-12
        );
        // A frozen weight gets no gradient work.
        let frozen = w.as_tensor().detach();
        let g = rms_norm(x.as_tensor(), &frozen, 1e-5)?
            .sum_all()?
            .backward()?;
        assert!(g.get(&frozen).is_none() && g.get(x.as_tensor()).is_some());
        Ok(())
    }
}
