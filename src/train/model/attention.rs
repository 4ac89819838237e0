//! Attention's element-wise parts as single CPU passes with hand-written backward passes.
//!
//! Composed from candle ops, one attention layer makes about thirty graph nodes besides its
//! matrix products: reshape, transpose and copy for each of q, k and v, RoPE's halves,
//! negation, concatenation and products, the scale, the additive causal mask. candle's
//! backward allocates a zero tensor and adds into it for every one of them. Here:
//! - [`Heads`] turns a projection `[b·t, n·d]` into heads `[b, n, t, d]`, rotated by RoPE at
//!   positions `0..t` and scaled, in one pass; its backward is the inverse rotation.
//! - [`Merge`] turns heads `[b, n, t, d]` back into rows `[b·t, n·d]`.
//! - [`CausalSoftmax`] is the softmax of scores whose rows are positions `r mod t` (grouped
//!   query heads stacked along time), over keys `0..=r mod t` only; masked entries are exact
//!   zeros, as an additive `-1e9` mask gives.
//!
//! On other devices the same functions compose candle ops (what the tests compare against).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::ops::{slice, with_values, Elem};

/// RoPE tables: `cos` and `sin` of position × frequency, `[positions, d/2]` row-major.
#[derive(Debug)]
pub struct Rope {
    pub half: usize,
    pub positions: usize,
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
}

impl Rope {
    /// Llama's tables: angle `p / theta^(2i/d)` for position `p` and pair `i`.
    pub fn new(head_dim: usize, positions: usize, theta: f64) -> Rope {
        let half = head_dim / 2;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..positions {
            for i in 0..half {
                let a = p as f64 / theta.powf(2.0 * i as f64 / head_dim as f64);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Rope {
            half,
            positions,
            cos,
            sin,
        }
    }

    /// The first `t` positions as `[t, d/2]` tensors, for the composed path.
    fn tensors(
        &self,
        t: usize,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        let n = t * self.half;
        let c = Tensor::from_slice(&self.cos[..n], (t, self.half), dev)?.to_dtype(dtype)?;
        let s = Tensor::from_slice(&self.sin[..n], (t, self.half), dev)?.to_dtype(dtype)?;
        Ok((c, s))
    }
}

/// The shape `(b, t, n, d)` a [`Heads`] or [`Merge`] op works on.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    n: usize,
    d: usize,
}

/// Rotates one head vector `x` (length d) at position `p` into `y`, times `scale`. `sign` 1 is
/// RoPE (`x·cos + rotate_half(x)·sin`), -1 its inverse (the backward pass).
fn rotate<T: Elem>(rope: &Rope, p: usize, sign: f64, scale: T, x: &[T], y: &mut [T]) {
    let h = rope.half;
    let (c, s) = (&rope.cos[p * h..][..h], &rope.sin[p * h..][..h]);
    for i in 0..h {
        let (ci, si) = (T::from_f64(c[i]), T::from_f64(sign * s[i]));
        y[i] = (x[i] * ci - x[i + h] * si) * scale;
        y[i + h] = (x[i + h] * ci + x[i] * si) * scale;
    }
}

fn copy_scaled<T: Elem>(scale: T, x: &[T], y: &mut [T]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = *x * scale;
    }
}

/// Rows `[b·t, n·d]` to heads `[b, n, t, d]`, each head rotated (if `rope`) and scaled.
fn to_heads<T: Elem>(x: &[T], s: Dims, rope: Option<(&Rope, f64)>, scale: f64) -> Vec<T> {
    let Dims { t, n, d, .. } = s;
    let scale = T::from_f64(scale);
    let mut out = vec![T::zero(); x.len()];
    // One task per (batch, head): t·d contiguous outputs gathered from rows.
    out.par_chunks_mut(t * d).enumerate().for_each(|(bh, dst)| {
        let (bi, hi) = (bh / n, bh % n);
        for (p, y) in dst.chunks_mut(d).enumerate() {
            let src = &x[(bi * t + p) * n * d + hi * d..][..d];
            match rope {
                Some((r, sign)) => rotate(r, p, sign, scale, src, y),
                None => copy_scaled(scale, src, y),
            }
        }
    });
    out
}

/// Heads `[b, n, t, d]` to rows `[b·t, n·d]`, each head rotated (if `rope`) and scaled.
fn from_heads<T: Elem>(y: &[T], s: Dims, rope: Option<(&Rope, f64)>, scale: f64) -> Vec<T> {
    let Dims { t, n, d, .. } = s;
    let scale = T::from_f64(scale);
    let mut out = vec![T::zero(); y.len()];
    // One task per row (batch, position): n·d contiguous outputs gathered from heads.
    out.par_chunks_mut(n * d)
        .enumerate()
        .for_each(|(row, dst)| {
            let (bi, p) = (row / t, row % t);
            for (hi, x) in dst.chunks_mut(d).enumerate() {
                let src = &y[((bi * n + hi) * t + p) * d..][..d];
                match rope {
                    Some((r, sign)) => rotate(r, p, sign, scale, src, x),
                    None => copy_scaled(scale, src, x),
                }
            }
        });
    out
}

fn check(l: &Layout, want: usize, what: &str) -> Result<()> {
    if l.shape().elem_count() != want {
        candle_core::bail!("{what}: {:?} does not hold {want} elements", l.dims())
    }
    Ok(())
}

/// Rows `[b·t, n·d]` to heads `[b, n, t, d]`, RoPE-rotated at positions `0..t` (when `rope`
/// is set) and scaled by `scale`.
pub struct Heads {
    dims: Dims,
    rope: Option<Arc<Rope>>,
    scale: f64,
}

impl Heads {
    fn rope(&self, sign: f64) -> Option<(&Rope, f64)> {
        self.rope.as_deref().map(|r| (r, sign))
    }
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        "hft-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Dims { b, t, n, d } = self.dims;
        check(l, b * t * n * d, "heads")?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(to_heads(
                slice(v, l, "heads")?,
                self.dims,
                self.rope(1.0),
                self.scale,
            )),
            CpuStorage::F64(v) => CpuStorage::F64(to_heads(
                slice(v, l, "heads")?,
                self.dims,
                self.rope(1.0),
                self.scale,
            )),
            _ => candle_core::bail!("heads: f32 or f64 only"),
        };
        Ok((out, Shape::from((b, n, t, d))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = &g.detach().contiguous()?;
        let rope = self.rope(-1.0);
        let dx = match g.dtype() {
            DType::F32 => {
                with_values::<f32, _>(&[g], |v| from_heads(v[0], self.dims, rope, self.scale))
                    .and_then(|v| Elem::tensor(v, x))?
            }
            DType::F64 => {
                with_values::<f64, _>(&[g], |v| from_heads(v[0], self.dims, rope, self.scale))
                    .and_then(|v| Elem::tensor(v, x))?
            }
            d => candle_core::bail!("heads: {d:?}"),
        };
        Ok(Some(dx))
    }
}

/// Heads `[b, n, t, d]` (any shape holding them in that order) to rows `[b·t, n·d]`.
pub struct Merge {
    dims: Dims,
}

impl CustomOp1 for Merge {
    fn name(&self) -> &'static str {
        "hft-merge-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Dims { b, t, n, d } = self.dims;
        check(l, b * t * n * d, "merge-heads")?;
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(from_heads(slice(v, l, "merge")?, self.dims, None, 1.0))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(from_heads(slice(v, l, "merge")?, self.dims, None, 1.0))
            }
            _ => candle_core::bail!("merge-heads: f32 or f64 only"),
        };
        Ok((out, Shape::from((b * t, n * d))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = &g.detach().contiguous()?;
        let dx = match g.dtype() {
            DType::F32 => with_values::<f32, _>(&[g], |v| to_heads(v[0], self.dims, None, 1.0))
                .and_then(|v| Elem::tensor(v, x))?,
            DType::F64 => with_values::<f64, _>(&[g], |v| to_heads(v[0], self.dims, None, 1.0))
                .and_then(|v| Elem::tensor(v, x))?,
            d => candle_core::bail!("merge-heads: {d:?}"),
        };
        Ok(Some(dx))
    }
}

/// Softmax over the last dimension `t` of rows whose position is `row mod t`, each over keys
/// `0..=position`; the rest of the row is zero.
pub struct CausalSoftmax;

fn causal_rows<T: Elem>(x: &[T], t: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(t * t)
        .zip(x.par_chunks(t * t))
        .for_each(|(out, x)| {
            for (p, (dst, src)) in out.chunks_mut(t).zip(x.chunks(t)).enumerate() {
                let (dst, src) = (&mut dst[..=p], &src[..=p]);
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
        });
    out
}

/// `dx = y · (g − Σ g·y)` per row, over the unmasked keys only.
fn causal_grad_rows<T: Elem>(y: &[T], g: &[T], t: usize) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(t * t)
        .zip(y.par_chunks(t * t).zip(g.par_chunks(t * t)))
        .for_each(|(out, (y, g))| {
            for (p, ((dst, y), g)) in out
                .chunks_mut(t)
                .zip(y.chunks(t))
                .zip(g.chunks(t))
                .enumerate()
            {
                let (dst, y, g) = (&mut dst[..=p], &y[..=p], &g[..=p]);
                let dot = y.iter().zip(g).fold(T::zero(), |a, (y, g)| a + *y * *g);
                for ((d, y), g) in dst.iter_mut().zip(y).zip(g) {
                    *d = *y * (*g - dot);
                }
            }
        });
    out
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "hft-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let t = l.dims().last().copied().unwrap_or(0);
        if t == 0 || !l.shape().elem_count().is_multiple_of(t * t) {
            candle_core::bail!(
                "causal-softmax: {:?} is not a stack of t×t blocks",
                l.dims()
            )
        }
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(causal_rows(slice(v, l, "causal-softmax")?, t)),
            CpuStorage::F64(v) => CpuStorage::F64(causal_rows(slice(v, l, "causal-softmax")?, t)),
            _ => candle_core::bail!("causal-softmax: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let t = x.dim(D::Minus1)?;
        let (y, g) = (&y.detach().contiguous()?, &g.detach().contiguous()?);
        let dx = match y.dtype() {
            DType::F32 => with_values::<f32, _>(&[y, g], |v| causal_grad_rows(v[0], v[1], t))
                .and_then(|v| Elem::tensor(v, x))?,
            DType::F64 => with_values::<f64, _>(&[y, g], |v| causal_grad_rows(v[0], v[1], t))
                .and_then(|v| Elem::tensor(v, x))?,
            d => candle_core::bail!("causal-softmax: {d:?}"),
        };
        Ok(Some(dx))
    }
}

/// Rows `x [b·t, n·d]` to heads `[b, n, t, d]`, rotated by `rope` (when given) and scaled.
pub fn heads(
    x: &Tensor,
    (b, t, n, d): (usize, usize, usize, usize),
    rope: Option<&Arc<Rope>>,
    scale: f64,
) -> Result<Tensor> {
    if let Some(r) = rope {
        if t > r.positions || d != 2 * r.half {
            candle_core::bail!("heads: {t} positions of {d} exceed the RoPE table")
        }
    }
    if x.device().is_cpu() {
        let op = Heads {
            dims: Dims { b, t, n, d },
            rope: rope.cloned(),
            scale,
        };
        return x.contiguous()?.apply_op1(op);
    }
    heads_composed(x, (b, t, n, d), rope, scale)
}

/// [`heads`] from candle ops (other devices; the reference in tests).
fn heads_composed(
    x: &Tensor,
    (b, t, n, d): (usize, usize, usize, usize),
    rope: Option<&Arc<Rope>>,
    scale: f64,
) -> Result<Tensor> {
    let h = x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?;
    let h = match rope {
        Some(r) => {
            let (c, s) = r.tensors(t, x.dtype(), x.device())?;
            candle_nn::rotary_emb::rope_slow(&h, &c, &s)?
        }
        None => h,
    };
    if scale == 1.0 {
        Ok(h)
    } else {
        h * scale
    }
}

/// Heads `[b, n, t, d]` (or a shape holding them in that order) to rows `[b·t, n·d]`.
pub fn merge(y: &Tensor, (b, t, n, d): (usize, usize, usize, usize)) -> Result<Tensor> {
    if y.device().is_cpu() {
        return y.contiguous()?.apply_op1(Merge {
            dims: Dims { b, t, n, d },
        });
    }
    merge_composed(y, (b, t, n, d))
}

/// [`merge`] from candle ops.
fn merge_composed(y: &Tensor, (b, t, n, d): (usize, usize, usize, usize)) -> Result<Tensor> {
    y.reshape((b, n, t, d))?
        .transpose(1, 2)?
        .reshape((b * t, n * d))
}

/// Causal softmax of scores `[..., r·t, t]` whose row `i` is position `i mod t`.
pub fn causal_softmax(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op1(CausalSoftmax);
    }
    causal_softmax_composed(x)
}

/// [`causal_softmax`] from candle ops: an additive mask of -1e9 and a softmax.
fn causal_softmax_composed(x: &Tensor) -> Result<Tensor> {
    let t = x.dim(D::Minus1)?;
    let mask: Vec<f32> = (0..t * t)
        .map(|i| if i % t > i / t { -1e9 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), x.device())?.to_dtype(x.dtype())?;
    let blocks = x.reshape(((), t, t))?.broadcast_add(&mask)?;
    candle_nn::ops::softmax(&blocks, D::Minus1)?.reshape(x.shape())
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
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Value and gradient of `Σ f(x)·probe` at `x`.
    fn value_grad(
        f: &dyn Fn(&Tensor) -> Result<Tensor>,
        x: &Var,
        probe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let y = f(x.as_tensor())?;
        let g = (&y * probe)?.sum_all()?.backward()?;
        Ok((y, g.get(x.as_tensor()).expect("gradient").clone()))
    }

    /// Central finite differences of `Σ f(x)·probe` at a few elements against `grad`.
    fn check_fd(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor, probe: &Tensor, grad: &Tensor) {
        let v = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let g = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        let at = |vals: Vec<f64>| {
            let t = Tensor::from_vec(vals, x.shape(), x.device()).unwrap();
            (f(&t).unwrap() * probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        for i in [0, v.len() / 3, v.len() / 2 + 1, v.len() - 1] {
            let (mut up, mut down) = (v.clone(), v.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (at(up) - at(down)) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "[{i}] fd {fd} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn fused_attention_ops_match_composed_ops_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, n, d) = (2, 5, 3, 8);
        let rope = Arc::new(Rope::new(d, 16, 10000.0));
        let x = Var::from_tensor(&Tensor::randn(0f64, 1., (b * t, n * d), &dev)?)?;
        let probe = Tensor::randn(0f64, 1., (b, n, t, d), &dev)?;
        for (r, scale) in [(Some(&rope), 0.35), (None, 1.0)] {
            let fused = |x: &Tensor| heads(x, (b, t, n, d), r, scale);
            let comp = |x: &Tensor| heads_composed(x, (b, t, n, d), r, scale);
            let (yf, gf) = value_grad(&fused, &x, &probe)?;
            let (yc, gc) = value_grad(&comp, &x, &probe)?;
            assert!(max_diff(&yf, &yc) < 1e-12 && max_diff(&gf, &gc) < 1e-12);
            check_fd(&fused, x.as_tensor(), &probe, &gf);
        }
        // Merge, from heads stored as grouped-query blocks [b, kv, rep·t, d].
        let y = Var::from_tensor(&Tensor::randn(0f64, 1., (b, 1, n * t, d), &dev)?)?;
        let probe = Tensor::randn(0f64, 1., (b * t, n * d), &dev)?;
        let fused = |y: &Tensor| merge(y, (b, t, n, d));
        let comp = |y: &Tensor| merge_composed(y, (b, t, n, d));
        let (yf, gf) = value_grad(&fused, &y, &probe)?;
        let (yc, gc) = value_grad(&comp, &y, &probe)?;
        assert!(max_diff(&yf, &yc) == 0.0 && max_diff(&gf, &gc) == 0.0);
        check_fd(&fused, y.as_tensor(), &probe, &gf);
        // Causal softmax over rows that are positions r mod t (two query heads per block).
        let s = Var::from_tensor(&Tensor::randn(0f64, 2., (b, 1, 2 * t, t), &dev)?)?;
        let probe = Tensor::randn(0f64, 1., (b, 1, 2 * t, t), &dev)?;
        let (yf, gf) = value_grad(&causal_softmax, &s, &probe)?;
        let (yc, gc) = value_grad(&causal_softmax_composed, &s, &probe)?;
        assert!(max_diff(&yf, &yc) < 1e-12 && max_diff(&gf, &gc) < 1e-12);
        check_fd(&causal_softmax, s.as_tensor(), &probe, &gf);
        // Row 1 of each block (position 1) attends to keys 0 and 1 only.
        let row: Vec<f64> = yf.get(0)?.get(0)?.get(t + 1)?.to_vec1()?;
        assert!(row[2..].iter().all(|v| *v == 0.0) && (row[0] + row[1] - 1.0).abs() < 1e-12);
        // In f32 the fused RoPE rounds as the composed one does.
        let x32 = x.as_tensor().to_dtype(DType::F32)?;
        let a = heads(&x32, (b, t, n, d), Some(&rope), 1.0)?;
        let c = heads_composed(&x32, (b, t, n, d), Some(&rope), 1.0)?;
        assert_eq!((a - c)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
