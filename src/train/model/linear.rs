//! Parameters and linear layers that know whether they train.
//!
//! A trainable tensor is a candle [`Var`]; a frozen one is a plain [`Tensor`], so the optimizer
//! never sees it. That alone is not enough to save time: candle's matmul backward computes the
//! gradient of both operands, whether or not anything wants the weight's. Linear layers
//! therefore run through [`Linear`], a custom op whose backward computes the input gradient and,
//! only for a trainable weight, the weight gradient `gᵀ·x`, straight into the weight's
//! [`GradSink`]: accumulated in place over a step's micro-batches, where candle's gradient
//! store would allocate a zero tensor, add into it, and add again for the transpose of `W`.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, Var,
};
use rayon::prelude::*;

use super::head::matmul;
use super::ops::{with_values, Elem};

/// One model parameter: frozen (a plain tensor, no gradient, no optimizer state) or trainable,
/// with the sink its linear op writes its gradient to.
#[derive(Debug, Clone)]
pub enum Param {
    Frozen(Tensor),
    Train(Var, GradSink),
}

impl Param {
    /// A trainable parameter with an empty sink.
    pub fn train(v: Var) -> Param {
        Param::Train(v, GradSink::default())
    }

    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Train(v, _) => v.as_tensor(),
        }
    }

    pub fn is_trainable(&self) -> bool {
        matches!(self, Param::Train(..))
    }
}

/// A weight gradient accumulated in place by [`Linear`]'s backward (CPU, f32 or f64).
#[derive(Debug, Clone, Default)]
pub struct GradSink(Arc<Mutex<Option<Sunk>>>);

#[derive(Debug)]
/// A sink's buffer, in the dtype of the gradient.
pub enum Sunk {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The element types a sink holds (f32, f64).
pub trait SunkElem: Elem {
    fn buf(s: &mut Option<Sunk>, n: usize) -> (&mut Vec<Self>, bool);
}

macro_rules! sunk {
    ($t:ty, $v:ident) => {
        impl SunkElem for $t {
            fn buf(s: &mut Option<Sunk>, n: usize) -> (&mut Vec<$t>, bool) {
                let fresh = !matches!(s, Some(Sunk::$v(v)) if v.len() == n);
                if fresh {
                    // Every element is written by the first product (no accumulation).
                    *s = Some(Sunk::$v(vec![0.0; n]));
                }
                match s {
                    Some(Sunk::$v(v)) => (v, fresh),
                    _ => unreachable!("set above"),
                }
            }
        }
    };
}
sunk!(f32, F32);
sunk!(f64, F64);

impl GradSink {
    /// The gradient accumulated since the last call, as a tensor of `shape`; the sink is empty
    /// afterwards.
    pub fn take(&self, shape: &Shape, device: &Device) -> Result<Option<Tensor>> {
        let taken = self.lock()?.take();
        match taken {
            None => Ok(None),
            Some(Sunk::F32(v)) => Tensor::from_vec(v, shape, device).map(Some),
            Some(Sunk::F64(v)) => Tensor::from_vec(v, shape, device).map(Some),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<Sunk>>> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink poisoned".into()))
    }

    /// Adds a whole gradient `v` (moved in when the sink is empty).
    pub(super) fn add_owned<T: SunkElem>(&self, v: Vec<T>) -> Result<()> {
        let mut s = self.lock()?;
        let n = v.len();
        let (dst, fresh) = T::buf(&mut s, n);
        if fresh {
            *dst = v;
        } else {
            dst.par_iter_mut()
                .zip(v.par_iter())
                .for_each(|(d, v)| *d = *d + *v);
        }
        Ok(())
    }

    /// Adds row `i` of `g [ids.len(), d]` to row `ids[i]` of a `[rows, d]` gradient: an
    /// embedding's backward touches only the rows that occur.
    fn scatter_rows<T: SunkElem>(&self, ids: &[u32], g: &[T], rows: usize, d: usize) -> Result<()> {
        let mut s = self.lock()?;
        let (dst, _) = T::buf(&mut s, rows * d);
        for (&i, g) in ids.iter().zip(g.chunks(d)) {
            for (d, g) in dst[i as usize * d..][..d].iter_mut().zip(g) {
                *d = *d + *g;
            }
        }
        Ok(())
    }

    /// Adds `gᵀ·x` (`g [m, n]`, `x [m, k]`, row-major) to the `[n, k]` gradient.
    fn add<T: SunkElem>(&self, g: &[T], x: &[T], (m, n, k): (usize, usize, usize)) -> Result<()> {
        let mut s = self.lock()?;
        let (dst, fresh) = T::buf(&mut s, n * k);
        matmul((n, k, m), dst, !fresh, g, (1, n), x, (k, 1));
        Ok(())
    }
}

/// `y = x Wᵀ (+ b)` for `x` of shape `[..., in]` and `W` of shape `[out, in]`. With `grad`
/// false (evaluation) a frozen weight goes through the plain matmul: there is no backward.
pub fn linear(x: &Tensor, w: &Param, b: Option<&Param>, grad: bool) -> Result<Tensor> {
    linear_in(x, w, b, grad, x.dtype())
}

/// [`linear`] with the product computed in `compute` (autocast): `x` and `W` are cast to it,
/// the result cast back to `x`'s dtype before the bias is added. The casts are differentiable,
/// so the gradient reaches the f32 master variable in f32; a frozen weight is cast afresh each
/// call, so the f32 values written to the checkpoint are never rounded.
pub fn linear_in(
    x: &Tensor,
    w: &Param,
    b: Option<&Param>,
    grad: bool,
    compute: DType,
) -> Result<Tensor> {
    let master = x.dtype();
    let dims = x.dims().to_vec();
    let (inp, lead) = match dims.split_last() {
        Some((i, lead)) => (*i, lead.to_vec()),
        None => candle_core::bail!("linear on a scalar"),
    };
    let rows: usize = lead.iter().product();
    // Rows stay rows: a reshape is a graph node even when it changes nothing.
    let x2 = if dims.len() == 2 {
        cast(x, compute)?
    } else {
        cast(&x.reshape((rows, inp))?, compute)?
    };
    let sink_here = grad && x.device().is_cpu() && compute == master;
    let y = match w {
        Param::Train(v, sink) if sink_here => x2.apply_op2(
            v.as_tensor(),
            Linear {
                sink: Some(sink.clone()),
            },
        )?,
        Param::Train(v, _) => x2.matmul(&cast(v.as_tensor(), compute)?.t()?)?,
        Param::Frozen(t) if grad => frozen_matmul(&x2, &cast(t, compute)?)?,
        Param::Frozen(t) => x2.matmul(&cast(t, compute)?.t()?)?,
    };
    let y = cast(&y, master)?;
    let y = match b {
        Some(b) => y.broadcast_add(b.tensor())?,
        None => y,
    };
    if dims.len() == 2 {
        return Ok(y);
    }
    let out = y.dim(1)?;
    let mut shape = lead;
    shape.push(out);
    y.reshape(shape)
}

/// The rows `ids` (u32) of the embedding `w [v, d]`: `[ids.len(), d]`. Training on the CPU, the
/// backward adds the gradient rows to `w`'s sink in place; otherwise candle's `index_select`.
pub fn embed(w: &Param, ids: &Tensor, grad: bool) -> Result<Tensor> {
    let ids = ids.flatten_all()?;
    match w {
        Param::Train(v, sink) if grad && v.device().is_cpu() => {
            let op = Embed {
                ids: ids.to_vec1::<u32>()?,
                sink: sink.clone(),
            };
            v.as_tensor().contiguous()?.apply_op1(op)
        }
        _ => w.tensor().index_select(&ids, 0),
    }
}

/// [`embed`]'s op on a trainable embedding: argument `w`, the ids in the op.
struct Embed {
    ids: Vec<u32>,
    sink: GradSink,
}

fn gather<T: Copy>(w: &[T], ids: &[u32], d: usize) -> Vec<T> {
    ids.iter()
        .flat_map(|&i| w[i as usize * d..][..d].iter().copied())
        .collect()
}

impl CustomOp1 for Embed {
    fn name(&self) -> &'static str {
        "hft-embed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (v, d) = l.shape().dims2()?;
        if self.ids.iter().any(|&i| i as usize >= v) {
            candle_core::bail!("embed: a token id is past the vocabulary of {v}")
        }
        let out = match s {
            CpuStorage::F32(w) => {
                CpuStorage::F32(gather(super::ops::slice(w, l, "embed")?, &self.ids, d))
            }
            CpuStorage::F64(w) => {
                CpuStorage::F64(gather(super::ops::slice(w, l, "embed")?, &self.ids, d))
            }
            _ => candle_core::bail!("embed: f32 or f64 only"),
        };
        Ok((out, Shape::from((self.ids.len(), d))))
    }

    fn bwd(&self, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (v, d) = w.dims2()?;
        let g = g.detach().contiguous()?;
        match g.dtype() {
            DType::F32 => {
                with_values::<f32, _>(&[&g], |x| self.sink.scatter_rows(&self.ids, x[0], v, d))??
            }
            DType::F64 => {
                with_values::<f64, _>(&[&g], |x| self.sink.scatter_rows(&self.ids, x[0], v, d))??
            }
            t => candle_core::bail!("embed: {t:?}"),
        }
        Ok(None)
    }
}

/// `t` in `dtype` (the same tensor when it already is).
pub fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}

/// `x Wᵀ` for `x` `[n, in]` and `W` `[out, in]`, with a backward that produces the gradient of
/// `x` only. The forward is candle's own matmul kernel on the storages (so the result is exactly
/// what `x.matmul(&W.t())` gives); the backward is the one product `grad · W`.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2(w, Linear { sink: None })
}

/// `x Wᵀ` as a custom op, arguments `(x, W)`: the backward gives the gradient of `x` and, with
/// a sink (CPU only), adds the weight's to the sink instead of returning it.
pub struct Linear {
    pub sink: Option<GradSink>,
}

/// `(batch, m, n, k)` and the layout of `Wᵀ` for `x` `[m, k]`, `W` `[n, k]`.
fn dims(l1: &Layout, l2: &Layout) -> Result<((usize, usize, usize, usize), Layout)> {
    let (a, b) = (l1.dims(), l2.dims());
    if a.len() != 2 || b.len() != 2 || a[1] != b[1] {
        candle_core::bail!("frozen-linear: shapes {a:?} and {b:?} do not fit x Wᵀ")
    }
    Ok(((1, a[0], b[0], a[1]), l2.transpose(0, 1)?))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "hft-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bmnk, wt) = dims(l1, l2)?;
        Ok((s1.matmul(s2, bmnk, l1, &wt)?, Shape::from((bmnk.1, bmnk.2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (bmnk, wt) = dims(l1, l2)?;
        Ok((s1.matmul(s2, bmnk, l1, &wt)?, Shape::from((bmnk.1, bmnk.2))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.detach().contiguous()?;
        if let Some(sink) = &self.sink {
            let x = x.detach().contiguous()?;
            let (m, k) = x.dims2()?;
            let n = w.dim(0)?;
            match x.dtype() {
                DType::F32 => {
                    with_values::<f32, _>(&[&g, &x], |v| sink.add(v[0], v[1], (m, n, k)))??
                }
                DType::F64 => {
                    with_values::<f64, _>(&[&g, &x], |v| sink.add(v[0], v[1], (m, n, k)))??
                }
                d => candle_core::bail!("linear: weight gradient in {d:?}"),
            }
        }
        Ok((Some(g.matmul(&w.detach())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn frozen_linear_matches_matmul_and_skips_the_weight_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (5, 4), &dev)?)?;
        let w = Tensor::randn(0f32, 1., (3, 4), &dev)?;
        let wv = Var::from_tensor(&w)?;
        let frozen = linear(x.as_tensor(), &Param::Frozen(w.clone()), None, true)?;
        let sink = GradSink::default();
        let trained = linear(
            x.as_tensor(),
            &Param::Train(wv.clone(), sink.clone()),
            None,
            true,
        )?;
        let plain = x.as_tensor().matmul(&wv.as_tensor().t()?)?;
        let diff = (&frozen - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        assert_eq!(
            (&trained - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?,
            0.0
        );
        let g1 = frozen.sqr()?.sum_all()?.backward()?;
        let g2 = plain.sqr()?.sum_all()?.backward()?;
        // The trainable op sinks the weight gradient (twice: accumulated in place) and leaves
        // candle's store without one.
        for _ in 0..2 {
            let g3 = trained.sqr()?.sum_all()?.backward()?;
            assert!(g3.get(wv.as_tensor()).is_none());
            let d = (g3.get(x.as_tensor()).expect("x grad") - g2.get(x.as_tensor()).unwrap())?;
            assert!(d.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        }
        let sunk = sink.take(wv.shape(), wv.device())?.expect("sunk");
        let want = (g2.get(wv.as_tensor()).expect("w grad") * 2.0)?;
        let d = (sunk - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-4, "{d}");
        assert!(sink.take(wv.shape(), wv.device())?.is_none(), "taken once");
        let gx1 = g1.get(x.as_tensor()).expect("x grad");
        let gx2 = g2.get(x.as_tensor()).expect("x grad");
        let d = (gx1 - gx2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        assert!(g2.get(wv.as_tensor()).is_some());
        assert!(g1.get(&w).is_none());
        // A 3-d input keeps its leading shape.
        let x3 = Tensor::zeros((2, 5, 4), DType::F32, &dev)?;
        let y3 = linear(&x3, &Param::Frozen(w), None, true)?;
        assert_eq!(y3.dims(), &[2, 5, 3]);
        Ok(())
    }
}
