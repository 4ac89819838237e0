//! End-to-end tests of `hft reset`, `hft average` and `hft merge` over the committed fixtures.

use std::path::Path;

use hft::arch::{Category, Layout};
use hft::io::Checkpoint;

use crate::common::*;

/// A fixture path as a `&'static str`, for argument lists (leaked: tests are short-lived).
pub(crate) fn fxs(name: &str) -> &'static str {
    Box::leak(fixture(name).to_str().unwrap().to_string().into_boxed_str())
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub(crate) fn open(path: &Path) -> Checkpoint {
    Checkpoint::open(path).unwrap()
}

pub(crate) fn bytes<'a>(ck: &'a Checkpoint, name: &str) -> &'a [u8] {
    ck.bytes(ck.get(name).unwrap_or_else(|| panic!("no {name}")))
}

pub(crate) fn names(ck: &Checkpoint) -> Vec<String> {
    ck.tensors().iter().map(|t| t.name.clone()).collect()
}

/// BF16 elements of a tensor as raw u16.
pub(crate) fn elems(ck: &Checkpoint, name: &str) -> Vec<u16> {
    bytes(ck, name)
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

pub(crate) fn same_tensors(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(names(a), names(b));
    for n in names(a) {
        assert!(bytes(a, &n) == bytes(b, &n), "{n} differs");
    }
}

pub(crate) fn category(ck: &Checkpoint, name: &str) -> Category {
    Layout::for_checkpoint(ck).role(name).category
}

#[test]
fn reset_at_ratio_zero_is_tuned_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    for s in ["category", "layer", "model", "element", "none"] {
        let out = d.path().join(s);
        run_ok(
            hft(2),
            &[
                "reset",
                "--base",
                fxs("llama-base"),
                "--tuned",
                fxs("llama-tuned"),
                "--ratio",
                "0",
                "--strategy",
                s,
                "-o",
                p(&out),
            ],
        );
        same_tensors(&open(&out), &open(&fixture("llama-tuned")));
    }
}

#[test]
fn reset_at_ratio_one_is_base_except_embeddings_and_head() {
    let d = tempfile::tempdir().unwrap();
    let base = open(&fixture("llama-base"));
    let tuned = open(&fixture("llama-tuned"));
    for s in ["category", "layer", "model", "element", "all"] {
        let out = d.path().join(s);
        let mut args = vec![
            "reset",
            "--base",
            fxs("llama-base"),
            "--tuned",
            fxs("llama-tuned"),
            "-o",
            p(&out),
            "--strategy",
            s,
        ];
        if s != "all" {
            args.extend(["--ratio", "1"]);
        }
        let report = run_ok(hft(2), &args);
        let o = open(&out);
        for n in names(&o) {
            let keep = matches!(category(&o, &n), Category::Embed | Category::LmHead);
            let want = if keep { &tuned } else { &base };
            assert!(bytes(&o, &n) == bytes(want, &n), "{s}: {n}");
        }
        assert!(report.contains("of parameters reset"), "{report}");
    }
    let out = d.path().join("everything");
    run_ok(
        hft(2),
        &[
            "reset",
            "--base",
            fxs("llama-base"),
            "--tuned",
            fxs("llama-tuned"),
            "--strategy",
            "all",
            "--reset-embeddings",
            "--reset-head",
            "-o",
            p(&out),
        ],
    );
    same_tensors(&open(&out), &base);
}

#[test]
fn category_reset_keeps_whole_tensors_and_follows_the_per_layer_rule() {
    let d = tempfile::tempdir().unwrap();
    // Two unrelated draws of the fixture shape, so every tensor differs and a reset tensor is
    // always visible (the tuned fixture leaves some tensors unchanged on purpose).
    let spec = hft::fixtures::synth::ModelSpec::llama(64, 4, 4, 2, 128);
    let (bp, tp) = (d.path().join("base"), d.path().join("tuned"));
    let opts = hft::io::writer::WriterOptions::default();
    hft::fixtures::synth::write_model(&spec, &bp, 1, None, &opts).unwrap();
    hft::fixtures::synth::write_model(&spec, &tp, 3, None, &opts).unwrap();
    let base = open(&bp);
    let tuned = open(&tp);
    for seed in ["1", "7", "42"] {
        let out = d.path().join(seed);
        let report = run_ok(
            hft(2),
            &[
                "reset",
                "--base",
                p(&bp),
                "--tuned",
                p(&tp),
                "--strategy",
                "category",
                "--ratio",
                "0.5",
                "--seed",
                seed,
                "-o",
                p(&out),
            ],
        );
        let o = open(&out);
        let layout = Layout::for_checkpoint(&o);
        // layer -> (attention reset, ffn reset, norms reset)
        let mut per_layer = std::collections::BTreeMap::<usize, (usize, usize, usize)>::new();
        for n in names(&o) {
            assert!(
                bytes(&base, &n) != bytes(&tuned, &n),
                "{n} is the same in both draws"
            );
            let is_base = bytes(&o, &n) == bytes(&base, &n);
            assert!(
                is_base || bytes(&o, &n) == bytes(&tuned, &n),
                "{n} is a mix"
            );
            let role = layout.role(&n);
            match role.layer {
                Some(l) if is_base => {
                    let e = per_layer.entry(l).or_default();
                    if role.category.is_attention() {
                        e.0 += 1;
                    } else if role.category.is_ffn() {
                        e.1 += 1;
                    } else if role.category == Category::Norm {
                        e.2 += 1;
                    }
                }
                Some(l) => {
                    per_layer.entry(l).or_default();
                }
                None => assert!(!is_base, "{n} outside layers was reset"),
            }
        }
        assert_eq!(per_layer.len(), 4);
        let mut ffn: Vec<usize> = per_layer.values().map(|v| v.1).collect();
        ffn.sort();
        assert_eq!(ffn, [1, 1, 2, 2], "seed {seed}: FFN resets per layer");
        for (l, (attn, _, norms)) in &per_layer {
            assert_eq!(*attn, 2, "seed {seed} layer {l}: attention");
            assert_eq!(*norms, 1, "seed {seed} layer {l}: norms");
        }
        // The report lists every layer and the overall fraction.
        for l in 0..4 {
            assert!(
                report
                    .lines()
                    .any(|line| line.starts_with(&format!("{l} "))),
                "{report}"
            );
        }
        assert!(report.contains("total:"), "{report}");
    }
}

#[test]
fn element_reset_hits_the_ratio_and_mixes_only_base_and_tuned() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("el");
    let report = run_ok(
        hft(2),
        &[
            "reset",
            "--base",
            fxs("llama-base"),
            "--tuned",
            fxs("llama-tuned"),
            "--strategy",
            "element",
            "--ratio",
            "0.3",
            "--seed",
            "3",
            "-o",
            p(&out),
        ],
    );
    let (b, t, o) = (
        open(&fixture("llama-base")),
        open(&fixture("llama-tuned")),
        open(&out),
    );
    let (mut reset, mut differing, mut params, mut drawn) = (0usize, 0usize, 0usize, 0usize);
    for n in names(&o) {
        let (eb, et, eo) = (elems(&b, &n), elems(&t, &n), elems(&o, &n));
        params += eo.len();
        let in_draw = !matches!(category(&o, &n), Category::Embed | Category::LmHead);
        for i in 0..eo.len() {
            assert!(eo[i] == eb[i] || eo[i] == et[i], "{n}[{i}]");
            if !in_draw {
                assert_eq!(eo[i], et[i], "{n}[{i}]");
            } else if eb[i] != et[i] {
                differing += 1;
                reset += (eo[i] == eb[i]) as usize;
            }
        }
        if in_draw {
            drawn += eo.len();
        }
    }
    let frac = reset as f64 / differing as f64;
    assert!(
        (frac - 0.3).abs() < 0.02,
        "reset {frac} of the changed elements"
    );
    // Exactly round(0.3 n) of each tensor: the printed total is the exact sum.
    let want = 100.0 * 0.3 * drawn as f64 / params as f64;
    let line = report.lines().find(|l| l.starts_with("total:")).unwrap();
    let got: f64 = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!((got - want).abs() < 0.02, "{line} vs {want}");
}

#[test]
fn reset_with_a_plan_file_and_with_a_names_file() {
    let d = tempfile::tempdir().unwrap();
    let tuned = open(&fixture("llama-tuned"));
    let base = open(&fixture("llama-base"));
    let list = "# reset these\nmodel.layers.0.self_attn.q_proj.weight\nmodel.layers.2.mlp.down_proj.weight\n\n";
    let names_file = d.path().join("names.txt");
    std::fs::write(&names_file, list).unwrap();
    let out = d.path().join("by-names");
    let report = run_ok(
        hft(2),
        &[
            "reset",
            "--base",
            fxs("llama-base"),
            "--tuned",
            fxs("llama-tuned"),
            "--names",
            p(&names_file),
            "-o",
            p(&out),
        ],
    );
    assert!(
        report.contains("self_attn.q_proj") && report.contains("mlp.down_proj"),
        "{report}"
    );
    let o = open(&out);
    for n in names(&o) {
        let want = if list.contains(&format!("{n}\n")) {
            &base
        } else {
            &tuned
        };
        assert!(bytes(&o, &n) == bytes(want, &n), "{n}");
    }
    // The same selection as a plan file (what `hft plan` writes), with an element mask added.
    let mut plan = hft::surgery::reset::plan_from_names(&tuned, list, &names_file).unwrap();
    plan.tensors.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        hft::plan::Entry::Mask {
            mask: 0.25,
            seed: 5,
        },
    );
    // An edited plan says what it now trains (a stale summary is refused).
    let trainable: u64 = names(&tuned)
        .iter()
        .map(|n| {
            plan.entry(n)
                .unwrap()
                .trainable(&tuned.get(n).unwrap().shape)
        })
        .sum();
    plan.summary.all.trainable = trainable;
    plan.summary.all.fraction = trainable as f64 / plan.summary.all.total as f64;
    let plan_file = d.path().join("plan.yaml");
    std::fs::write(&plan_file, plan.to_yaml()).unwrap();
    let out2 = d.path().join("by-plan");
    run_ok(
        hft(2),
        &[
            "reset",
            "--base",
            fxs("llama-base"),
            "--tuned",
            fxs("llama-tuned"),
            "--plan",
            p(&plan_file),
            "-o",
            p(&out2),
        ],
    );
    let o2 = open(&out2);
    for n in names(&o2) {
        let entry = plan.entry(&n).unwrap();
        let shape = &o2.get(&n).unwrap().shape;
        let f = entry.element_fn(&n, shape);
        let (eb, et, eo) = (elems(&base, &n), elems(&tuned, &n), elems(&o2, &n));
        for i in 0..eo.len() {
            assert_eq!(eo[i], if f.trains(i) { et[i] } else { eb[i] }, "{n}[{i}]");
        }
    }
}

#[test]
fn average_at_alpha_zero_and_one_reproduces_inputs() {
    let d = tempfile::tempdir().unwrap();
    for (alpha, want) in [("0", "llama-base"), ("1", "llama-tuned")] {
        let out = d.path().join(alpha);
        // Sharded inputs, to cover the index reader on the way in.
        run_ok(
            hft(2),
            &[
                "average",
                fxs("llama-base-sharded"),
                fxs("llama-tuned-sharded"),
                "--alpha",
                alpha,
                "-o",
                p(&out),
            ],
        );
        same_tensors(&open(&out), &open(&fixture(want)));
    }
    // Explicit weights, unnormalised, one of them zero.
    let out = d.path().join("w");
    run_ok(
        hft(2),
        &[
            "average",
            fxs("qwen2-base"),
            fxs("qwen2-tuned"),
            "--weights",
            "0,1",
            "--no-normalize",
            "-o",
            p(&out),
        ],
    );
    same_tensors(&open(&out), &open(&fixture("qwen2-tuned")));
}

#[test]
fn average_config_weights_per_category() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("w.yaml");
    std::fs::write(
        &cfg,
        "default: [1, 0]\nrules:\n  - categories: [ffn]\n    weights: [0, 1]\n  - layers: \"3\"\n    weights: [0, 1]\n",
    )
    .unwrap();
    let out = d.path().join("o");
    run_ok(
        hft(2),
        &[
            "average",
            fxs("llama-base"),
            fxs("llama-tuned"),
            "--config",
            p(&cfg),
            "-o",
            p(&out),
        ],
    );
    let (b, t, o) = (
        open(&fixture("llama-base")),
        open(&fixture("llama-tuned")),
        open(&out),
    );
    let layout = Layout::for_checkpoint(&o);
    for n in names(&o) {
        let r = layout.role(&n);
        let from_tuned = r.category.is_ffn() || r.layer == Some(3);
        let want = if from_tuned { &t } else { &b };
        assert!(bytes(&o, &n) == bytes(want, &n), "{n}");
    }
}

#[test]
fn merges_run_on_fixtures() {
    let d = tempfile::tempdir().unwrap();
    // BASE + 1·(TUNED − BASE) is TUNED exactly: BF16 differences are exact in f32.
    let out = d.path().join("ta");
    run_ok(
        hft(2),
        &[
            "merge",
            "--method",
            "task-arithmetic",
            "--base",
            fxs("llama-base"),
            fxs("llama-tuned"),
            "-o",
            p(&out),
        ],
    );
    same_tensors(&open(&out), &open(&fixture("llama-tuned")));
    // Element-level half-reset by selection.
    let out = d.path().join("sel");
    run_ok(
        hft(2),
        &[
            "merge",
            "--method",
            "select",
            fxs("llama-base"),
            fxs("llama-tuned"),
            "--probs",
            "0.5,0.5",
            "--seed",
            "4",
            "-o",
            p(&out),
        ],
    );
    let (b, t, o) = (
        open(&fixture("llama-base")),
        open(&fixture("llama-tuned")),
        open(&out),
    );
    let (mut from_base, mut differing) = (0usize, 0usize);
    for n in names(&o) {
        let (eb, et, eo) = (elems(&b, &n), elems(&t, &n), elems(&o, &n));
        for i in 0..eo.len() {
            assert!(eo[i] == eb[i] || eo[i] == et[i]);
            if eb[i] != et[i] {
                differing += 1;
                from_base += (eo[i] == eb[i]) as usize;
            }
        }
    }
    assert!((from_base as f64 / differing as f64 - 0.5).abs() < 0.02);
    for m in ["ties", "dare"] {
        let out = d.path().join(m);
        run_ok(
            hft(2),
            &[
                "merge",
                "--method",
                m,
                "--base",
                fxs("qwen2-base"),
                fxs("qwen2-tuned"),
                fxs("qwen2-base"),
                "--seed",
                "1",
                "-o",
                p(&out),
            ],
        );
        assert_eq!(names(&open(&out)), names(&open(&fixture("qwen2-tuned"))));
    }
}
