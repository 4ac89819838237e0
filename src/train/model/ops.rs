//! Fused CPU kernels with explicit backward passes: softmax over the last dimension, RMS norm,
//! SwiGLU and cross-entropy. candle's own fused versions record no backward; composing them
//! from small ops (what the model does on other devices) costs a dozen tensor allocations per
//! call on the CPU, forward and backward. The backward passes here are single passes over the
//! inputs too. The RMS norm skips its weight gradient when the weight is frozen.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, D,
};
use rayon::prelude::*;

pub(super) fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Runs `f` on the contiguous values of CPU tensors of element type `T`.
pub(crate) fn with_values<T: Elem, R>(ts: &[&Tensor], f: impl FnOnce(&[&[T]]) -> R) -> Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (s, l) in &guards {
        let Storage::Cpu(c) = &**s else {
            candle_core::bail!("fused kernel: CPU tensors only")
        };
        let v =
            T::values(c).ok_or_else(|| candle_core::Error::Msg("fused kernel: dtype".into()))?;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("fused kernel: input must be contiguous")
        };
        slices.push(&v[a..b]);
    }
    Ok(f(&slices))
}

/// The element types the fused kernels run in: f32 for training, f64 for gradient checks.
pub trait Elem: num_like::Float + Send + Sync + 'static + std::fmt::Debug {
    fn values(s: &CpuStorage) -> Option<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
    fn tensor(v: Vec<Self>, like: &Tensor) -> Result<Tensor>;
    fn f(self) -> f64;
}

macro_rules! elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            fn values(s: &CpuStorage) -> Option<&[$t]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn storage(v: Vec<$t>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn tensor(v: Vec<$t>, like: &Tensor) -> Result<Tensor> {
                Tensor::from_vec(v, like.shape(), like.device())
            }
            fn f(self) -> f64 {
                self as f64
            }
        }
    };
}
elem!(f32, F32);
elem!(f64, F64);

/// Rows per parallel task of the row-wise kernels.
const ROWS: usize = 16;

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

fn rms_rows<T: Elem>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(n * ROWS)
        .zip(x.par_chunks(n * ROWS))
        .for_each(|(out, x)| {
            for (src, dst) in x.chunks(n).zip(out.chunks_mut(n)) {
                let ms = src.iter().fold(T::zero(), |a, v| a + *v * *v) / T::from_usize(n);
                let r = T::one() / (ms + T::from_f64(eps)).sqrt();
                for ((d, s), g) in dst.iter_mut().zip(src).zip(w) {
                    *d = *s * r * *g;
                }
            }
        });
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
        let want_dw = w.is_variable();
        // Detached: the gradients must not carry (and keep alive) the forward graph.
        let (x, w, g) = (
            &x.detach().contiguous()?,
            &w.detach().contiguous()?,
            &g.detach().contiguous()?,
        );
        let (dx, dw) = match x.dtype() {
            DType::F32 => rms_bwd::<f32>(x, w, g, self.eps, want_dw)?,
            DType::F64 => rms_bwd::<f64>(x, w, g, self.eps, want_dw)?,
            d => candle_core::bail!("rms-norm: {d:?}"),
        };
        Ok((Some(dx), dw))
    }
}

/// The RMS norm's gradients in one pass over the rows: with `r = 1/sqrt(mean(x²) + eps)`,
/// `dx = r (g·w - x r · mean(g·w·x r))` and `dw = Σ_rows g · x r` (only when wanted).
fn rms_bwd<T: Elem>(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
    want_dw: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let n = w.elem_count();
    let (dx, dw) = with_values::<T, _>(&[x, w, g], |v| {
        let (x, w, g) = (v[0], v[1], v[2]);
        let nt = T::from_usize(n);
        let eps = T::from_f64(eps);
        let mut dx = vec![T::zero(); x.len()];
        let zeros = || vec![T::zero(); if want_dw { n } else { 0 }];
        let dw = dx
            .par_chunks_mut(n * ROWS)
            .zip(x.par_chunks(n * ROWS))
            .zip(g.par_chunks(n * ROWS))
            .map(|((dx, x), g)| {
                let mut dw = zeros();
                for ((dx, x), g) in dx.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                    let ms = x.iter().fold(T::zero(), |a, v| a + *v * *v) / nt;
                    let r = T::one() / (ms + eps).sqrt();
                    let mut dot = T::zero();
                    for ((x, g), w) in x.iter().zip(g).zip(w) {
                        dot = dot + *g * *w * (*x * r);
                    }
                    let dot = dot / nt;
                    for (((d, x), g), w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                        *d = (*g * *w - *x * r * dot) * r;
                    }
                    for ((dw, x), g) in dw.iter_mut().zip(x).zip(g) {
                        *dw = *dw + *g * (*x * r);
                    }
                }
                dw
            })
            .reduce(zeros, |mut a, b| {
                for (a, b) in a.iter_mut().zip(b) {
                    *a = *a + b;
                }
                a
            });
        (dx, dw)
    })?;
    let dx = T::tensor(dx, x)?;
    let dw = if want_dw {
        Some(T::tensor(dw, w)?)
    } else {
        None
    };
    Ok((dx, dw))
}

fn nll_rows<T: Elem>(x: &[T], t: &[u32], v: usize) -> Vec<T> {
    x.par_chunks(v)
        .zip(t.par_iter())
        .map(|(row, &t)| {
            let max = row.iter().copied().fold(T::neg_inf(), T::max);
            let sum = row.iter().fold(T::zero(), |a, x| a + (*x - max).exp());
            max + sum.ln() - row[t as usize]
        })
        .collect()
}

/// `(softmax(x) - onehot(t)) · g` per row, written once.
fn nll_grad_rows<T: Elem>(x: &[T], t: &[u32], g: &[T], v: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(v)
        .zip(x.par_chunks(v))
        .zip(t.par_iter().zip(g.par_iter()))
        .for_each(|((d, x), (&t, &g))| {
            let max = x.iter().copied().fold(T::neg_inf(), T::max);
            let mut sum = T::zero();
            for (d, x) in d.iter_mut().zip(x) {
                *d = (*x - max).exp();
                sum = sum + *d;
            }
            let scale = g / sum;
            for d in d.iter_mut() {
                *d = *d * scale;
            }
            d[t as usize] = d[t as usize] - g;
        });
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
        let (x, g) = (&x.detach().contiguous()?, &g.detach().contiguous()?);
        let dx = match x.dtype() {
            DType::F32 => with_values::<f32, _>(&[x, g], |s| nll_grad_rows(s[0], &tv, s[1], v))
                .and_then(|d| f32::tensor(d, x))?,
            DType::F64 => with_values::<f64, _>(&[x, g], |s| nll_grad_rows(s[0], &tv, s[1], v))
                .and_then(|d| f64::tensor(d, x))?,
            d => candle_core::bail!("cross-entropy: {d:?} logits"),
        };
        Ok((Some(dx), None))
    }
}

/// SwiGLU `silu(a) · b` of the gate and up projections (same shapes); arguments `(a, b)`.
/// Forward and backward are one pass each, where candle composes silu's backward from six
/// full-size temporaries.
pub struct SwiGlu;

fn silu_parts<T: Elem>(a: T) -> (T, T) {
    let s = T::one() / (T::one() + (T::zero() - a).exp());
    (a * s, s)
}

fn swiglu_fwd<T: Elem>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(1 << 14)
        .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = silu_parts(*a).0 * *b;
            }
        });
    out
}

/// `da = g · b · s (1 + a (1 - s))` and `db = g · silu(a)`, with `s = sigmoid(a)`.
fn swiglu_bwd<T: Elem>(a: &Tensor, b: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let (da, db) = with_values::<T, _>(&[a, b, g], |v| {
        let (a, b, g) = (v[0], v[1], v[2]);
        let mut da = vec![T::zero(); a.len()];
        let mut db = vec![T::zero(); a.len()];
        let c = 1 << 14;
        da.par_chunks_mut(c)
            .zip(db.par_chunks_mut(c))
            .zip(a.par_chunks(c).zip(b.par_chunks(c)).zip(g.par_chunks(c)))
            .for_each(|((da, db), ((a, b), g))| {
                for ((((da, db), a), b), g) in da.iter_mut().zip(db).zip(a).zip(b).zip(g) {
                    let (silu, s) = silu_parts(*a);
                    *da = *g * *b * (s * (T::one() + *a * (T::one() - s)));
                    *db = *g * silu;
                }
            });
        (da, db)
    })?;
    Ok((T::tensor(da, a)?, T::tensor(db, b)?))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "hft-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("swiglu: shapes {:?} and {:?} differ", l1.dims(), l2.dims())
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(swiglu_fwd(slice(a, l1, "swiglu")?, slice(b, l2, "swiglu")?))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64(swiglu_fwd(slice(a, l1, "swiglu")?, slice(b, l2, "swiglu")?))
            }
            _ => candle_core::bail!("swiglu: f32 or f64 only, same for both"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (a, b, g) = (
            &a.detach().contiguous()?,
            &b.detach().contiguous()?,
            &g.detach().contiguous()?,
        );
        let (da, db) = match a.dtype() {
            DType::F32 => swiglu_bwd::<f32>(a, b, g)?,
            DType::F64 => swiglu_bwd::<f64>(a, b, g)?,
            d => candle_core::bail!("swiglu: {d:?}"),
        };
        Ok((Some(da), Some(db)))
    }
}

/// `silu(a) · b`: the fused kernel on the CPU, composed ops elsewhere.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() {
        a.contiguous()?.apply_op2(&b.contiguous()?, SwiGlu)
    } else {
        a.silu()? * b
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
pub mod num_like {
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
        // SwiGLU against silu and a product.
        let a = Var::from_tensor(&Tensor::randn(0f64, 2., (4, 9), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 1., (4, 9), &dev)?)?;
        let probe = Tensor::randn(0f64, 1., (4, 9), &dev)?;
        let fused = (swiglu(a.as_tensor(), b.as_tensor())? * &probe)?.sum_all()?;
        let comp = ((a.as_tensor().silu()? * b.as_tensor())? * &probe)?.sum_all()?;
        assert!(max_diff(&fused, &comp) < 1e-12);
        let (gf, gc) = (fused.backward()?, comp.backward()?);
        for t in [a.as_tensor(), b.as_tensor()] {
            assert!(max_diff(gf.get(t).unwrap(), gc.get(t).unwrap()) < 1e-12);
        }
        // A frozen weight gets no gradient work.
        let frozen = w.as_tensor().detach();
        let g = rms_norm(x.as_tensor(), &frozen, 1e-5)?
            .sum_all()?
            .backward()?;
        assert!(g.get(&frozen).is_none() && g.get(x.as_tensor()).is_some());
        Ok(())
    }
}
