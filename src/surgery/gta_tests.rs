//! mergekit's generalized task arithmetic ([`super::gta`]) against a straightforward reference
//! that sorts whole tensors, through the real driver and files.

use super::gta::{Gta, Sparsify};
use super::tests::{models, run_to, values};
use super::*;
use crate::rng;

fn bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// mergekit's steps on whole tensors, in bf16, ties at the threshold taken by position.
fn reference(g: &Gta, name: &str, base: &[f64], models: &[Vec<f64>]) -> (Vec<f64>, Vec<usize>) {
    let r = bf16;
    let n = models.len();
    let len = base.len();
    let b: Vec<f32> = base.iter().map(|x| r(*x as f32)).collect();
    let mut kept = Vec::new();
    let ds: Vec<Vec<f32>> = models
        .iter()
        .zip(&g.densities)
        .enumerate()
        .map(|(i, (m, &rho))| {
            let d: Vec<f32> = m.iter().zip(&b).map(|(x, b)| r(r(*x as f32) - b)).collect();
            if rho >= 1.0 || g.sparsify == Sparsify::None {
                kept.push(len);
                return d;
            }
            let keep: Vec<bool> = match g.sparsify {
                Sparsify::Magnitude if rho <= 0.0 => vec![false; len],
                Sparsify::Magnitude => {
                    let k = ((rho * len as f64).floor() as usize).max(1);
                    let mut order: Vec<usize> = (0..len).collect();
                    order.sort_by(|&x, &y| d[y].abs().total_cmp(&d[x].abs()).then(x.cmp(&y)));
                    let mut keep = vec![false; len];
                    order[..k.min(len)].iter().for_each(|&j| keep[j] = true);
                    keep
                }
                _ => {
                    let key = rng::key(g.seed, name);
                    (0..len)
                        .map(|j| rng::uniform(key, (j * n + i) as u64) < rho)
                        .collect()
                }
            };
            kept.push(keep.iter().filter(|k| **k).count());
            let masked: Vec<f32> = d
                .iter()
                .zip(&keep)
                .map(|(x, k)| if *k { *x } else { 0.0 })
                .collect();
            let before = r(d.iter().map(|x| x.abs() as f64).sum::<f64>() as f32);
            let after = r(masked.iter().map(|x| x.abs() as f64).sum::<f64>() as f32);
            if g.rescale && before >= 1e-7 && after >= 1e-7 {
                let f = r(before / after);
                masked.iter().map(|x| r(x * f)).collect()
            } else {
                masked
            }
        })
        .collect();
    let w: Vec<f32> = g.weights.iter().map(|x| r(*x as f32)).collect();
    let out = (0..len)
        .map(|j| {
            let wd: Vec<f32> = (0..n).map(|i| r(ds[i][j] * w[i])).collect();
            let sign = if wd.iter().sum::<f32>() >= 0.0 {
                1.0
            } else {
                -1.0
            };
            let agree = |x: f32| !g.consensus || (x != 0.0 && x.signum() == sign);
            let mixed = r((0..n).filter(|&i| agree(wd[i])).map(|i| wd[i]).sum());
            let mut div = r((0..n).filter(|&i| agree(wd[i])).map(|i| w[i]).sum());
            if div == 0.0 || (!g.consensus && div.abs() < 1e-8) {
                div = 1.0;
            }
            let mut m = if g.normalize { r(mixed / div) } else { mixed };
            if g.lambda != 1.0 {
                m = r(m * g.lambda as f32);
            }
            r(b[j] + m) as f64
        })
        .collect();
    (out, kept)
}

fn gta(sparsify: Sparsify, consensus: bool, normalize: bool, rescale: bool) -> Gta {
    Gta {
        weights: vec![0.7, 0.3, 1.1],
        densities: vec![0.3, 0.5, 1.0],
        sparsify,
        consensus,
        normalize,
        rescale,
        lambda: 0.9,
        seed: 5,
        dtype: Some(DType::BF16),
    }
}

#[test]
fn mergekit_methods_match_a_whole_tensor_reference_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (cks, shapes) = models(dir.path());
    let inputs: Vec<&Checkpoint> = cks.iter().collect();
    for g in [
        gta(Sparsify::None, false, false, false), // task_arithmetic
        gta(Sparsify::Magnitude, true, true, false), // ties
        gta(Sparsify::Magnitude, true, false, true), // ties, rescaled, not normalised
        gta(Sparsify::Random, false, false, true), // dare_linear
        gta(Sparsify::Random, true, false, true), // dare_ties
    ] {
        g.check().unwrap();
        let out = run_to(dir.path(), &inputs, 1, &g);
        for (name, _) in &shapes {
            let ms: Vec<Vec<f64>> = (1..4).map(|i| values(&cks[i], name)).collect();
            let (want, kept) = reference(&g, name, &values(&cks[0], name), &ms);
            let got = values(&out, name);
            let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(bad, 0, "{g:?} {name}: {bad} of {} differ", want.len());
            if g.sparsify == Sparsify::Magnitude {
                // Exactly max(1, floor(density * len)) entries, ties at the threshold included.
                let len = want.len() as f64;
                assert_eq!(kept[0], ((0.3 * len).floor() as usize).max(1), "{name}");
                assert_eq!(kept[1], ((0.5 * len).floor() as usize).max(1), "{name}");
            }
        }
    }
}

#[test]
fn mergekit_edge_densities_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let (cks, shapes) = models(dir.path());
    let inputs: Vec<&Checkpoint> = cks.iter().collect();
    // Density 0 keeps nothing (the output is BASE in bf16); a density so small that
    // floor(density * len) is 0 still keeps one entry, as mergekit 0.1.5 does.
    let mut g = gta(Sparsify::Magnitude, true, true, false);
    g.densities = vec![0.0, 1e-9, 0.0];
    let out = run_to(dir.path(), &inputs, 1, &g);
    for (name, _) in &shapes {
        let ms: Vec<Vec<f64>> = (1..4).map(|i| values(&cks[i], name)).collect();
        let (want, kept) = reference(&g, name, &values(&cks[0], name), &ms);
        assert_eq!(values(&out, name), want, "{name}");
        assert_eq!(kept[1], 1);
    }
    for (field, bad) in [("weight", f64::NAN), ("density", f64::INFINITY)] {
        let mut g = gta(Sparsify::None, false, false, false);
        if field == "weight" {
            g.weights[0] = bad;
        } else {
            g.densities[1] = bad;
        }
        let e = g.check().unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
}
