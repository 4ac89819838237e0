//! Which elements of one tensor train: the per-element view of a plan entry, as surgery and
//! the trainer read it (one element, or a range of them as selection bytes).

use std::ops::Range;

use rayon::prelude::*;

use crate::rng::Permutation;

/// Masks of up to this many elements are computed whole when their [`ElementFn`] is made,
/// backwards from their smaller side ([`Permutation::mark_preimages`]): a bit per element,
/// 4 MiB at most. Measured on one thread (`cargo bench --no-default-features --bench
/// mask_speed`), that is 1.3-1.8x faster than going forwards up to 2^25 elements; above, the
/// bits no longer stay in cache and the forward evaluation of each range as it is read
/// ([`Permutation::select_range`]) wins.
const WHOLE_MASK: u64 = 1 << 25;

/// Membership test of one element in the trainable set of a tensor.
#[derive(Debug, Clone)]
pub enum ElementFn {
    Const(bool),
    Mask {
        /// `rng::permute(key, n, ·)` tabulated: the element trains when it maps below `k`.
        perm: Permutation,
        k: u64,
        /// The whole mask, when it was computed at once (see [`WHOLE_MASK`]).
        bits: Option<MaskBits>,
    },
    Rows {
        inner: usize,
        along: usize,
        hit: Vec<bool>,
    },
}

/// A whole mask as bits: bit `i % 64` of `words[i / 64]` is set for the elements of the side
/// that was computed, the training one when `trains`, else the frozen one.
#[derive(Debug, Clone)]
pub struct MaskBits {
    words: Vec<u64>,
    trains: bool,
}

impl ElementFn {
    /// The mask of the `k` elements of `0..n` that `perm` maps below `k`.
    pub fn mask(perm: Permutation, k: u64) -> Self {
        let n = perm.n();
        let bits = (k > 0 && k < n && n <= WHOLE_MASK).then(|| {
            // The smaller side: the training elements, or the frozen ones.
            let trains = k <= n - k;
            let targets = if trains { 0..k } else { k..n };
            MaskBits {
                words: preimage_bits(&perm, targets),
                trains,
            }
        });
        ElementFn::Mask { perm, k, bits }
    }

    #[inline]
    pub fn trains(&self, i: usize) -> bool {
        match self {
            ElementFn::Const(b) => *b,
            ElementFn::Mask { bits: Some(b), .. } => {
                (b.words[i / 64] >> (i % 64) & 1 == 1) == b.trains
            }
            ElementFn::Mask { perm, k, .. } => {
                *k >= perm.n() || (*k > 0 && perm.apply(i as u64) < *k)
            }
            ElementFn::Rows { inner, along, hit } => hit[(i / inner) % along],
        }
    }

    /// `out[j]` = `train` where element `start + j` trains, `freeze` where it does not: the
    /// answers of [`Self::trains`], with masks read from their bits or evaluated a batch at a
    /// time ([`Permutation::select_range`]), several times faster.
    pub fn fill(&self, start: usize, out: &mut [u8], train: u8, freeze: u8) {
        match self {
            ElementFn::Mask { bits: Some(b), .. } => {
                let (set, clear) = if b.trains {
                    (train, freeze)
                } else {
                    (freeze, train)
                };
                spread_bits(&b.words, start, out, set, clear)
            }
            ElementFn::Mask { perm, k, .. } if *k > 0 && *k < perm.n() => {
                perm.select_range(start as u64, *k, out, train, freeze)
            }
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = if self.trains(start + j) {
                        train
                    } else {
                        freeze
                    };
                }
            }
        }
    }
}

/// The bits of the indices that `perm` maps into `targets`, computed in parallel: each
/// thread marks its share of the targets in its own copy (they land anywhere in the tensor),
/// and the copies are OR-ed. At most one copy per thread is alive: n / 8 bytes each.
fn preimage_bits(perm: &Permutation, targets: Range<u64>) -> Vec<u64> {
    let words = perm.n().div_ceil(64) as usize;
    let count = targets.end - targets.start;
    // Shares of at least 2^16 targets, so that a small mask does not pay for many copies.
    let parts = (rayon::current_num_threads() as u64)
        .min(count.div_ceil(1 << 16))
        .max(1);
    (0..parts)
        .into_par_iter()
        .map(|p| {
            let lo = targets.start + count * p / parts;
            let hi = targets.start + count * (p + 1) / parts;
            let mut w = vec![0u64; words];
            perm.mark_preimages(lo..hi, &mut w);
            w
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x |= y);
            a
        })
        .unwrap_or_else(|| vec![0; words])
}

/// `out[j]` = `set` where bit `start + j` is set, else `clear`, without a branch (a mask
/// alternates at random: a branch would mispredict half the time). Eight bits at a time: a
/// multiply copies a byte of bits into each of eight bytes, and each byte keeps its own bit
/// (portable code; the release build targets plain x86-64, without per-lane shifts).
fn spread_bits(words: &[u64], start: usize, out: &mut [u8], set: u8, clear: u8) {
    let flip = set ^ clear;
    let one = |i: usize| clear ^ (flip & 0u8.wrapping_sub((words[i / 64] >> (i % 64)) as u8 & 1));
    // Up to the next multiple of 8, one at a time.
    let head = ((8 - start % 8) % 8).min(out.len());
    let (first, rest) = out.split_at_mut(head);
    for (j, o) in first.iter_mut().enumerate() {
        *o = one(start + j);
    }
    let start = start + head;
    let (clear8, flip8) = (u64::from(clear) * LANES, u64::from(flip) * LANES);
    let done = start + 8 * (rest.len() / 8);
    let mut eights = rest.chunks_exact_mut(8);
    for (c, o) in (&mut eights).enumerate() {
        let i = start + 8 * c;
        let byte = (words[i / 64] >> (i % 64)) & 0xFF;
        // Byte q of `picked` is bit q of `byte`, in place (0x01, 0x02, ..., 0x80) or zero.
        let picked = (byte * LANES) & 0x8040_2010_0804_0201;
        // 0xFF in each byte that is not zero (adding 0x7F carries into bit 7, never further).
        let full = (((picked + 0x7F * LANES) & (0x80 * LANES)) >> 7) * 0xFF;
        o.copy_from_slice(&(clear8 ^ (flip8 & full)).to_le_bytes());
    }
    for (j, o) in eights.into_remainder().iter_mut().enumerate() {
        *o = one(done + j);
    }
}

/// `0x0101_0101_0101_0101`: one in each byte.
const LANES: u64 = u64::MAX / 0xFF;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    #[test]
    fn whole_and_ranged_masks_agree_with_permute() {
        for (n, ratio) in [
            (1u64, 0.5),
            (97, 0.3),
            (4097, 0.5),
            (100_000, 0.7),
            (100_000, 0.02),
        ] {
            let key = rng::key(3, "w");
            let k = crate::plan::mask_count(ratio, n);
            let f = ElementFn::mask(Permutation::new(key, n), k);
            assert!(matches!(&f, ElementFn::Mask { bits: Some(_), .. }) == (k > 0 && k < n));
            let start = n / 3 + (n > 10) as u64;
            let mut out = vec![9u8; (n - start) as usize];
            f.fill(start as usize, &mut out, 1, 0);
            for (j, &o) in out.iter().enumerate() {
                let i = start + j as u64;
                let want = rng::permute(key, n, i) < k;
                assert_eq!(o == 1, want, "n={n} i={i}");
                assert_eq!(f.trains(i as usize), want, "n={n} i={i}");
            }
            assert_eq!((0..n as usize).filter(|&i| f.trains(i)).count() as u64, k);
        }
    }
}
