//! Every method against a straightforward f64 reference, through the real driver and files.

use std::path::Path;

use indexmap::IndexMap;
use proptest::prelude::*;

use super::average::{AverageConfig, Linear};
use super::merge::{Select, TaskArithmetic, Ties};
use super::reset::{Reset, BASE, TUNED};
use super::*;
use crate::plan::{mask_count, Entry, Fingerprint, Plan, Summary, FORMAT_VERSION};
use crate::rng;

/// Spans several chunks and two blocks, with a ragged tail.
const BIG: usize = BLOCK + 2 * CHUNK + 77;

fn write_ck(
    dir: &Path,
    name: &str,
    dt: DType,
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
) -> Checkpoint {
    let specs = tensors
        .iter()
        .map(|(n, s, _)| TensorSpec {
            name: n.to_string(),
            dtype: dt,
            shape: s.clone(),
        })
        .collect();
    let path = dir.join(name);
    let w = CheckpointWriter::create(&path, specs, &WriterOptions::default()).unwrap();
    for (i, (_, _, v)) in tensors.iter().enumerate() {
        let mut bytes = vec![0u8; v.len() * dtype::elem_bytes(dt).unwrap()];
        dtype::encode_f32(dt, v, &mut bytes);
        w.write(i, 0, &bytes).unwrap();
    }
    w.finish().unwrap();
    Checkpoint::open(&path).unwrap()
}

pub(super) fn values(ck: &Checkpoint, name: &str) -> Vec<f64> {
    let t = ck.get(name).unwrap();
    let mut v = vec![0f64; t.numel()];
    dtype::decode_f64(t.dtype, ck.bytes(t), &mut v);
    v
}

pub(super) fn run_to(
    dir: &Path,
    inputs: &[&Checkpoint],
    primary: usize,
    c: &dyn Combine,
) -> Checkpoint {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = Output::new(dir.join(format!("out-{k}")));
    let path = run(inputs, primary, c, &out, &Progress::hidden())
        .unwrap()
        .path;
    Checkpoint::open(path).unwrap()
}

/// Pseudo-random multiples of 1/64 in [-4, 4): exact in f32, so differences are exact too and
/// the f64 reference sees the very values the kernels see.
fn dyadic(seed: u64, n: usize) -> Vec<f32> {
    let k = rng::key(seed, "dyadic");
    (0..n)
        .map(|i| ((rng::draw(k, i as u64) % 512) as f32 - 256.0) / 64.0)
        .collect()
}

/// Three fine-tunes of one base: one big tensor and one small.
pub(super) fn models(dir: &Path) -> (Vec<Checkpoint>, Vec<(&'static str, usize)>) {
    let shapes = [("big", BIG), ("small", 1000)];
    let cks = (0..4)
        .map(|m| {
            let ts: Vec<(&str, Vec<usize>, Vec<f32>)> = shapes
                .iter()
                .map(|&(n, len)| {
                    let base = dyadic(100, len);
                    let v = if m == 0 {
                        base
                    } else {
                        // Sparse-ish task vectors, so TIES sees zeros and ties.
                        let d = dyadic(m as u64, len);
                        base.iter()
                            .zip(d)
                            .enumerate()
                            .map(|(i, (b, d))| if i % (m + 2) == 0 { *b } else { b + d })
                            .collect()
                    };
                    (n, vec![len], v)
                })
                .collect();
            write_ck(dir, &format!("m{m}.safetensors"), DType::F32, &ts)
        })
        .collect();
    (cks, shapes.to_vec())
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs reference {y}"
        );
    }
}

#[test]
fn task_arithmetic_matches_f64_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (cks, shapes) = models(dir.path());
    let inputs: Vec<&Checkpoint> = cks.iter().collect();
    let (w, lambda) = ([0.5, -0.25, 1.5], 0.8);
    let out = run_to(
        dir.path(),
        &inputs,
        1,
        &TaskArithmetic::new(w.to_vec(), lambda),
    );
    for (name, _) in shapes {
        let b = values(&cks[0], name);
        let ms: Vec<Vec<f64>> = (1..4).map(|i| values(&cks[i], name)).collect();
        let want: Vec<f64> = (0..b.len())
            .map(|j| b[j] + lambda * (0..3).map(|i| w[i] * (ms[i][j] - b[j])).sum::<f64>())
            .collect();
        close(&values(&out, name), &want, name);
    }
}

#[test]
fn dare_matches_f64_reference_and_drops_at_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (cks, shapes) = models(dir.path());
    let inputs: Vec<&Checkpoint> = cks.iter().collect();
    let (p, seed) = (0.7, 11u64);
    let m = TaskArithmetic::dare(vec![1.0, 1.0, 0.5], 1.0, p, seed).unwrap();
    let out = run_to(dir.path(), &inputs, 1, &m);
    for (name, _) in shapes {
        let b = values(&cks[0], name);
        let ms: Vec<Vec<f64>> = (1..4).map(|i| values(&cks[i], name)).collect();
        let key = rng::key(seed, name);
        let mut dropped = 0usize;
        let want: Vec<f64> = (0..b.len())
            .map(|j| {
                let mut acc = 0.0;
                for (i, w) in [1.0, 1.0, 0.5].iter().enumerate() {
                    if rng::uniform(key, (j * 3 + i) as u64) >= p {
                        acc += w * (ms[i][j] - b[j]) / (1.0 - p);
                    } else {
                        dropped += 1;
                    }
                }
                b[j] + acc
            })
            .collect();
        close(&values(&out, name), &want, name);
        let rate = dropped as f64 / (3 * b.len()) as f64;
        assert!((rate - p).abs() < 0.05, "{name}: drop rate {rate}");
    }
}

/// TIES, written the obvious way: sort magnitudes to find each threshold.
fn ties_reference(b: &[f64], ms: &[Vec<f64>], w: &[f64], lambda: f64, density: f64) -> Vec<f64> {
    let n = b.len();
    let k = mask_count(density, n as u64) as usize;
    let trimmed: Vec<Vec<f64>> = ms
        .iter()
        .map(|m| {
            let d: Vec<f64> = m.iter().zip(b).map(|(x, y)| x - y).collect();
            let mut mags: Vec<f64> = d.iter().map(|x| x.abs()).collect();
            mags.sort_by(|x, y| y.partial_cmp(x).unwrap());
            d.iter()
                .map(|x| {
                    if k > 0 && x.abs() >= mags[k - 1] {
                        *x
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    (0..n)
        .map(|j| {
            let sum: f64 = (0..ms.len()).map(|i| w[i] * trimmed[i][j]).sum();
            let sign = if sum >= 0.0 { 1.0 } else { -1.0 };
            let (mut num, mut den) = (0.0, 0.0);
            for i in 0..ms.len() {
                let wd = w[i] * trimmed[i][j];
                if wd != 0.0 && wd.signum() == sign {
                    num += wd;
                    den += w[i];
                }
            }
            b[j] + lambda * if den != 0.0 { num / den } else { 0.0 }
        })
        .collect()
}

#[test]
fn ties_matches_f64_reference_at_several_densities() {
    let dir = tempfile::tempdir().unwrap();
    let (cks, shapes) = models(dir.path());
    let inputs: Vec<&Checkpoint> = cks.iter().collect();
    let w = [1.0, 0.5, 2.0];
    for density in [0.0, 0.1, 0.2, 0.5, 1.0] {
        let out = run_to(
            dir.path(),
            &inputs,
            1,
            &Ties::new(w.to_vec(), 0.9, density).unwrap(),
        );
        for (name, _) in &shapes {
            let b = values(&cks[0], name);
            let ms: Vec<Vec<f64>> = (1..4).map(|i| values(&cks[i], name)).collect();
            let want = ties_reference(&b, &ms, &w, 0.9, density);
            close(
                &values(&out, name),
                &want,
                &format!("{name} density {density}"),
            );
        }
    }
}

#[test]
fn radix_threshold_equals_sorted_kth_largest() {
    let dir = tempfile::tempdir().unwrap();
    let n = CHUNK * 3 + 5;
    let base = vec![0f32; n];
    let k = rng::key(5, "r");
    // Wide dynamic range, both signs, many exact ties.
    let d: Vec<f32> = (0..n)
        .map(|i| {
            let u = rng::uniform(k, i as u64);
            let s = if i % 2 == 0 { 1.0 } else { -1.0 };
            if i % 7 == 0 {
                s * 0.5
            } else {
                s * (u as f32 * 30.0 - 15.0).exp2()
            }
        })
        .collect();
    let b = write_ck(
        dir.path(),
        "b.safetensors",
        DType::F32,
        &[("t", vec![n], base)],
    );
    let m = write_ck(
        dir.path(),
        "m.safetensors",
        DType::F32,
        &[("t", vec![n], d.clone())],
    );
    let view = TensorView {
        name: "t",
        shape: &[n],
        numel: n,
        role: Layout::detect(None, std::iter::empty()).role("t"),
        inputs: vec![(&b, b.get("t").unwrap()), (&m, m.get("t").unwrap())],
    };
    let mut sorted: Vec<u32> = d.iter().map(|x| radix::abs_bits(*x)).collect();
    sorted.sort_unstable_by(|x, y| y.cmp(x));
    for kk in [0u64, 1, 2, 100, n as u64 / 2, n as u64 - 1, n as u64] {
        let th = radix::delta_thresholds(&view, &[kk])[0];
        if kk == 0 {
            assert_eq!(th, None);
        } else {
            assert_eq!(th, Some(sorted[kk as usize - 1]), "k = {kk}");
        }
    }
}

#[test]
fn select_matches_reference_draws_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (cks, shapes) = models(dir.path());
    let inputs: Vec<&Checkpoint> = cks[1..].iter().collect();
    let probs = [0.2, 0.5, 0.3];
    let out = run_to(dir.path(), &inputs, 0, &Select::new(&probs, 9).unwrap());
    for (name, _) in shapes {
        let ms: Vec<Vec<f64>> = (1..4).map(|i| values(&cks[i], name)).collect();
        let key = rng::key(9, name);
        let mut counts = [0usize; 3];
        let want: Vec<f64> = (0..ms[0].len())
            .map(|j| {
                let u = rng::uniform(key, j as u64);
                let i = if u < 0.2 {
                    0
                } else if u < 0.7 {
                    1
                } else {
                    2
                };
                counts[i] += 1;
                ms[i][j]
            })
            .collect();
        assert_eq!(values(&out, name), want, "{name}");
        if name == "big" {
            let n = want.len() as f64;
            for (c, p) in counts.iter().zip(probs) {
                assert!((*c as f64 / n - p).abs() < 0.01);
            }
        }
    }
}

#[test]
fn linear_average_matches_f64_reference_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let (cks, shapes) = models(dir.path());
    let inputs: Vec<&Checkpoint> = cks.iter().collect();
    let w = [0.1, 0.2, 0.3, 0.4];
    let mut out = Output::new(dir.path().join("avg"));
    out.dtype = Some(DType::BF16);
    let lin = Linear::new(w.to_vec(), true).unwrap();
    let path = run(&inputs, 0, &lin, &out, &Progress::hidden())
        .unwrap()
        .path;
    let got = Checkpoint::open(path).unwrap();
    for (name, _) in shapes {
        let ms: Vec<Vec<f64>> = (0..4).map(|i| values(&cks[i], name)).collect();
        let g = values(&got, name);
        for j in 0..g.len() {
            let want: f64 = (0..4).map(|i| w[i] * ms[i][j]).sum();
            // Within half a BF16 step (8 significant bits) of the exact mean, plus f32 slack.
            let step = (want.abs().max(1e-30)).log2().floor().exp2() / 128.0;
            assert!(
                (g[j] - want).abs() <= step / 2.0 + 1e-6,
                "{name}[{j}]: {} vs {want}",
                g[j]
            );
        }
    }
}

#[test]
fn average_config_rules_pick_weights_per_layer_and_category() {
    let yaml = "default: [0.5, 0.5]\nrules:\n  - layers: \"0-1\"\n    categories: [attention]\n    weights: [1, 0]\n  - categories: [ffn_up]\n    weights: [0, 3]\n";
    let cfg = AverageConfig::parse(yaml, Path::new("w.yaml")).unwrap();
    let lin = Linear::with_config(vec![1.0, 1.0], Some((&cfg, Path::new("w.yaml"))), true).unwrap();
    let layout = Layout::detect(
        None,
        [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
        ],
    );
    let w = |n: &str| lin.weights_for(&layout.role(n)).to_vec();
    assert_eq!(w("model.layers.1.self_attn.k_proj.weight"), [1.0, 0.0]);
    assert_eq!(w("model.layers.2.self_attn.k_proj.weight"), [0.5, 0.5]);
    assert_eq!(w("model.layers.2.mlp.up_proj.weight"), [0.0, 1.0]);
    assert_eq!(w("model.norm.weight"), [0.5, 0.5]);
}

#[test]
fn average_config_errors_name_the_line() {
    let p = Path::new("w.yaml");
    let unknown = AverageConfig::parse("default: [1, 1]\nrulez: []\n", p)
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("rulez") && unknown.contains("line 2"),
        "{unknown}"
    );
    assert!(!unknown.contains('\n'), "{unknown}");
    let cat = AverageConfig::parse(
        "rules:\n  - categories: [atention]\n    weights: [1, 0]\n",
        p,
    )
    .unwrap_err()
    .to_string();
    assert!(cat.contains("atention") && cat.contains("line 2"), "{cat}");
    let layers = AverageConfig::parse("rules:\n  - layers: \"3-1\"\n    weights: [1, 0]\n", p)
        .unwrap_err()
        .to_string();
    assert!(layers.contains("3-1"), "{layers}");
    let cfg = AverageConfig::parse("rules:\n  - layers: 2\n    weights: [1, 0, 1]\n", p).unwrap();
    let count = Linear::with_config(vec![1.0, 1.0], Some((&cfg, p)), true)
        .unwrap_err()
        .to_string();
    assert!(
        count.contains("line 3") && count.contains("3 weights"),
        "{count}"
    );
    let cfg = AverageConfig::parse("default: [1, -1]\n", p).unwrap();
    let zero = Linear::with_config(vec![1.0, 1.0], Some((&cfg, p)), true)
        .unwrap_err()
        .to_string();
    assert!(zero.contains("sum to zero"), "{zero}");
}

fn plan_of(entries: &[(&str, Entry)]) -> Plan {
    let tensors: IndexMap<String, Entry> = entries
        .iter()
        .map(|(n, e)| (n.to_string(), e.clone()))
        .collect();
    Plan {
        format: FORMAT_VERSION,
        strategy: "test".into(),
        ratio: 0.5,
        seed: 0,
        stage: 0,
        model: Fingerprint {
            family: "unknown".into(),
            tensors: tensors.len(),
            params: 0,
            hash: String::new(),
        },
        notes: vec![],
        options: IndexMap::new(),
        schedule: None,
        summary: Summary::default(),
        tensors,
    }
}

#[test]
fn reset_follows_a_hand_built_plan_element_by_element() {
    let dir = tempfile::tempdir().unwrap();
    let shape = vec![BIG / 64, 64];
    let n = BIG / 64 * 64;
    let t = |seed| -> Vec<(&str, Vec<usize>, Vec<f32>)> {
        ["mask", "rows", "train", "freeze"]
            .iter()
            .map(|&nm| (nm, shape.clone(), dyadic(seed + nm.len() as u64, n)))
            .collect()
    };
    let base = write_ck(dir.path(), "base", DType::BF16, &t(1));
    let tuned = write_ck(dir.path(), "tuned", DType::BF16, &t(2));
    let plan = plan_of(&[
        ("mask", Entry::Mask { mask: 0.3, seed: 4 }),
        (
            "rows",
            Entry::Rows {
                axis: 0,
                rows: vec![[3, 10], [100, 101]],
            },
        ),
        ("train", Entry::TRAIN),
        ("freeze", Entry::FREEZE),
    ]);
    let out = run_to(
        dir.path(),
        &[&base, &tuned],
        TUNED,
        &Reset { plan: plan.clone() },
    );
    for (name, entry) in &plan.tensors {
        let f = entry.element_fn(name, &shape);
        let (b, tu, o) = (
            values(&base, name),
            values(&tuned, name),
            values(&out, name),
        );
        let kept = (0..n).filter(|&i| f.trains(i)).count();
        assert_eq!(kept as u64, entry.trainable(&shape), "{name}");
        for i in 0..n {
            assert_eq!(o[i], if f.trains(i) { tu[i] } else { b[i] }, "{name}[{i}]");
        }
    }
    assert_eq!(BASE, 0);
}

fn bits_ck(dir: &Path, name: &str, dt: DType, raw: &[u16]) -> Checkpoint {
    // Arbitrary bit patterns (NaN payloads, infinities, subnormals) must survive a copy.
    let specs = vec![TensorSpec {
        name: "w".into(),
        dtype: dt,
        shape: vec![raw.len()],
    }];
    let path = dir.join(name);
    let w = CheckpointWriter::create(&path, specs, &WriterOptions::default()).unwrap();
    let bytes: Vec<u8> = raw.iter().flat_map(|x| x.to_le_bytes()).collect();
    w.write(0, 0, &bytes).unwrap();
    w.finish().unwrap();
    Checkpoint::open(&path).unwrap()
}

fn raw(ck: &Checkpoint) -> Vec<u8> {
    ck.bytes(ck.get("w").unwrap()).to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn reset_at_ratio_zero_is_tuned_bit_for_bit(
        a in proptest::collection::vec(any::<u16>(), 1..3000),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let b: Vec<u16> = a.iter().map(|x| x.rotate_left(3)).collect();
        let base = bits_ck(dir.path(), "b", DType::BF16, &b);
        let tuned = bits_ck(dir.path(), "t", DType::BF16, &a);
        // Element masks that train everything, and a whole-tensor train entry.
        for e in [Entry::Mask { mask: 1.0, seed }, Entry::TRAIN] {
            let out = run_to(dir.path(), &[&base, &tuned], TUNED, &Reset { plan: plan_of(&[("w", e)]) });
            prop_assert_eq!(raw(&out), raw(&tuned));
        }
        let out = run_to(dir.path(), &[&base, &tuned], TUNED, &Reset { plan: plan_of(&[("w", Entry::Mask { mask: 0.0, seed })]) });
        prop_assert_eq!(raw(&out), raw(&base));
    }

    #[test]
    fn average_at_alpha_zero_and_one_reproduces_inputs(
        a in proptest::collection::vec(any::<u16>(), 1..3000),
        b in proptest::collection::vec(any::<u16>(), 3000),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let m1 = bits_ck(dir.path(), "1", DType::F16, &a);
        let m2 = bits_ck(dir.path(), "2", DType::F16, &b[..a.len()]);
        for (alpha, want) in [(0.0, &m1), (1.0, &m2)] {
            let lin = Linear::new(vec![1.0 - alpha, alpha], true).unwrap();
            let out = run_to(dir.path(), &[&m1, &m2], 0, &lin);
            prop_assert_eq!(raw(&out), raw(want));
        }
    }

    #[test]
    fn select_with_certain_probabilities_is_that_model(
        a in proptest::collection::vec(any::<u16>(), 1..3000),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let b: Vec<u16> = a.iter().map(|x| !x).collect();
        let m1 = bits_ck(dir.path(), "1", DType::BF16, &a);
        let m2 = bits_ck(dir.path(), "2", DType::BF16, &b);
        let out = run_to(dir.path(), &[&m1, &m2], 0, &Select::new(&[1.0, 0.0], seed).unwrap());
        prop_assert_eq!(raw(&out), raw(&m1));
        let out = run_to(dir.path(), &[&m1, &m2], 0, &Select::new(&[0.0, 2.0], seed).unwrap());
        prop_assert_eq!(raw(&out), raw(&m2));
    }
}

#[test]
fn integer_tensors_are_copied_when_identical_and_refused_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, ids: &[i64]| {
        let specs = vec![
            TensorSpec {
                name: "position_ids".into(),
                dtype: DType::I64,
                shape: vec![ids.len()],
            },
            TensorSpec {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![4],
            },
        ];
        let path = dir.path().join(name);
        let w = CheckpointWriter::create(&path, specs, &WriterOptions::default()).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write(0, 0, &bytes).unwrap();
        w.write(1, 0, &[0u8; 16]).unwrap();
        w.finish().unwrap();
        Checkpoint::open(&path).unwrap()
    };
    let a = make("a", &[0, 1, 2, 3]);
    let b = make("b", &[0, 1, 2, 3]);
    let c = make("c", &[0, 1, 2, 4]);
    let lin = Linear::new(vec![0.5, 0.5], true).unwrap();
    let out = run_to(dir.path(), &[&a, &b], 0, &lin);
    assert_eq!(out.get("position_ids").unwrap().dtype, DType::I64);
    assert_eq!(
        out.bytes(out.get("position_ids").unwrap()),
        a.bytes(a.get("position_ids").unwrap())
    );
    let dest = dir.path().join("refused");
    let err = run(&[&a, &c], 0, &lin, &Output::new(&dest), &Progress::hidden()).unwrap_err();
    assert!(err.to_string().contains("position_ids"), "{err}");
    assert_eq!(err.exit_code(), 2);
    assert!(!dest.exists());
}
