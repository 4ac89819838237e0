//! End-to-end tests of `hft diff` over the committed fixtures and over deliberately broken files.

use std::path::{Path, PathBuf};

use predicates::prelude::*;
use serde_json::Value;

use crate::common::*;

fn diff_json(a: &Path, b: &Path) -> Value {
    let out = hft(1)
        .args(["diff", "--format", "json"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn table_shows_layer_by_category_matrix_and_top_tensors() {
    let f = fixtures();
    hft(1)
        .arg("diff")
        .arg(f.join("llama-base"))
        .arg(f.join("llama-tuned"))
        .assert()
        .success()
        .stdout(predicate::str::contains("per layer and category"))
        .stdout(predicate::str::contains("top 10 tensors"))
        .stdout(predicate::str::contains("family llama"))
        .stdout(predicate::function(|s: &str| {
            s.lines().all(|l| l.len() <= 100)
        }));
}

#[test]
fn json_has_the_documented_keys_and_exact_aggregates() {
    let f = fixtures();
    let j = diff_json(&f.join("llama-base"), &f.join("llama-tuned"));
    for k in [
        "a",
        "b",
        "tensors",
        "layers",
        "categories",
        "total",
        "only_in_a",
        "only_in_b",
        "mismatched",
    ] {
        assert!(j.get(k).is_some(), "missing key {k}");
    }
    let tensors = j["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 39);
    let t0 = &tensors[0];
    for k in [
        "name",
        "layer",
        "category",
        "dtype",
        "shape",
        "numel",
        "l2_a",
        "l2_b",
        "l2_delta",
        "rel_delta",
        "cosine",
        "max_abs_delta",
        "mean_abs_delta",
        "changed_frac",
    ] {
        assert!(t0.get(k).is_some(), "tensor missing {k}");
    }
    // The fixture leaves layer 0's k_proj and the final norm untouched.
    let k0 = tensors
        .iter()
        .find(|t| t["name"] == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(k0["l2_delta"], 0.0);
    assert_eq!(k0["changed_frac"], 0.0);
    assert_eq!(k0["category"], "attn_k");
    assert_eq!(k0["layer"], 0);
    // Aggregates are exact: a layer's squared delta norm is the sum over its tensors.
    let layer1: f64 = tensors
        .iter()
        .filter(|t| t["layer"] == 1)
        .map(|t| t["l2_delta"].as_f64().unwrap().powi(2))
        .sum();
    let reported = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == 1)
        .unwrap()["l2_delta"]
        .as_f64()
        .unwrap();
    assert!((reported - layer1.sqrt()).abs() < 1e-12);
    let total: f64 = tensors
        .iter()
        .map(|t| t["l2_delta"].as_f64().unwrap().powi(2))
        .sum();
    assert!((j["total"]["l2_delta"].as_f64().unwrap() - total.sqrt()).abs() < 1e-12);
}

#[test]
fn sharded_and_single_file_forms_give_the_same_figures() {
    let f = fixtures();
    let single = diff_json(&f.join("llama-base"), &f.join("llama-tuned"));
    let sharded = diff_json(
        &f.join("llama-base-sharded"),
        &f.join("llama-tuned-sharded/model.safetensors.index.json"),
    );
    assert_eq!(single["total"], sharded["total"]);
    assert_eq!(
        single["tensors"].as_array().unwrap().len(),
        sharded["tensors"].as_array().unwrap().len()
    );
    // A checkpoint against itself (file form vs directory form) has no change at all.
    let same = diff_json(
        &f.join("llama-base/model.safetensors"),
        &f.join("llama-base-sharded"),
    );
    assert_eq!(same["total"]["l2_delta"], 0.0);
    assert_eq!(same["total"]["changed_frac"], 0.0);
}

#[test]
fn resized_vocabulary_and_tied_embeddings_are_reported() {
    let f = fixtures();
    let j = diff_json(&f.join("llama-base"), &f.join("llama-tied-resized"));
    assert_eq!(j["only_in_a"], serde_json::json!(["lm_head.weight"]));
    let m = &j["mismatched"][0];
    assert_eq!(m["name"], "model.embed_tokens.weight");
    assert_eq!(m["a"]["shape"], serde_json::json!([264, 64]));
    assert_eq!(m["b"]["shape"], serde_json::json!([272, 64]));
    let e = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.embed_tokens.weight")
        .unwrap();
    assert_eq!(e["extra_rows_b"], 8);
    assert_eq!(e["numel"], 264 * 64);
}

#[test]
fn gpt2_names_and_categories() {
    let f = fixtures();
    let j = diff_json(&f.join("gpt2-base"), &f.join("gpt2-tuned"));
    let cats: Vec<&str> = j["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["category"].as_str().unwrap())
        .collect();
    for c in [
        "embed",
        "pos_embed",
        "attn_qkv",
        "attn_o",
        "ffn_in",
        "ffn_out",
        "norm",
        "final_norm",
        "bias",
    ] {
        assert!(cats.contains(&c), "{c} missing from {cats:?}");
    }
}

#[test]
fn csv_by_layer_and_category() {
    let f = fixtures();
    let out = hft(1)
        .args(["diff", "--format", "csv", "--by", "layer"])
        .arg(f.join("llama-base"))
        .arg(f.join("llama-tuned"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("layer,numel,l2_a,l2_b,l2_delta,rel_delta,cosine"));
    assert_eq!(lines.len(), 1 + 4);
    let out = hft(1)
        .args([
            "diff",
            "--format",
            "csv",
            "--by",
            "category",
            "--sort",
            "rel-delta",
        ])
        .arg(f.join("llama-base"))
        .arg(f.join("llama-tuned"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let rel: Vec<f64> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(5).and_then(|v| v.parse().ok()))
        .collect();
    assert!(rel.windows(2).all(|w| w[0] >= w[1]), "{rel:?}");
}

#[test]
fn plot_writes_an_svg_heatmap() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("heat.svg");
    hft(1)
        .args(["diff", "-q", "--plot"])
        .arg(&svg)
        .arg(f.join("llama-base"))
        .arg(f.join("llama-tuned"))
        .assert()
        .success();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<!-- written by hft -->\n<svg"));
    assert!(text.contains("layer 3") && text.contains("attn_q"));
    // Four layers x eight categories of cells, plus the legend.
    assert!(text.matches("<rect").count() >= 32);
    let png = dir.path().join("heat.png");
    hft(1)
        .args(["diff", "-q", "--plot"])
        .arg(&png)
        .arg(f.join("llama-base"))
        .arg(f.join("llama-tuned"))
        .assert()
        .success();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    hft(1)
        .args(["diff", "--plot"])
        .arg(dir.path().join("heat.jpg"))
        .arg(f.join("llama-base"))
        .arg(f.join("llama-tuned"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("must end in .svg or .png"));
}

#[test]
fn completions_and_help() {
    hft_bin()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicate::str::contains("hft"));
    hft_bin()
        .args(["diff", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Examples:"));
}

// ---- bad input: one line naming the file, exit code 2, no panic ----

/// A safetensors file from a raw header and data, for building broken inputs by hand.
fn raw(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn assert_bad(a: &Path, b: &Path, needle: &str) {
    let out = hft(1).arg("diff").arg(a).arg(b).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_inputs_get_one_line_errors_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let good = fixtures().join("llama-base");
    let ok_header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

    let truncated = d.join("truncated.safetensors");
    std::fs::write(&truncated, [1u8, 2, 3]).unwrap();
    assert_bad(&truncated, &good, "truncated.safetensors: truncated");

    let mut past = 1000u64.to_le_bytes().to_vec();
    past.extend_from_slice(b"{}");
    let past_end = d.join("past.safetensors");
    std::fs::write(&past_end, past).unwrap();
    assert_bad(&past_end, &good, "runs past the end of the file");

    let bad_json = raw(d, "json.safetensors", "{not json", &[]);
    assert_bad(&bad_json, &good, "invalid header JSON");

    let short_data = raw(d, "short.safetensors", ok_header, &[0u8; 4]);
    assert_bad(&short_data, &good, "does not match the file size");

    let overlap = raw(
        d,
        "overlap.safetensors",
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0u8; 12],
    );
    assert_bad(&overlap, &good, "data_offsets");

    let out_of_range = raw(
        d,
        "range.safetensors",
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#,
        &[0u8; 8],
    );
    assert_bad(&out_of_range, &good, "range.safetensors");

    let bad_dtype = raw(
        d,
        "dtype.safetensors",
        r#"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    assert_bad(&bad_dtype, &good, "dtype.safetensors");

    // Index naming a shard that does not exist.
    let idx_dir = d.join("missing-shard");
    std::fs::create_dir(&idx_dir).unwrap();
    std::fs::write(
        idx_dir.join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"w":"model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    assert_bad(&idx_dir, &good, "model-00001-of-00002.safetensors");

    // Index placing a tensor in a shard that does not hold it.
    let idx2 = d.join("wrong-shard");
    std::fs::create_dir(&idx2).unwrap();
    raw(&idx2, "s1.safetensors", ok_header, &[0u8; 8]);
    std::fs::write(
        idx2.join("model.safetensors.index.json"),
        r#"{"weight_map":{"w":"s1.safetensors","v":"s1.safetensors"}}"#,
    )
    .unwrap();
    assert_bad(&idx2, &good, "`v`");

    // The same tensor in two shards.
    let idx3 = d.join("dup-shard");
    std::fs::create_dir(&idx3).unwrap();
    raw(&idx3, "s1.safetensors", ok_header, &[0u8; 8]);
    raw(&idx3, "s2.safetensors", ok_header, &[0u8; 8]);
    std::fs::write(
        idx3.join("model.safetensors.index.json"),
        r#"{"weight_map":{"w":"s1.safetensors","x":"s2.safetensors"}}"#,
    )
    .unwrap();
    assert_bad(&idx3, &good, "two shards");

    // Index that is not JSON.
    let idx4 = d.join("badindex");
    std::fs::create_dir(&idx4).unwrap();
    std::fs::write(idx4.join("model.safetensors.index.json"), "{").unwrap();
    assert_bad(&idx4, &good, "invalid JSON");

    // Nothing in common.
    let other = raw(d, "other.safetensors", ok_header, &[0u8; 8]);
    assert_bad(&good, &other, "no tensor in common");

    // Pickle-only directory.
    let pickle = d.join("pickle");
    std::fs::create_dir(&pickle).unwrap();
    std::fs::write(pickle.join("pytorch_model.bin"), b"PK").unwrap();
    assert_bad(&pickle, &good, "pickle");

    // A path that does not exist.
    assert_bad(&d.join("nope"), &good, "nope");
}

#[test]
fn byte_compared_dtypes_report_equality() {
    let d = tempfile::tempdir().unwrap();
    let h = r#"{"ids":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    let mut data = vec![1u8, 0, 0, 0, 2, 0, 0, 0];
    data.extend_from_slice(&1.0f32.to_le_bytes());
    let a = raw(d.path(), "a.safetensors", h, &data);
    data[4] = 3;
    let b = raw(d.path(), "b.safetensors", h, &data);
    let j = diff_json(&a, &b);
    let ids = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ids")
        .unwrap();
    assert_eq!(ids["compared"], "bytes");
    assert_eq!(ids["equal"], false);
    assert_eq!(ids["changed_frac"], 0.5);
    assert_eq!(ids["l2_a"], Value::Null);
}
