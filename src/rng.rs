//! Counter-based randomness: every draw is a pure function of (seed, tensor name, index).
//!
//! No stream RNG is threaded through the program, so any command, on any thread or device, in
//! any order, rebuilds exactly the same values. The construction is deliberately simple enough
//! to re-implement anywhere (a CUDA kernel, a Python script):
//!
//! * `key(seed, name) = splitmix64(seed XOR fnv1a64(name))`
//! * `draw(key, i) = splitmix64(key XOR splitmix64(i))`
//!
//! where `fnv1a64` is 64-bit FNV-1a over the UTF-8 bytes of the name and `splitmix64` is the
//! finaliser of Steele et al.'s SplitMix64 (add 0x9E3779B97F4A7C15, then two xor-shift-multiply
//! rounds), all arithmetic wrapping on u64.

/// SplitMix64's output function: a bijection on u64 with good avalanche.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a of a string.
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The per-tensor key of a seed.
#[inline]
pub fn key(seed: u64, name: &str) -> u64 {
    splitmix64(seed ^ fnv1a64(name))
}

/// The `i`-th 64-bit draw under `key`.
#[inline]
pub fn draw(key: u64, i: u64) -> u64 {
    splitmix64(key ^ splitmix64(i))
}

/// Uniform in [0, 1) with 53 random bits.
#[inline]
pub fn uniform(key: u64, i: u64) -> f64 {
    (draw(key, i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal draw (Box-Muller from two counter draws).
#[inline]
pub fn normal(key: u64, i: u64) -> f64 {
    let u1 = 1.0 - uniform(key, 2 * i);
    let u2 = uniform(key, 2 * i + 1);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

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

/// [`permute`] for one `(key, n)`, with its four round functions tabulated: the same
/// bijection, four lookups per index instead of four splitmix64 calls. Up to `n = 2^32`
/// (half ≤ 16) the tables hold `4 · 2^half` entries, packed (16 KiB for a 4 M-element tensor,
/// 32 KiB for 16 M), so they stay in the first-level cache; above that the rounds are computed.
/// The tables live in an array of the largest size so that an index masked to its length needs
/// no bounds check in the inner loop; the unused tail is zeroed memory never touched.
#[derive(Debug, Clone)]
pub struct Permutation {
    key: u64,
    n: u64,
    half: u32,
    mask: u64,
    /// Round `r`'s function at `x` is `rounds[r * ROUND + x]`; `None` when computed.
    rounds: Option<Box<[u16; 4 * ROUND]>>,
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
            let mut t: Box<[u16; 4 * ROUND]> = vec![0u16; 4 * ROUND]
                .into_boxed_slice()
                .try_into()
                .expect("length is 4 * ROUND");
            for round in 0..4u64 {
                let row = &mut t[(round as usize) << half..][..=mask as usize];
                for (r, f) in row.iter_mut().enumerate() {
                    *f = (splitmix64(key ^ (round << 56) ^ r as u64) & mask) as u16;
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

    /// One pass of the Feistel network, without cycle walking.
    #[inline(always)]
    fn once(&self, x: u64) -> u64 {
        match &self.rounds {
            None => self.once_computed(x),
            Some(t) => self.once_tabulated(t, x),
        }
    }

    #[inline(always)]
    fn once_computed(&self, x: u64) -> u64 {
        let (half, mask) = (self.half, self.mask);
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f = splitmix64(self.key ^ (round << 56) ^ r) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << half) | r
    }

    #[inline(always)]
    fn once_tabulated(&self, t: &[u16; 4 * ROUND], x: u64) -> u64 {
        let half = self.half;
        let (mut l, mut r) = (x >> half, x & self.mask);
        for round in 0..4usize {
            let f = t[((round << half) | r as usize) & (4 * ROUND - 1)] as u64;
            (l, r) = (r, l ^ f);
        }
        (l << half) | r
    }

    /// `permute(key, n, i)`.
    #[inline]
    pub fn apply(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        let mut x = self.once(i);
        while x >= self.n {
            x = self.once(x);
        }
        x
    }

    /// `out[j] = below` where `self.apply(start + j) < k`, else `above`: an element mask
    /// written straight into selection bytes. One pass with no branch over every index, then
    /// passes over only those that left `0..n` (the cycle walk): the lookups of neighbouring
    /// indices overlap in the CPU instead of each index waiting on its own chain and branch.
    /// The walkers of each 64 indices are one bit word, so finding them costs no store per
    /// index (a list of walkers built with a store per index cost more than the walk).
    pub fn select_range(&self, start: u64, k: u64, out: &mut [u8], below: u8, above: u8) {
        // The choice between tables and computed rounds is made once, outside the loops.
        let v = [below, above];
        match &self.rounds {
            Some(t) => self.select_with(|x| self.once_tabulated(t, x), start, k, out, v),
            None => self.select_with(|x| self.once_computed(x), start, k, out, v),
        }
    }

    #[inline(always)]
    fn select_with(
        &self,
        once: impl Fn(u64) -> u64,
        start: u64,
        k: u64,
        out: &mut [u8],
        v: [u8; 2],
    ) {
        const BATCH: usize = 1024;
        let mut xs = [0u64; BATCH];
        let mut walkers = [0u64; BATCH / 64];
        for (c, out) in out.chunks_mut(BATCH).enumerate() {
            let base = start + (c * BATCH) as u64;
            let words = out.len().div_ceil(64);
            let words_of = out.chunks_mut(64).zip(xs.chunks_mut(64));
            for (wi, (w, (o, x))) in walkers.iter_mut().zip(words_of).enumerate() {
                let mut bits = 0u64;
                let first = base + (wi * 64) as u64;
                for (q, (o, x)) in o.iter_mut().zip(x.iter_mut()).enumerate() {
                    *x = once(first + q as u64);
                    *o = v[usize::from(*x >= k)];
                    bits |= u64::from(*x >= self.n) << q;
                }
                *w = bits;
            }
            let mut left = walkers[..words].iter().any(|&w| w != 0);
            while left {
                left = false;
                for (wi, w) in walkers[..words].iter_mut().enumerate() {
                    let (mut bits, mut next) = (*w, 0u64);
                    while bits != 0 {
                        let q = bits.trailing_zeros();
                        bits &= bits - 1;
                        let j = wi * 64 + q as usize;
                        let x = once(xs[j]);
                        xs[j] = x;
                        out[j] = v[usize::from(x >= k)];
                        next |= u64::from(x >= self.n) << q;
                    }
                    *w = next;
                    left |= next != 0;
                }
            }
        }
    }
}

/// A seeded shuffle of `0..n` by sorting on counter draws: reproducible from (key) alone.
pub fn permutation(key: u64, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.sort_by_key(|&i| (draw(key, i as u64), i));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values_are_stable() {
        // Pinned so that a change to the construction (which would silently change every plan
        // and mask ever written) fails loudly.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn uniform_is_in_range_and_roughly_uniform() {
        let k = key(7, "w");
        let n = 100_000;
        let mean = (0..n).map(|i| uniform(k, i)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&uniform(k, i))));
    }

    #[test]
    fn normal_has_unit_variance() {
        let k = key(1, "x");
        let n = 100_000;
        let v: Vec<f64> = (0..n).map(|i| normal(k, i)).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
    }

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
    fn permutation_is_a_permutation_and_depends_on_key() {
        let p = permutation(3, 50);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(p, permutation(4, 50));
        assert_eq!(p, permutation(3, 50));
    }
}
