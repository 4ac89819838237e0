//! Exact magnitude thresholds without sorting or buffering a tensor.
//!
//! TIES keeps the `k` largest-magnitude entries of each task vector. Sorting (or `topk`) needs
//! the whole |delta| in memory; instead we use that non-negative f32 values order exactly as
//! their bit patterns (as u32), and find the k-th largest pattern by radix selection in two
//! streaming passes: a histogram of the high 16 bits picks the bucket holding the k-th largest,
//! a histogram of the low 16 bits inside that bucket pins the exact value. Memory: two
//! 65,536-bin histograms per task vector and thread, whatever the tensor size.

use super::TensorView;

const BINS: usize = 1 << 16;

/// |x| as an order-preserving u32 (NaN sorts above infinity, so it counts as "large").
#[inline]
pub fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// For every task vector `s` (input `s + 1` minus input 0), the bit pattern of its
/// `ks[s]`-th largest magnitude: keeping the entries with `abs_bits(d) >= T` keeps the top `k`
/// (plus any entries tied with the k-th). `None` when `k == 0` (keep nothing).
pub fn delta_thresholds(view: &TensorView, ks: &[u64]) -> Vec<Option<u32>> {
    thresholds_by(view, ks, &|x, b| x - b)
        .into_iter()
        .map(|t| t.map(|(bits, _)| bits))
        .collect()
}

/// As [`delta_thresholds`] with the task vector's entries given by `delta(x, base)` (mergekit
/// ranks the difference rounded to its working dtype), and with each threshold the number of
/// entries equal to it that the top `k` holds: the entries strictly above it plus that many
/// tied ones are exactly `k` (for `k` at most the tensor's size).
pub fn thresholds_by(
    view: &TensorView,
    ks: &[u64],
    delta: &(dyn Fn(f32, f32) -> f32 + Sync),
) -> Vec<Option<(u32, u64)>> {
    let m = ks.len();
    let hist = |select: &(dyn Fn(usize, u32) -> Option<usize> + Sync)| -> Vec<u64> {
        view.fold_chunks(
            || vec![0u64; m * BINS],
            |mut h, _start, ins| {
                for s in 0..m {
                    let hs = &mut h[s * BINS..(s + 1) * BINS];
                    if ks[s] == 0 {
                        continue;
                    }
                    for (x, b) in ins[s + 1].iter().zip(ins[0]) {
                        if let Some(bin) = select(s, abs_bits(delta(*x, *b))) {
                            hs[bin] += 1;
                        }
                    }
                }
                h
            },
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        )
    };
    // The bin holding the k-th largest, and the rank of the wanted value inside it.
    let locate = |h: &[u64], k: u64| -> (usize, u64) {
        let mut above = 0u64;
        for bin in (0..BINS).rev() {
            if above + h[bin] >= k {
                return (bin, k - above);
            }
            above += h[bin];
        }
        (0, 1)
    };
    let hi_hist = hist(&|_, bits| Some((bits >> 16) as usize));
    let total = view.numel as u64;
    let his: Vec<(usize, u64)> = (0..m)
        .map(|s| locate(&hi_hist[s * BINS..(s + 1) * BINS], ks[s].min(total).max(1)))
        .collect();
    let lo_hist =
        hist(&|s, bits| ((bits >> 16) as usize == his[s].0).then_some((bits & 0xffff) as usize));
    (0..m)
        .map(|s| {
            if ks[s] == 0 {
                return None;
            }
            let (hi, rank) = his[s];
            let (lo, ties) = locate(&lo_hist[s * BINS..(s + 1) * BINS], rank);
            Some((((hi as u32) << 16) | lo as u32, ties))
        })
        .collect()
}
