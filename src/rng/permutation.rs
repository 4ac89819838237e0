//! Keyed bijections of `0..n`, evaluated one index at a time: what element masks are made of.
//!
//! The definition ([`permute`]) is part of every plan and mask ever written, so it never
//! changes; [`Permutation`] only evaluates it faster, forwards (the image of each index of a
//! range) and backwards (the indices whose images fall in a range of targets).

use std::ops::Range;

use super::splitmix64;

/// A keyed bijection of `0..n` evaluated one index at a time: a 4-round Feistel network over
/// the smallest even number of bits covering `n` (at least 2), round function
/// `splitmix64(key ^ (round << 56) ^ right) & half_mask`, with cycle walking (re-apply while
/// the result is `>= n`) to stay inside `0..n`. The domain is under 4n, so a walk is short.
///
/// Element masks use it to pick *exactly* `k` of `n` elements without materialising
/// anything: element `i` is selected iff `permute(key, n, i) < k`.
pub fn permute(key: u64, n: u64, i: u64) -> u64 {
    Permutation::with_rounds(key, n, false).apply(i)
}

/// Entries of one tabulated round function: every `half ≤ 16` fits.
const ROUND: usize = 1 << 16;

/// The four round functions, one table each. A table has room for the largest half, so an
/// index cast to `u16` needs no bounds check; only the first `2^half` entries are written.
type Tables = [[u16; ROUND]; 4];

/// Indices evaluated together: their lookups overlap in the CPU, and a batch's bookkeeping
/// (values, walkers) stays in the first-level cache.
const BATCH: usize = 1024;

/// [`permute`] for one `(key, n)`, with its four round functions tabulated: the same
/// bijection, four lookups per index instead of four splitmix64 calls. Up to `n = 2^32`
/// (half ≤ 16) the tables hold `4 · 2^half` entries (16 KiB for a 4 M-element tensor, 32 KiB
/// for 16 M), so they stay in the first-level cache; above that the rounds are computed.
#[derive(Debug, Clone)]
pub struct Permutation {
    key: u64,
    n: u64,
    half: u32,
    mask: u64,
    /// Round `r`'s function at `x` is `rounds[r][x]`; `None` when computed.
    rounds: Option<Box<Tables>>,
}

impl Permutation {
    pub fn new(key: u64, n: u64) -> Self {
        Self::with_rounds(key, n, true)
    }

    /// `tabulate`: whether the round functions are tabulated (when the domain allows) or
    /// computed at each call (what [`permute`] does: nothing to build for one index).
    fn with_rounds(key: u64, n: u64, tabulate: bool) -> Self {
        let bits = (64 - (n.max(4) - 1).leading_zeros()).div_ceil(2) * 2;
        let half = bits / 2;
        let mask = (1u64 << half) - 1;
        let rounds = (tabulate && half <= 16).then(|| {
            let mut t: Box<Tables> = vec![[0u16; ROUND]; 4]
                .into_boxed_slice()
                .try_into()
                .expect("four tables");
            for (round, row) in t.iter_mut().enumerate() {
                for (r, f) in row[..=mask as usize].iter_mut().enumerate() {
                    *f = (round_fn(key, round as u64, r as u64) & mask) as u16;
                }
            }
            t
        });
        Permutation {
            key,
            n,
            half,
            mask,
            rounds,
        }
    }

    /// The size of the domain.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// One pass of the network, without cycle walking: rounds computed.
    #[inline(always)]
    fn forward_computed(&self, x: u64) -> u64 {
        let (half, mask) = (self.half, self.mask);
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 0..4u64 {
            (l, r) = (r, l ^ (round_fn(self.key, round, r) & mask));
        }
        (l << half) | r
    }

    /// The inverse of [`Self::forward_computed`]: the rounds undone in reverse order.
    #[inline(always)]
    fn backward_computed(&self, x: u64) -> u64 {
        let (half, mask) = (self.half, self.mask);
        let (mut l, mut r) = (x >> half, x & mask);
        for round in (0..4u64).rev() {
            (l, r) = (r ^ (round_fn(self.key, round, l) & mask), l);
        }
        (l << half) | r
    }

    /// `permute(key, n, i)`.
    #[inline]
    pub fn apply(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        match &self.rounds {
            Some(t) => walk_one(i as u32, (self.n - 1) as u32, |x| forward(t, self.half, x)) as u64,
            None => walk_one(i, self.n - 1, |x| self.forward_computed(x)),
        }
    }

    /// The index `i` with `apply(i) == y`.
    pub fn invert(&self, y: u64) -> u64 {
        debug_assert!(y < self.n);
        match &self.rounds {
            Some(t) => {
                walk_one(y as u32, (self.n - 1) as u32, |x| backward(t, self.half, x)) as u64
            }
            None => walk_one(y, self.n - 1, |x| self.backward_computed(x)),
        }
    }

    /// `out[j] = below` where `self.apply(start + j) < k`, else `above`: an element mask
    /// written straight into selection bytes, a batch at a time ([`Batch::evaluate`]).
    pub fn select_range(&self, start: u64, k: u64, out: &mut [u8], below: u8, above: u8) {
        let t = match &self.rounds {
            Some(t) if k < self.n => t,
            // Every index maps below `k`, or the rounds are computed (over 2^32 elements:
            // never a tensor in practice), one index at a time.
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = if k >= self.n || self.apply(start + j as u64) < k {
                        below
                    } else {
                        above
                    };
                }
                return;
            }
        };
        // Tabulated: the domain, `n` and `k < n` fit u32.
        let (k, last, flip) = (k as u32, (self.n - 1) as u32, below ^ above);
        let mut batch = Batch::new();
        for (c, out) in out.chunks_mut(BATCH).enumerate() {
            let first = (start + (c * BATCH) as u64) as u32;
            let xs = batch.evaluate(first, out.len(), last, |x| forward(t, self.half, x));
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = above ^ (flip & 0u8.wrapping_sub(u8::from(x < k)));
            }
        }
    }

    /// Sets bit `i % 64` of `bits[i / 64]` for every index `i` whose image lies in `targets`:
    /// the same mask as [`Self::select_range`] with `k = targets.end` when `targets` starts
    /// at 0, computed from the other side. For a mask of ratio `r` this evaluates
    /// `min(r, 1 - r)` of the domain (the complement of the other side is the mask), about
    /// half the work of going forwards at the usual ratio of one half, but its writes land
    /// anywhere in the tensor: the caller keeps `bits` (n / 8 bytes) in cache by size.
    pub fn mark_preimages(&self, targets: Range<u64>, bits: &mut [u64]) {
        assert!(targets.end <= self.n && bits.len() as u64 >= self.n.div_ceil(64));
        let mut mark = |x: u64| bits[(x >> 6) as usize] |= 1u64 << (x & 63);
        let Some(t) = &self.rounds else {
            targets.for_each(|y| mark(self.invert(y)));
            return;
        };
        let last = (self.n - 1) as u32;
        let mut batch = Batch::new();
        let mut y = targets.start;
        while y < targets.end {
            let len = (targets.end - y).min(BATCH as u64) as usize;
            let xs = batch.evaluate(y as u32, len, last, |x| backward(t, self.half, x));
            xs.iter().for_each(|&x| mark(x as u64));
            y += len as u64;
        }
    }
}

/// Round `round`'s function at `r`, before masking to the half width.
#[inline(always)]
fn round_fn(key: u64, round: u64, r: u64) -> u64 {
    splitmix64(key ^ (round << 56) ^ r)
}

/// One pass of the network with tabulated rounds. `half ≤ 16`, so the domain fits `u32` and
/// every half-width value fits `u16` (the casts below only drop zero bits).
#[inline(always)]
fn forward(t: &Tables, half: u32, x: u32) -> u32 {
    let (l0, r0) = (x >> half, x & ((1 << half) - 1));
    let r1 = l0 ^ t[0][r0 as u16 as usize] as u32;
    let r2 = r0 ^ t[1][r1 as u16 as usize] as u32;
    let r3 = r1 ^ t[2][r2 as u16 as usize] as u32;
    let r4 = r2 ^ t[3][r3 as u16 as usize] as u32;
    (r3 << half) | r4
}

/// The inverse of [`forward`].
#[inline(always)]
fn backward(t: &Tables, half: u32, x: u32) -> u32 {
    let (r3, r4) = (x >> half, x & ((1 << half) - 1));
    let r2 = r4 ^ t[3][r3 as u16 as usize] as u32;
    let r1 = r3 ^ t[2][r2 as u16 as usize] as u32;
    let r0 = r2 ^ t[1][r1 as u16 as usize] as u32;
    let l0 = r1 ^ t[0][r0 as u16 as usize] as u32;
    (l0 << half) | r0
}

/// Cycle walking for one value: `pass` until the result is at most `last` (inside `0..n`).
#[inline(always)]
fn walk_one<T: Copy + PartialOrd>(x: T, last: T, pass: impl Fn(T) -> T) -> T {
    let mut x = pass(x);
    while x > last {
        x = pass(x);
    }
    x
}

/// Scratch for evaluating up to [`BATCH`] consecutive indices with cycle walking.
/// Scratch for evaluating up to [`BATCH`] consecutive indices with cycle walking.
struct Batch {
    xs: [u32; BATCH],
}

impl Batch {
    fn new() -> Self {
        Batch { xs: [0; BATCH] }
    }

    /// The cycle-walked images of `first..first + len` under `pass` (walking while above
    /// `last = n - 1`). One pass over every index with no branch; then, if any value left
    /// `0..n`, the walkers of each 64 indices are marked in one bit word and walked pass by
    /// pass, so that the lookups of neighbouring walkers overlap in the CPU instead of each
    /// waiting on its own chain and branch. Measured on 2 cores, a dense list of walkers
    /// (two buffers, one written per pass) was 15-25% slower than the bit words.
    #[inline(always)]
    fn evaluate(&mut self, first: u32, len: usize, last: u32, pass: impl Fn(u32) -> u32) -> &[u32] {
        debug_assert!(len <= BATCH);
        let xs = &mut self.xs[..len];
        for (j, x) in xs.iter_mut().enumerate() {
            *x = pass(first + j as u32);
        }
        if !xs.iter().fold(false, |a, &x| a | (x > last)) {
            return xs;
        }
        let mut walkers = [0u64; BATCH / 64];
        let walkers = &mut walkers[..len.div_ceil(64)];
        for (w, x) in walkers.iter_mut().zip(xs.chunks(64)) {
            *w = x
                .iter()
                .enumerate()
                .fold(0, |b, (q, &x)| b | u64::from(x > last) << q);
        }
        let mut left = true;
        while left {
            left = false;
            for (wi, w) in walkers.iter_mut().enumerate() {
                let (mut bits, mut next) = (*w, 0u64);
                while bits != 0 {
                    let q = bits.trailing_zeros();
                    bits &= bits - 1;
                    let x = &mut xs[wi * 64 + q as usize];
                    *x = pass(*x);
                    next |= u64::from(*x > last) << q;
                }
                *w = next;
                left |= next != 0;
            }
        }
        xs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_a_bijection_for_awkward_sizes() {
        for n in [1u64, 2, 3, 5, 17, 100, 1000, 4097] {
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let p = permute(99, n, i);
                assert!(p < n && !seen[p as usize], "n={n} i={i}");
                seen[p as usize] = true;
            }
        }
    }

    #[test]
    fn reference_images_are_stable() {
        // Pinned: a change to the network would silently change every mask ever written.
        assert_eq!(
            [0u64, 1, 2, 99].map(|i| permute(7, 100, i)),
            PINNED_100,
            "permute(7, 100, ·)"
        );
        assert_eq!(permute(7, 45_088_768, 12_345_678), PINNED_BIG);
    }

    // From `hft_permute` in `src/plan/torch_plan.py`, an independent implementation.
    const PINNED_100: [u64; 4] = [12, 72, 63, 38];
    const PINNED_BIG: u64 = 32_912_978;

    #[test]
    fn tabulated_permutation_is_permute() {
        for n in [
            1u64,
            2,
            3,
            5,
            17,
            100,
            4097,
            65_536,
            1 << 20,
            (1 << 20) + 3,
            45_088_768,
        ] {
            for key in [0u64, 7, u64::MAX] {
                let p = Permutation::new(key, n);
                let step = (n / 5000).max(1);
                for i in (0..n).step_by(step as usize).chain([n - 1]) {
                    assert_eq!(p.apply(i), permute(key, n, i), "n={n} key={key} i={i}");
                }
            }
        }
        // Above 2^32 the rounds are computed, not tabulated.
        let n = (1u64 << 33) + 5;
        let p = Permutation::new(3, n);
        assert!(p.rounds.is_none());
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(p.apply(i), permute(3, n, i));
        }
        // In runs, across batch boundaries and ragged ends.
        for n in [5u64, 4097, 45_088_768] {
            let p = Permutation::new(9, n);
            let start = n.saturating_sub(3000) / 2;
            let len = (n - start).min(2500) as usize;
            let k = n / 3;
            let mut out = vec![0u8; len];
            p.select_range(start, k, &mut out, 1, 2);
            for (j, o) in out.iter().enumerate() {
                let want = if permute(9, n, start + j as u64) < k {
                    1
                } else {
                    2
                };
                assert_eq!(*o, want, "n={n} j={j}");
            }
        }
    }

    #[test]
    fn invert_undoes_apply() {
        for n in [1u64, 2, 5, 4097, (1 << 20) + 3] {
            let p = Permutation::new(5, n);
            let step = (n / 3000).max(1) as usize;
            for i in (0..n).step_by(step) {
                assert_eq!(p.invert(p.apply(i)), i, "n={n} i={i}");
            }
        }
        let n = (1u64 << 33) + 5;
        let p = Permutation::new(3, n);
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(p.invert(p.apply(i)), i);
        }
    }

    #[test]
    fn preimages_are_the_forward_mask() {
        for n in [1u64, 5, 64, 1000, 4097, (1 << 20) + 3] {
            let p = Permutation::new(11, n);
            for k in [0, 1, n / 3, n / 2, n - 1, n] {
                let mut fwd = vec![0u8; n as usize];
                p.select_range(0, k, &mut fwd, 1, 0);
                let words = n.div_ceil(64) as usize;
                let (mut below, mut above) = (vec![0u64; words], vec![0u64; words]);
                p.mark_preimages(0..k, &mut below);
                p.mark_preimages(k..n, &mut above);
                let bit = |b: &[u64], i: usize| b[i / 64] >> (i % 64) & 1 == 1;
                for (i, &f) in fwd.iter().enumerate() {
                    assert_eq!(bit(&below, i), f == 1, "n={n} k={k} i={i}");
                    assert_eq!(bit(&above, i), f == 0, "n={n} k={k} i={i}");
                }
                // Bits past n stay clear.
                for i in n as usize..words * 64 {
                    assert!(!bit(&below, i) && !bit(&above, i), "n={n} i={i}");
                }
            }
        }
    }
}
