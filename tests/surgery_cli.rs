//! End-to-end tests of `hft reset`, `hft average` and `hft merge` over the committed fixtures.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use hft::io::Checkpoint;
use hft::layout::{Category, Layout};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn fx(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A fixture path as a `&'static str`, for argument lists (leaked: tests are short-lived).
fn fxs(name: &str) -> &'static str {
    Box::leak(fx(name).to_str().unwrap().to_string().into_boxed_str())
}

fn hft() -> Command {
    let mut c = Command::cargo_bin("hft").unwrap();
    c.arg("--threads").arg("2");
    c
}

/// Runs hft, asserts success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = hft().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "hft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn open(path: &Path) -> Checkpoint {
    Checkpoint::open(path).unwrap()
}

fn bytes<'a>(ck: &'a Checkpoint, name: &str) -> &'a [u8] {
    ck.bytes(ck.get(name).unwrap_or_else(|| panic!("no {name}")))
}

fn names(ck: &Checkpoint) -> Vec<String> {
    ck.tensors().iter().map(|t| t.name.clone()).collect()
}

/// BF16 elements of a tensor as raw u16.
fn elems(ck: &Checkpoint, name: &str) -> Vec<u16> {
    bytes(ck, name)
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn same_tensors(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(names(a), names(b));
    for n in names(a) {
        assert!(bytes(a, &n) == bytes(b, &n), "{n} differs");
    }
}

fn category(ck: &Checkpoint, name: &str) -> Category {
    Layout::for_checkpoint(ck).role(name).category
}

#[test]
fn reset_at_ratio_zero_is_tuned_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    for s in ["category", "layer", "model", "element", "none"] {
        let out = d.path().join(s);
        ok(&[
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
        ]);
        same_tensors(&open(&out), &open(&fx("llama-tuned")));
    }
}

#[test]
fn reset_at_ratio_one_is_base_except_embeddings_and_head() {
    let d = tempfile::tempdir().unwrap();
    let base = open(&fx("llama-base"));
    let tuned = open(&fx("llama-tuned"));
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
        let report = ok(&args);
        let o = open(&out);
        for n in names(&o) {
            let keep = matches!(category(&o, &n), Category::Embed | Category::LmHead);
            let want = if keep { &tuned } else { &base };
            assert!(bytes(&o, &n) == bytes(want, &n), "{s}: {n}");
        }
        assert!(report.contains("of parameters reset"), "{report}");
    }
    let out = d.path().join("everything");
    ok(&[
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
    ]);
    same_tensors(&open(&out), &base);
}

#[test]
fn category_reset_keeps_whole_tensors_and_follows_the_per_layer_rule() {
    let d = tempfile::tempdir().unwrap();
    // Two unrelated draws of the fixture shape, so every tensor differs and a reset tensor is
    // always visible (the tuned fixture leaves some tensors unchanged on purpose).
    let spec = hft::synth::ModelSpec::llama(64, 4, 4, 2, 128);
    let (bp, tp) = (d.path().join("base"), d.path().join("tuned"));
    let opts = hft::io::writer::WriterOptions::default();
    hft::synth::write_model(&spec, &bp, 1, None, &opts).unwrap();
    hft::synth::write_model(&spec, &tp, 3, None, &opts).unwrap();
    let base = open(&bp);
    let tuned = open(&tp);
    for seed in ["1", "7", "42"] {
        let out = d.path().join(seed);
        let report = ok(&[
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
        ]);
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
    let report = ok(&[
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
    ]);
    let (b, t, o) = (
        open(&fx("llama-base")),
        open(&fx("llama-tuned")),
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
    let tuned = open(&fx("llama-tuned"));
    let base = open(&fx("llama-base"));
    let list = "# reset these\nmodel.layers.0.self_attn.q_proj.weight\nmodel.layers.2.mlp.down_proj.weight\n\n";
    let names_file = d.path().join("names.txt");
    std::fs::write(&names_file, list).unwrap();
    let out = d.path().join("by-names");
    let report = ok(&[
        "reset",
        "--base",
        fxs("llama-base"),
        "--tuned",
        fxs("llama-tuned"),
        "--names",
        p(&names_file),
        "-o",
        p(&out),
    ]);
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
    let plan_file = d.path().join("plan.yaml");
    std::fs::write(&plan_file, plan.to_yaml()).unwrap();
    let out2 = d.path().join("by-plan");
    ok(&[
        "reset",
        "--base",
        fxs("llama-base"),
        "--tuned",
        fxs("llama-tuned"),
        "--plan",
        p(&plan_file),
        "-o",
        p(&out2),
    ]);
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
        ok(&[
            "average",
            fxs("llama-base-sharded"),
            fxs("llama-tuned-sharded"),
            "--alpha",
            alpha,
            "-o",
            p(&out),
        ]);
        same_tensors(&open(&out), &open(&fx(want)));
    }
    // Explicit weights, unnormalised, one of them zero.
    let out = d.path().join("w");
    ok(&[
        "average",
        fxs("qwen2-base"),
        fxs("qwen2-tuned"),
        "--weights",
        "0,1",
        "--no-normalize",
        "-o",
        p(&out),
    ]);
    same_tensors(&open(&out), &open(&fx("qwen2-tuned")));
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
    ok(&[
        "average",
        fxs("llama-base"),
        fxs("llama-tuned"),
        "--config",
        p(&cfg),
        "-o",
        p(&out),
    ]);
    let (b, t, o) = (
        open(&fx("llama-base")),
        open(&fx("llama-tuned")),
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
    ok(&[
        "merge",
        "--method",
        "task-arithmetic",
        "--base",
        fxs("llama-base"),
        fxs("llama-tuned"),
        "-o",
        p(&out),
    ]);
    same_tensors(&open(&out), &open(&fx("llama-tuned")));
    // Element-level half-reset by selection.
    let out = d.path().join("sel");
    ok(&[
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
    ]);
    let (b, t, o) = (
        open(&fx("llama-base")),
        open(&fx("llama-tuned")),
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
        ok(&[
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
        ]);
        assert_eq!(names(&open(&out)), names(&open(&fx("qwen2-tuned"))));
    }
}

fn diff_total_changed(a: &Path, b: &Path) -> (f64, Value) {
    let j: Value = serde_json::from_str(&ok(&["diff", "--format", "json", p(a), p(b)])).unwrap();
    (j["total"]["changed_frac"].as_f64().unwrap(), j)
}

#[test]
fn sharded_output_round_trips_through_diff() {
    let d = tempfile::tempdir().unwrap();
    let single = d.path().join("single.safetensors");
    let sharded = d.path().join("sharded");
    let common = [
        "average",
        fxs("llama-base"),
        fxs("llama-tuned"),
        "--alpha",
        "0.5",
    ];
    ok(&[&common[..], &["-o", p(&single)]].concat());
    ok(&[
        &common[..],
        &["-o", p(&sharded), "--max-shard-size", "40KB"],
    ]
    .concat());
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() > 2, "{shards:?}");
    for s in &shards {
        assert!(std::fs::metadata(sharded.join(s)).unwrap().len() <= 40_000 + 4096);
    }
    assert!(sharded.join("config.json").is_file());
    let (changed, j) = diff_total_changed(&single, &sharded);
    assert_eq!(changed, 0.0);
    assert!(
        j["only_in_a"].as_array().unwrap().is_empty()
            && j["only_in_b"].as_array().unwrap().is_empty()
    );
    // And the average really is between the inputs.
    let (changed, _) = diff_total_changed(&fx("llama-base"), &sharded);
    assert!(changed > 0.5);
    // Provenance.
    let o = open(&sharded);
    let meta = o.metadata();
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["hft_version"], env!("CARGO_PKG_VERSION"));
    assert!(meta["hft_command"].contains("average") && meta["hft_command"].contains("--alpha 0.5"));
}

#[test]
fn resized_vocabulary_and_missing_head_with_allow_missing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    ok(&[
        "average",
        fxs("llama-base"),
        fxs("llama-tied-resized"),
        "--alpha",
        "1",
        "--allow-missing",
        "-o",
        p(&out),
    ]);
    let (b, r, o) = (
        open(&fx("llama-base")),
        open(&fx("llama-tied-resized")),
        open(&out),
    );
    assert_eq!(o.get("model.embed_tokens.weight").unwrap().shape, [272, 64]);
    // alpha 1: shared rows and extra rows all from the resized model; the head from BASE.
    assert!(bytes(&o, "model.embed_tokens.weight") == bytes(&r, "model.embed_tokens.weight"));
    assert!(bytes(&o, "lm_head.weight") == bytes(&b, "lm_head.weight"));
}

/// Asserts a refused command: exit 2, a one-line error, and no output (nor temp files) left.
fn refused(args: &[&str], out: &Path, needle: &str) {
    let res = hft().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "hft {}: {err}", args.join(" "));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!out.exists(), "{} was written", out.display());
    let parent = out.parent().unwrap();
    if parent.exists() {
        for e in std::fs::read_dir(parent).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains("hft-tmp"), "temp file {name} left behind");
        }
    }
}

#[test]
fn bad_input_is_refused_with_nothing_written() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = p(&out);
    let (base, tuned) = (fx("llama-base"), fx("llama-tuned"));
    let (base, tuned) = (p(&base), p(&tuned));
    let qwen = fx("qwen2-tuned");
    let resized = fx("llama-tied-resized");
    refused(
        &[
            "reset", "--base", base, "--tuned", tuned, "--ratio", "1.5", "-o", o,
        ],
        &out,
        "outside [0, 1]",
    );
    refused(
        &["reset", "--base", base, "--tuned", p(&qwen), "-o", o],
        &out,
        "do not match",
    );
    refused(
        &["average", base, tuned, "--weights", "1,2,3", "-o", o],
        &out,
        "3 values for 2 models",
    );
    refused(
        &["average", base, tuned, "--weights", "1,-1", "-o", o],
        &out,
        "sum to zero",
    );
    refused(
        &["average", base, tuned, base, "--alpha", "0.5", "-o", o],
        &out,
        "--alpha",
    );
    refused(&["average", base, p(&qwen), "-o", o], &out, "do not match");
    refused(
        &["average", base, p(&resized), "-o", o],
        &out,
        "--allow-missing",
    );
    refused(
        &["merge", "--method", "ties", p(&qwen), "-o", o],
        &out,
        "needs --base",
    );
    refused(
        &[
            "merge", "--method", "select", "--base", base, tuned, base, "-o", o,
        ],
        &out,
        "no --base",
    );
    refused(
        &[
            "merge",
            "--method",
            "dare",
            "--base",
            base,
            tuned,
            "--density",
            "0.5",
            "-o",
            o,
        ],
        &out,
        "does not apply",
    );
    refused(
        &[
            "merge", "--method", "dare", "--base", base, tuned, "--drop", "2", "-o", o,
        ],
        &out,
        "[0, 1]",
    );
    refused(
        &["average", base, tuned, "--max-shard-size", "5XB", "-o", o],
        &out,
        "unknown unit",
    );
    refused(
        &["average", base, tuned, "--dtype", "int8", "-o", o],
        &out,
        "unknown dtype",
    );
    let cfg = d.path().join("bad.yaml");
    std::fs::write(&cfg, "default: [1, 1]\nweight: [1, 0]\n").unwrap();
    refused(
        &["average", base, tuned, "--config", p(&cfg), "-o", o],
        &out,
        "line 2",
    );
    let names_file = d.path().join("names.txt");
    std::fs::write(
        &names_file,
        "model.layers.0.self_attn.q_proj.weight\nno.such.tensor\n",
    )
    .unwrap();
    refused(
        &[
            "reset",
            "--base",
            base,
            "--tuned",
            tuned,
            "--names",
            p(&names_file),
            "-o",
            o,
        ],
        &out,
        "no.such.tensor",
    );
    // A plan made for another model.
    let q = open(&qwen);
    let plan = hft::surgery::reset::plan_from_names(&q, "", &names_file).unwrap();
    let plan_file = d.path().join("plan.yaml");
    std::fs::write(&plan_file, plan.to_yaml()).unwrap();
    refused(
        &[
            "reset",
            "--base",
            base,
            "--tuned",
            tuned,
            "--plan",
            p(&plan_file),
            "-o",
            o,
        ],
        &out,
        "plan does not fit",
    );
}

#[test]
fn output_that_is_or_is_inside_an_input_is_refused() {
    let d = tempfile::tempdir().unwrap();
    // A copy of the fixtures, so a bug could not damage the committed files.
    let base = d.path().join("base");
    let tuned = d.path().join("tuned");
    for (from, to) in [("llama-base", &base), ("llama-tuned", &tuned)] {
        std::fs::create_dir(to).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fx(from).join(f), to.join(f)).unwrap();
        }
    }
    let before = std::fs::read(tuned.join("model.safetensors")).unwrap();
    for out in [
        tuned.clone(),
        tuned.join("sub"),
        tuned.join("model.safetensors"),
        d.path().to_path_buf(),
    ] {
        let res = hft()
            .args([
                "average",
                p(&base),
                p(&tuned),
                "--alpha",
                "0.5",
                "--force",
                "-o",
                p(&out),
            ])
            .output()
            .unwrap();
        assert_eq!(res.status.code(), Some(2), "{}", out.display());
        assert!(String::from_utf8_lossy(&res.stderr).contains("input"));
    }
    assert!(!tuned.join("sub").exists());
    assert_eq!(
        std::fs::read(tuned.join("model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn existing_output_needs_force() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let args = [
        "average",
        fxs("llama-base"),
        fxs("llama-tuned"),
        "-o",
        p(&out),
    ];
    let res = hft().args(args).output().unwrap();
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("--force"));
    assert!(out.join("keep.txt").exists());
    ok(&[&args[..], &["--force"]].concat());
    assert!(out.join("model.safetensors").is_file() && !out.join("keep.txt").exists());
    // An empty directory is fine without --force.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(&[
        "average",
        fxs("llama-base"),
        fxs("llama-tuned"),
        "-o",
        p(&empty),
    ]);
}

#[test]
fn reset_keeps_the_tuned_tensor_set_with_allow_missing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    ok(&[
        "reset",
        "--base",
        fxs("llama-base"),
        "--tuned",
        fxs("llama-tied-resized"),
        "--strategy",
        "all",
        "--reset-embeddings",
        "--allow-missing",
        "-o",
        p(&out),
    ]);
    let (b, t, o) = (
        open(&fx("llama-base")),
        open(&fx("llama-tied-resized")),
        open(&out),
    );
    // TUNED's tensors only (no head copied in from BASE), at TUNED's vocabulary.
    assert_eq!(names(&o), names(&t));
    let emb = "model.embed_tokens.weight";
    assert_eq!(o.get(emb).unwrap().shape, [272, 64]);
    // Shared rows reset to BASE, the 8 new rows kept from TUNED.
    let (eo, eb, et) = (bytes(&o, emb), bytes(&b, emb), bytes(&t, emb));
    assert!(eo[..264 * 128] == eb[..] && eo[264 * 128..] == et[264 * 128..]);
    for n in names(&o).iter().filter(|n| *n != emb) {
        assert!(bytes(&o, n) == bytes(&b, n), "{n}");
    }
}

#[test]
fn dtype_flag_converts_float_tensors() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("f32.safetensors");
    ok(&[
        "average",
        fxs("llama-base"),
        fxs("llama-tuned"),
        "--alpha",
        "0",
        "--dtype",
        "f32",
        "-o",
        p(&out),
    ]);
    let (b, o) = (open(&fx("llama-base")), open(&out));
    for n in names(&o) {
        let t = o.get(&n).unwrap();
        assert_eq!(t.dtype, hft::io::DType::F32);
        let widened: Vec<u8> = elems(&b, &n)
            .iter()
            .flat_map(|x| ((*x as u32) << 16).to_le_bytes())
            .collect();
        assert!(bytes(&o, &n) == &widened[..], "{n}");
    }
}

#[test]
fn reset_by_a_plan_from_hft_plan_equals_reset_by_the_same_strategy() {
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.yaml");
    ok(&[
        "plan",
        fxs("llama-tuned"),
        "--strategy",
        "category",
        "--ratio",
        "0.5",
        "--seed",
        "11",
        "-o",
        p(&plan),
    ]);
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let common = [
        "reset",
        "--base",
        fxs("llama-base"),
        "--tuned",
        fxs("llama-tuned"),
    ];
    ok(&[&common[..], &["--plan", p(&plan), "-o", p(&a)]].concat());
    ok(&[
        &common[..],
        &["--strategy", "category", "--seed", "11", "-o", p(&b)],
    ]
    .concat());
    same_tensors(&open(&a), &open(&b));
    assert!(open(&a).metadata()["hft_command"].contains("--plan"));
}
