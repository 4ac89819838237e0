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

mod permutation;

pub use permutation::{permute, Permutation};

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
    fn permutation_is_a_permutation_and_depends_on_key() {
        let p = permutation(3, 50);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(p, permutation(4, 50));
        assert_eq!(p, permutation(3, 50));
    }
}
