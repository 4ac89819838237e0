//! `hft run` end to end on tiny models (one thread, a few steps): checkpoints per stage that
//! `hft diff` loads, reports, --compare, --resume after a NaN stop, and bad input.
#![cfg(feature = "train")]

use std::path::Path;

use assert_cmd::Command;
use hft::io::dtype::DType;
use hft::io::writer::WriterOptions;
use hft::synth::{write_model, ModelSpec};
use predicates::prelude::*;

fn hft() -> Command {
    let mut c = Command::cargo_bin("hft").unwrap();
    c.env("RAYON_NUM_THREADS", "1").args(["--threads", "1"]);
    c
}

const RECIPE: &str = "\
model: model
output: out
defaults:
  lr: 1.0e-2
  steps: 3
  seq_len: 32
  log_every: 1
plan: {strategy: category, seed: 5}
eval:
  - {name: text, path: text.jsonl}
  - {name: pairs, path: pairs.jsonl}
stages:
  - name: a
    plan: {strategy: full}
    tasks: [text]
    data: [{path: text.jsonl, batch: 2}]
  - name: b
    tasks: [pairs]
    LR_LINE
    data: [{path: pairs.jsonl, batch: 2}, {path: text.jsonl, batch: 1}]
post:
  - {kind: reset, strategy: category, ratio: 0.5, seed: 1}
  - {kind: average, alphas: [0.5], base: a}
";

fn setup(dir: &Path, lr_line: &str) {
    let spec = ModelSpec {
        dtype: DType::BF16,
        ..ModelSpec::llama(16, 2, 4, 2, 24)
    };
    if !dir.join("model").exists() {
        write_model(
            &spec,
            &dir.join("model"),
            1,
            None,
            &WriterOptions::default(),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("text.jsonl"),
        "{\"text\":\"the cat sat.\"}\n{\"text\":\"a dog ran.\"}\n{\"text\":\"the sun is up.\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("pairs.jsonl"),
        "{\"prompt\":\"k:ab=\",\"completion\":\"12\"}\n{\"prompt\":\"k:cd=\",\"completion\":\"34\"}\n",
    )
    .unwrap();
    std::fs::write(dir.join("r.yaml"), RECIPE.replace("LR_LINE", lr_line)).unwrap();
}

#[test]
fn stages_write_checkpoints_that_diff_loads_and_reports() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    hft()
        .current_dir(d.path())
        .args(["run", "r.yaml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("## R: exact match"))
        .stdout(predicate::str::contains("| 1 b |"));
    let out = d.path().join("out");
    for f in [
        "00-a/model.safetensors",
        "00-a/config.json",
        "00-a/plan.yaml",
        "01-b/model.safetensors",
        "report.json",
        "report.md",
        "run.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Written in the model's own dtype, loadable by `hft diff`.
    let ck = hft::io::Checkpoint::open(out.join("01-b")).unwrap();
    assert!(ck.tensors().iter().all(|t| t.dtype == DType::BF16));
    hft()
        .args(["diff", "--format", "json"])
        .arg(out.join("00-a"))
        .arg(out.join("01-b"))
        .assert()
        .success()
        .stdout(predicate::str::contains("\"layers\""));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["plan"]["strategy"], "full");
    assert_eq!(stages[1]["plan"]["strategy"], "category");
    assert!(stages[1]["plan"]["fraction"].as_f64().unwrap() < 1.0);
    assert!(stages[1]["change"]["frozen_changed"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(r["metrics"]["exact_match"]["diagonal"]["pairs"].is_number());
    let post: Vec<&str> = r["post"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(post, ["reset-category-0.5", "average-0.5-from-a"]);
    assert!(out
        .join("post/average-0.5-from-a/model.safetensors")
        .is_file());
    // Deterministic given the seeds: a second run gives the same bytes.
    hft()
        .current_dir(d.path())
        .args(["run", "r.yaml", "-q", "-o", "again"])
        .assert()
        .success();
    // (The metadata records the command line, so compare the tensors.)
    let a = hft::io::Checkpoint::open(out.join("01-b")).unwrap();
    let b = hft::io::Checkpoint::open(d.path().join("again/01-b")).unwrap();
    for t in a.tensors() {
        assert!(a.bytes(t) == b.bytes(b.get(&t.name).unwrap()), "{}", t.name);
    }
    // A second run into the same output must be asked for.
    hft()
        .current_dir(d.path())
        .args(["run", "r.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--resume"));
}

#[test]
fn nan_loss_stops_the_stage_and_resume_continues_after_the_last_good_one() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e+30");
    hft()
        .current_dir(d.path())
        .args(["run", "r.yaml", "-q"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "stage `b`: the training loss became",
        ))
        .stderr(predicate::str::contains("at step"));
    let out = d.path().join("out");
    assert!(out.join("00-a/model.safetensors").is_file());
    assert!(!out.join("01-b").exists());
    let before = std::fs::read(out.join("00-a/model.safetensors")).unwrap();
    setup(d.path(), "lr: 1.0e-2");
    hft()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--resume"])
        .assert()
        .success()
        .stderr(predicate::str::contains("resuming after stage `a`"));
    assert!(out.join("01-b/model.safetensors").is_file());
    assert_eq!(
        std::fs::read(out.join("00-a/model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn compare_runs_each_strategy_and_shares_pinned_stages() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    hft()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--compare", "full,category", "-q"])
        .assert()
        .success()
        .stdout(predicate::str::contains("| category |"));
    let out = d.path().join("out");
    for f in [
        "compare.md",
        "compare.json",
        "compare.svg",
        "full/report.md",
        "category/01-b/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let a = std::fs::read(out.join("full/00-a/model.safetensors")).unwrap();
    let b = std::fs::read(out.join("category/00-a/model.safetensors")).unwrap();
    assert_eq!(a, b);
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(c["runs"][1]["stages"][0]["shared_from"], "full");
    assert_eq!(c["rows"][0]["mean_trainable_fraction"], 1.0);
}

#[test]
fn bad_input_is_reported_with_where_it_is() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    let run = |recipe: &str| {
        std::fs::write(d.path().join("bad.yaml"), recipe).unwrap();
        hft()
            .current_dir(d.path())
            .args(["run", "bad.yaml"])
            .assert()
            .code(2)
    };
    let ok = RECIPE.replace("LR_LINE", "lr: 1.0e-2");
    run(&ok.replace("  steps: 3\n", "  steps: 3\n  stpes: 4\n")).stderr(
        predicate::str::contains("unknown field `stpes`").and(predicate::str::contains("line 6")),
    );
    run(&ok.replace("path: pairs.jsonl, batch", "path: missing.jsonl, batch"))
        .stderr(predicate::str::contains("missing.jsonl not found"));
    std::fs::write(
        d.path().join("broken.jsonl"),
        "{\"text\":\"ok\"}\n{\"text\": nope}\n",
    )
    .unwrap();
    run(&ok.replace("path: pairs.jsonl, batch", "path: broken.jsonl, batch")).stderr(
        predicate::str::contains("broken.jsonl: line 2: not valid JSON"),
    );
    run(&ok.replace("seq_len: 32", "seq_len: 8"))
        .stderr(predicate::str::contains("more than the sequence length 8"));
    run(&ok.replace("model: model", "model: nowhere"))
        .stderr(predicate::str::contains("nowhere not found"));
    // A plan made for another model.
    let other = ModelSpec::llama(32, 2, 4, 2, 24);
    write_model(
        &other,
        &d.path().join("other"),
        1,
        None,
        &WriterOptions::default(),
    )
    .unwrap();
    hft()
        .current_dir(d.path())
        .args(["plan", "other", "-o", "other.plan.yaml"])
        .assert()
        .success();
    run(&ok.replace(
        "    tasks: [pairs]\n",
        "    tasks: [pairs]\n    plan: {file: other.plan.yaml}\n",
    ))
    .stderr(predicate::str::contains("other.plan.yaml"));
    hft()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--device", "cuda"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cuda"));
}
