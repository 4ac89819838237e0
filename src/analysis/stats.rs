//! Change statistics of a pair of tensors, computed in one streaming pass.
//!
//! [`Acc`] holds sums (of squares, of products, of absolute differences) rather than ratios, so
//! accumulators of tensors merge exactly into layer, category and model totals: the relative
//! change of a layer is the norm of its whole delta over the norm of its whole weight, not an
//! average of per-tensor ratios.

use rayon::prelude::*;
use serde::Serialize;

use crate::io::dtype::{self, DType, CHUNK};

/// Mergeable sums over the elements of one or more tensor pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Acc {
    pub numel: u64,
    pub sum_a2: f64,
    pub sum_b2: f64,
    pub sum_d2: f64,
    pub dot: f64,
    pub sum_abs_d: f64,
    pub max_abs_d: f64,
    pub changed: u64,
    /// Elements where A (or B) is NaN or infinite; they are kept out of every sum above.
    pub nonfinite_a: u64,
    pub nonfinite_b: u64,
}

impl Acc {
    pub fn merge(&mut self, o: &Acc) {
        self.numel += o.numel;
        self.sum_a2 += o.sum_a2;
        self.sum_b2 += o.sum_b2;
        self.sum_d2 += o.sum_d2;
        self.dot += o.dot;
        self.sum_abs_d += o.sum_abs_d;
        self.max_abs_d = self.max_abs_d.max(o.max_abs_d);
        self.changed += o.changed;
        self.nonfinite_a += o.nonfinite_a;
        self.nonfinite_b += o.nonfinite_b;
    }

    /// Adds element pairs. A pair with a non-finite side is counted, not summed, so one NaN does
    /// not turn a layer's norm into NaN; it counts as changed unless both sides have the same bits.
    ///
    /// The loop is branch-free over `LANES` independent partial sums so the compiler vectorises
    /// it; the lanes are added up at the end (a fixed order, so results are deterministic).
    pub fn push(&mut self, a: &[f64], b: &[f64]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { self.push_avx2(a, b) };
        }
        self.push_lanes(a, b)
    }

    /// The same loop compiled for AVX2 (no FMA: fused rounding would make figures depend on
    /// the CPU). Lanes are explicit, so both builds sum in the same order and agree exactly.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn push_avx2(&mut self, a: &[f64], b: &[f64]) {
        self.push_lanes(a, b)
    }

    /// Sums blocks of `BLOCK` pairs on a fast path that assumes finite values (NaN and Inf
    /// propagate into the squares, so a non-finite block is detected afterwards and summed
    /// again on the exact slow path). Four explicit lanes keep the summation order, and so the
    /// result, the same on every CPU.
    #[inline(always)]
    fn push_lanes(&mut self, a: &[f64], b: &[f64]) {
        const BLOCK: usize = 1024;
        let n = a.len().min(b.len());
        for (xa, xb) in a[..n].chunks(BLOCK).zip(b[..n].chunks(BLOCK)) {
            let fast = fast_sums(xa, xb);
            if fast.sum_a2.is_finite() && fast.sum_b2.is_finite() && fast.sum_d2.is_finite() {
                self.merge(&fast);
            } else {
                self.push_exact(xa, xb);
            }
        }
    }

    /// Element by element, keeping non-finite pairs out of the sums.
    fn push_exact(&mut self, a: &[f64], b: &[f64]) {
        for (&x, &y) in a.iter().zip(b) {
            self.numel += 1;
            let (fx, fy) = (x.is_finite(), y.is_finite());
            if !(fx && fy) {
                self.nonfinite_a += !fx as u64;
                self.nonfinite_b += !fy as u64;
                self.changed += (x.to_bits() != y.to_bits()) as u64;
                continue;
            }
            let d = y - x;
            self.sum_a2 += x * x;
            self.sum_b2 += y * y;
            self.sum_d2 += d * d;
            self.dot += x * y;
            self.sum_abs_d += d.abs();
            self.max_abs_d = self.max_abs_d.max(d.abs());
            self.changed += (x != y) as u64;
        }
    }

    pub fn figures(&self) -> Figures {
        let l2_a = self.sum_a2.sqrt();
        let l2_b = self.sum_b2.sqrt();
        let finite = self.numel - self.nonfinite_a.max(self.nonfinite_b).min(self.numel);
        Figures {
            l2_a,
            l2_b,
            l2_delta: self.sum_d2.sqrt(),
            rel_delta: (l2_a > 0.0).then(|| self.sum_d2.sqrt() / l2_a),
            cosine: (l2_a > 0.0 && l2_b > 0.0).then(|| (self.dot / (l2_a * l2_b)).clamp(-1.0, 1.0)),
            max_abs_delta: self.max_abs_d,
            mean_abs_delta: if finite > 0 {
                self.sum_abs_d / finite as f64
            } else {
                0.0
            },
            changed_frac: if self.numel > 0 {
                self.changed as f64 / self.numel as f64
            } else {
                0.0
            },
            numel: self.numel,
            nonfinite_a: self.nonfinite_a,
            nonfinite_b: self.nonfinite_b,
        }
    }
}

/// Sums of a block assuming every value is finite; see [`Acc::push`].
#[inline(always)]
fn fast_sums(a: &[f64], b: &[f64]) -> Acc {
    const L: usize = 4;
    let mut a2 = [0f64; L];
    let mut b2 = [0f64; L];
    let mut d2 = [0f64; L];
    let mut ab = [0f64; L];
    let mut ad = [0f64; L];
    let mut mx = [0f64; L];
    let mut ch = [0u64; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..L {
            let (x, y) = (xa[l], xb[l]);
            let d = y - x;
            a2[l] += x * x;
            b2[l] += y * y;
            d2[l] += d * d;
            ab[l] += x * y;
            let m = d.abs();
            ad[l] += m;
            mx[l] = if m > mx[l] { m } else { mx[l] };
            ch[l] += (x != y) as u64;
        }
    }
    for (&x, &y) in ra.iter().zip(rb) {
        let d = y - x;
        a2[0] += x * x;
        b2[0] += y * y;
        d2[0] += d * d;
        ab[0] += x * y;
        ad[0] += d.abs();
        mx[0] = if d.abs() > mx[0] { d.abs() } else { mx[0] };
        ch[0] += (x != y) as u64;
    }
    Acc {
        numel: a.len().min(b.len()) as u64,
        sum_a2: a2.iter().sum(),
        sum_b2: b2.iter().sum(),
        sum_d2: d2.iter().sum(),
        dot: ab.iter().sum(),
        sum_abs_d: ad.iter().sum(),
        max_abs_d: mx.iter().fold(0.0, |m, &x| if x > m { x } else { m }),
        changed: ch.iter().sum(),
        nonfinite_a: 0,
        nonfinite_b: 0,
    }
}

/// The figures reported per tensor, layer, category and in total.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Figures {
    pub l2_a: f64,
    pub l2_b: f64,
    pub l2_delta: f64,
    /// ‖B−A‖ / ‖A‖; `None` when A is all zeros.
    pub rel_delta: Option<f64>,
    /// `None` when either side is all zeros.
    pub cosine: Option<f64>,
    pub max_abs_delta: f64,
    pub mean_abs_delta: f64,
    pub changed_frac: f64,
    pub numel: u64,
    pub nonfinite_a: u64,
    pub nonfinite_b: u64,
}

/// Compares `n` elements of two float tensors given as raw bytes (dtypes may differ), in
/// parallel chunks. Memory use is a few chunk buffers per worker, whatever the tensor size.
pub fn compare_float(a: &[u8], da: DType, b: &[u8], db: DType, n: usize) -> Acc {
    let (ea, eb) = (
        dtype::elem_bytes(da).expect("float"),
        dtype::elem_bytes(db).expect("float"),
    );
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let s = c * CHUNK;
            let e = (s + CHUNK).min(n);
            let (sa, sb) = (&a[s * ea..e * ea], &b[s * eb..e * eb]);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { chunk_avx2(sa, da, sb, db, e - s) };
            }
            chunk(sa, da, sb, db, e - s)
        })
        .reduce(Acc::default, |mut x, y| {
            x.merge(&y);
            x
        })
}

/// One chunk: decode into stack buffers (no allocation, stays in L1) and sum.
#[inline(always)]
fn chunk(a: &[u8], da: DType, b: &[u8], db: DType, n: usize) -> Acc {
    const SUB: usize = 1024;
    let (ea, eb) = (
        dtype::elem_bytes(da).expect("float"),
        dtype::elem_bytes(db).expect("float"),
    );
    let mut acc = Acc::default();
    let (mut xa, mut xb) = ([0f64; SUB], [0f64; SUB]);
    let mut s = 0;
    while s < n {
        let e = (s + SUB).min(n);
        let m = e - s;
        dtype::decode_f64(da, &a[s * ea..e * ea], &mut xa[..m]);
        dtype::decode_f64(db, &b[s * eb..e * eb], &mut xb[..m]);
        acc.push_lanes(&xa[..m], &xb[..m]);
        s = e;
    }
    acc
}

/// [`chunk`] compiled for AVX2, decoding included (no FMA, so results match the generic build).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn chunk_avx2(a: &[u8], da: DType, b: &[u8], db: DType, n: usize) -> Acc {
    chunk(a, da, b, db, n)
}

/// Compares two non-float tensors of `elem` bytes per element: counts differing elements.
pub fn compare_bytes(a: &[u8], b: &[u8], elem: usize) -> (u64, u64) {
    let elem = elem.max(1);
    let n = (a.len().min(b.len()) / elem) as u64;
    let changed = a
        .par_chunks(elem * CHUNK)
        .zip(b.par_chunks(elem * CHUNK))
        .map(|(x, y)| {
            x.chunks(elem)
                .zip(y.chunks(elem))
                .filter(|(p, q)| p != q)
                .count() as u64
        })
        .sum();
    (n, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward f64 reference the streaming code must match.
    fn reference(a: &[f64], b: &[f64]) -> Figures {
        let n2 = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
        let (la, lb, ld) = (n2(a), n2(b), n2(&d));
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        Figures {
            l2_a: la,
            l2_b: lb,
            l2_delta: ld,
            rel_delta: (la > 0.0).then(|| ld / la),
            cosine: (la > 0.0 && lb > 0.0).then(|| dot / (la * lb)),
            max_abs_delta: d.iter().fold(0.0f64, |m, x| m.max(x.abs())),
            mean_abs_delta: d.iter().map(|x| x.abs()).sum::<f64>() / a.len() as f64,
            changed_frac: a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64,
            numel: a.len() as u64,
            nonfinite_a: 0,
            nonfinite_b: 0,
        }
    }

    fn encode(dt: DType, v: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; v.len() * dtype::elem_bytes(dt).unwrap()];
        dtype::encode_f32(dt, v, &mut out);
        out
    }

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs()))
    }

    fn assert_close(got: &Figures, want: &Figures) {
        assert!(close(got.l2_a, want.l2_a), "{got:?} vs {want:?}");
        assert!(close(got.l2_b, want.l2_b));
        assert!(close(got.l2_delta, want.l2_delta));
        assert_eq!(got.rel_delta.is_some(), want.rel_delta.is_some());
        if let (Some(x), Some(y)) = (got.rel_delta, want.rel_delta) {
            assert!(close(x, y));
        }
        if let (Some(x), Some(y)) = (got.cosine, want.cosine) {
            assert!(close(x, y));
        }
        assert!(close(got.max_abs_delta, want.max_abs_delta));
        assert!(close(got.mean_abs_delta, want.mean_abs_delta));
        assert!(close(got.changed_frac, want.changed_frac));
        assert_eq!(got.numel, want.numel);
    }

    #[test]
    fn every_float_dtype_matches_the_f64_reference() {
        // More than one chunk, with exactly representable values in every dtype.
        let n = CHUNK + 1234;
        let a: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 8.0).collect();
        let b: Vec<f32> = (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    a[i]
                } else {
                    a[i] + ((i % 5) as f32 - 2.0) / 4.0
                }
            })
            .collect();
        for dt in [DType::BF16, DType::F16, DType::F32, DType::F64] {
            let (ba, bb) = (encode(dt, &a), encode(dt, &b));
            let got = compare_float(&ba, dt, &bb, dt, n).figures();
            let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
            let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
            assert_close(&got, &reference(&a64, &b64));
        }
    }

    #[test]
    fn zero_norm_gives_null_ratios() {
        let z = encode(DType::F32, &[0.0; 4]);
        let o = encode(DType::F32, &[1.0, 0.0, 0.0, 0.0]);
        let f = compare_float(&z, DType::F32, &o, DType::F32, 4).figures();
        assert_eq!(f.rel_delta, None);
        assert_eq!(f.cosine, None);
        assert_eq!(f.l2_delta, 1.0);
        assert_eq!(f.changed_frac, 0.25);
    }

    #[test]
    fn nonfinite_values_are_counted_not_summed() {
        let a = encode(DType::F32, &[1.0, f32::NAN, 2.0, f32::INFINITY]);
        let b = encode(DType::F32, &[1.0, f32::NAN, 3.0, 1.0]);
        let f = compare_float(&a, DType::F32, &b, DType::F32, 4).figures();
        assert_eq!((f.nonfinite_a, f.nonfinite_b), (2, 1));
        assert_eq!(f.l2_delta, 1.0);
        assert!(f.rel_delta.unwrap().is_finite());
        // The NaN with identical bits is unchanged; inf -> 1 is a change.
        assert_eq!(f.changed_frac, 0.5);
    }

    #[test]
    fn merged_accumulators_equal_one_pass() {
        let a: Vec<f64> = (0..100).map(|i| i as f64 * 0.5).collect();
        let b: Vec<f64> = (0..100).map(|i| i as f64 * 0.25 - 1.0).collect();
        let mut whole = Acc::default();
        whole.push(&a, &b);
        let mut parts = Acc::default();
        let mut p2 = Acc::default();
        parts.push(&a[..37], &b[..37]);
        p2.push(&a[37..], &b[37..]);
        parts.merge(&p2);
        assert_close(&parts.figures(), &whole.figures());
    }

    #[test]
    fn bytes_compare_counts_differing_elements() {
        let a = [1u8, 2, 3, 4, 5, 6];
        let b = [1u8, 2, 9, 4, 5, 7];
        assert_eq!(compare_bytes(&a, &b, 2), (3, 2));
    }
}
