//! Parameters and linear layers that know whether they train.
//!
//! A trainable tensor is a candle [`Var`]; a frozen one is a plain [`Tensor`], so the optimizer
//! never sees it. That alone is not enough to save time: candle's matmul backward computes the
//! gradient of both operands, whether or not anything wants the weight's. A frozen linear layer
//! therefore runs through [`FrozenLinear`], a custom op whose backward returns the input
//! gradient only and skips the weight-gradient product (a third of a linear layer's work).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, Var};

/// One model parameter: frozen (a plain tensor, no gradient, no optimizer state) or trainable.
#[derive(Debug, Clone)]
pub enum Param {
    Frozen(Tensor),
    Train(Var),
}

impl Param {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Train(v) => v.as_tensor(),
        }
    }

    pub fn is_trainable(&self) -> bool {
        matches!(self, Param::Train(_))
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
    let x2 = cast(&x.reshape((rows, inp))?, compute)?;
    let y = match w {
        Param::Train(v) => x2.matmul(&cast(v.as_tensor(), compute)?.t()?)?,
        Param::Frozen(t) if grad => frozen_matmul(&x2, &cast(t, compute)?)?,
        Param::Frozen(t) => x2.matmul(&cast(t, compute)?.t()?)?,
    };
    let y = cast(&y, master)?;
    let y = match b {
        Some(b) => y.broadcast_add(b.tensor())?,
        None => y,
    };
    let out = y.dim(1)?;
    let mut shape = lead;
    shape.push(out);
    y.reshape(shape)
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
    x.apply_op2(w, FrozenLinear)
}

/// The custom op behind [`frozen_matmul`]: arguments `(x, W)`.
pub struct FrozenLinear;

/// `(batch, m, n, k)` and the layout of `Wᵀ` for `x` `[m, k]`, `W` `[n, k]`.
fn dims(l1: &Layout, l2: &Layout) -> Result<((usize, usize, usize, usize), Layout)> {
    let (a, b) = (l1.dims(), l2.dims());
    if a.len() != 2 || b.len() != 2 || a[1] != b[1] {
        candle_core::bail!("frozen-linear: shapes {a:?} and {b:?} do not fit x Wᵀ")
    }
    Ok(((1, a[0], b[0], a[1]), l2.transpose(0, 1)?))
}

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
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
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.detach().matmul(&w.detach())?), None))
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
        let plain = linear(x.as_tensor(), &Param::Train(wv.clone()), None, true)?;
        let diff = (&frozen - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let g1 = frozen.sqr()?.sum_all()?.backward()?;
        let g2 = plain.sqr()?.sum_all()?.backward()?;
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
