//! End-to-end tests of what the surgery commands refuse and how they write: bad input refused
//! with nothing written, outputs that touch inputs, `--force`, `--dtype`, and resets that must
//! equal each other.

use std::path::Path;

use serde_json::Value;

use crate::common::*;
use crate::surgery::{bytes, elems, fxs, names, open, p, same_tensors};

/// Asserts a refused command: exit 2, a one-line error, and no output (nor temp files) left.
fn refused(args: &[&str], out: &Path, needle: &str) {
    let res = hft(2).args(args).output().unwrap();
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
    let (base, tuned) = (fixture("llama-base"), fixture("llama-tuned"));
    let (base, tuned) = (p(&base), p(&tuned));
    let qwen = fixture("qwen2-tuned");
    let resized = fixture("llama-tied-resized");
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
        "--base: method `ties` needs a BASE",
    );
    refused(
        &[
            "merge", "--method", "select", "--base", base, tuned, base, "-o", o,
        ],
        &out,
        "takes no BASE",
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
            std::fs::copy(fixture(from).join(f), to.join(f)).unwrap();
        }
    }
    let before = std::fs::read(tuned.join("model.safetensors")).unwrap();
    for out in [
        tuned.clone(),
        tuned.join("sub"),
        tuned.join("model.safetensors"),
        d.path().to_path_buf(),
    ] {
        let res = hft(2)
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
fn reset_keeps_the_tuned_tensor_set_with_allow_missing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    run_ok(
        hft(2),
        &[
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
        ],
    );
    let (b, t, o) = (
        open(&fixture("llama-base")),
        open(&fixture("llama-tied-resized")),
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
    run_ok(
        hft(2),
        &[
            "average",
            fxs("llama-base"),
            fxs("llama-tuned"),
            "--alpha",
            "0",
            "--dtype",
            "f32",
            "-o",
            p(&out),
        ],
    );
    let (b, o) = (open(&fixture("llama-base")), open(&out));
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
    run_ok(
        hft(2),
        &[
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
        ],
    );
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let common = [
        "reset",
        "--base",
        fxs("llama-base"),
        "--tuned",
        fxs("llama-tuned"),
    ];
    run_ok(
        hft(2),
        &[&common[..], &["--plan", p(&plan), "-o", p(&a)]].concat(),
    );
    run_ok(
        hft(2),
        &[
            &common[..],
            &["--strategy", "category", "--seed", "11", "-o", p(&b)],
        ]
        .concat(),
    );
    same_tensors(&open(&a), &open(&b));
    assert!(open(&a).metadata()["hft_command"].contains("--plan"));
}

fn diff_total_changed(a: &Path, b: &Path) -> (f64, Value) {
    let j: Value =
        serde_json::from_str(&run_ok(hft(2), &["diff", "--format", "json", p(a), p(b)])).unwrap();
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
    run_ok(hft(2), &[&common[..], &["-o", p(&single)]].concat());
    run_ok(
        hft(2),
        &[
            &common[..],
            &["-o", p(&sharded), "--max-shard-size", "40KB"],
        ]
        .concat(),
    );
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
    let (changed, _) = diff_total_changed(&fixture("llama-base"), &sharded);
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
    // A directory output would pair the 272-row embedding with a 264-row head: no input's
    // config.json describes that, so it is refused; a single weights file is written.
    let dir = d.path().join("dir");
    let res = hft(2)
        .args([
            "average",
            fxs("llama-base"),
            fxs("llama-tied-resized"),
            "--allow-missing",
            "-o",
            p(&dir),
        ])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("match no input's"));
    assert!(!dir.exists());
    let out = d.path().join("o.safetensors");
    run_ok(
        hft(2),
        &[
            "average",
            fxs("llama-base"),
            fxs("llama-tied-resized"),
            "--alpha",
            "1",
            "--allow-missing",
            "-o",
            p(&out),
        ],
    );
    let (b, r, o) = (
        open(&fixture("llama-base")),
        open(&fixture("llama-tied-resized")),
        open(&out),
    );
    assert_eq!(o.get("model.embed_tokens.weight").unwrap().shape, [272, 64]);
    // alpha 1: shared rows and extra rows all from the resized model; the head from BASE.
    assert!(bytes(&o, "model.embed_tokens.weight") == bytes(&r, "model.embed_tokens.weight"));
    assert!(bytes(&o, "lm_head.weight") == bytes(&b, "lm_head.weight"));
}

/// What transformers reads beside the weights describes the output: config.json and tokenizer
/// from the input whose vocabulary and tying the output has, the config's dtype that of the
/// stored weights, and hft's own model card instead of an input's.
#[test]
fn side_files_describe_the_output() {
    use hft::fixtures::synth::{write_model, ModelSpec};
    use hft::io::writer::WriterOptions;
    let d = tempfile::tempdir().unwrap();
    let spec = |vocab| ModelSpec {
        vocab,
        tied: true,
        ..ModelSpec::llama(16, 2, 4, 2, 24)
    };
    let (base, tuned) = (d.path().join("base"), d.path().join("tuned"));
    write_model(&spec(264), &base, 1, None, &WriterOptions::default()).unwrap();
    // The tuned model added 8 tokens; its tokenizer and card are its own.
    write_model(&spec(272), &tuned, 1, Some(2), &WriterOptions::default()).unwrap();
    // As in the Hugging Face cache: the tokenizer is a link into a blob store.
    let blob = d.path().join("blob-tokenizer");
    std::fs::write(&blob, "{\"added\": 8}").unwrap();
    std::os::unix::fs::symlink(&blob, tuned.join("tokenizer.json")).unwrap();
    std::fs::write(tuned.join("README.md"), "# the tuned model's card\n").unwrap();
    let out = d.path().join("avg");
    run_ok(
        hft(2),
        &[
            "average",
            p(&base),
            p(&tuned),
            "--allow-missing",
            "--dtype",
            "f32",
            "-o",
            p(&out),
        ],
    );
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["vocab_size"], 272,
        "config from the input with the output's vocabulary"
    );
    assert_eq!(
        cfg["torch_dtype"], "float32",
        "config dtype follows --dtype"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{\"added\": 8}"
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(!card.contains("the tuned model's card"), "{card}");
    assert!(
        card.contains("tags:\n- hft") && card.contains(" average "),
        "{card}"
    );
    assert_eq!(
        open(&out).get("model.embed_tokens.weight").unwrap().shape,
        [272, 16]
    );
}
