//! Element-mask speed on one thread, in nanoseconds per element of a tensor, for the tensor
//! shapes of the benchmark pair (`bench/masks.sh`), one of 2^25 elements (the largest mask
//! computed whole) and Llama-3-8B's feed-forward matrix:
//!
//! - `forward`: `Permutation::select_range` over the whole tensor, the image of every index.
//! - `backward`: `Permutation::mark_preimages` of the targets below k, the bits of the mask.
//! - `mask`: what a reset does, `ElementFn::mask` then `fill` of the whole tensor; it takes
//!   the backward way up to 2^25 elements, the forward way above.
//!
//! Ratio 0.5, best of three. Run alone on a quiet machine:
//!
//! ```text
//! cargo bench --no-default-features --bench mask_speed
//! ```

use std::time::Instant;

use hft::plan::ElementFn;
use hft::rng::{self, Permutation};

fn best_ns(n: u64, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e9 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("the first pool");
    let shapes: [(&str, u64); 6] = [
        ("256 x 2048", 256 * 2048),
        ("2048 x 2048", 2048 * 2048),
        ("5632 x 2048", 5632 * 2048),
        ("2^25", 1 << 25),
        ("32000 x 2048", 32000 * 2048),
        ("14336 x 4096", 14336 * 4096),
    ];
    println!("| tensor | elements | forward | backward | mask (as reset) |");
    println!("|---|---:|---:|---:|---:|");
    for (label, n) in shapes {
        let key = rng::key(7, label);
        let perm = Permutation::new(key, n);
        let k = n / 2;
        let mut out = vec![0u8; n as usize];
        let mut bits = vec![0u64; n.div_ceil(64) as usize];
        let forward = best_ns(n, || perm.select_range(0, k, &mut out, 1, 0));
        let backward = best_ns(n, || {
            bits.fill(0);
            perm.mark_preimages(0..k, &mut bits);
        });
        let mut check = vec![0u8; n as usize];
        let mask = best_ns(n, || {
            ElementFn::mask(perm.clone(), k).fill(0, &mut check, 1, 0);
        });
        // The three ways must agree, or the timings mean nothing.
        let agree = out == check
            && out
                .iter()
                .enumerate()
                .all(|(i, &o)| (o == 1) == (bits[i / 64] >> (i % 64) & 1 == 1));
        assert!(agree, "{label}: the ways disagree");
        println!("| {label} | {n} | {forward:.2} | {backward:.2} | {mask:.2} |");
    }
}
