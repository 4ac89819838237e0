//! `hft run` end to end on tiny models (one thread, a few steps): checkpoints per stage that
//! `hft diff` loads, reports, --compare, --resume after a NaN stop, and bad input.
//! (Built with the `train` feature only: see `mod run` in `main.rs`.)

use std::path::Path;

use assert_cmd::Command;
use hft::fixtures::synth::{write_model, ModelSpec};
use hft::io::dtype::DType;
use hft::io::writer::WriterOptions;
use predicates::prelude::*;

use crate::common::*;

/// `hft --threads 1` with `RAYON_NUM_THREADS=1` set as well: every training run here is
/// single-threaded.
pub(crate) fn hft_serial() -> Command {
    let mut c = hft(1);
    c.env("RAYON_NUM_THREADS", "1");
    c
}

pub(crate) const RECIPE: &str = "\
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

pub(crate) fn setup(dir: &Path, lr_line: &str) {
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
    hft_serial()
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
        "loss.svg",
        "run.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Written in the model's own dtype, loadable by `hft diff`.
    let ck = hft::io::Checkpoint::open(out.join("01-b")).unwrap();
    assert!(ck.tensors().iter().all(|t| t.dtype == DType::BF16));
    hft_serial()
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
    hft_serial()
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
    hft_serial()
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
    hft_serial()
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
    hft_serial()
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
    hft_serial()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--compare", "full,category", "-q"])
        .assert()
        .success()
        .stdout(predicate::str::contains("| category | recipe |"))
        .stdout(predicate::str::contains("No sweep"));
    let out = d.path().join("out");
    for f in [
        "report.md",
        "report.json",
        "learn-forget.svg",
        "heatmap.svg",
        "full/report.md",
        "category/01-b/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let a = std::fs::read(out.join("full/00-a/model.safetensors")).unwrap();
    let b = std::fs::read(out.join("category/00-a/model.safetensors")).unwrap();
    assert_eq!(a, b);
    let state = read_json(&out.join("category/run.json"));
    assert_eq!(state["stages"][0]["shared_from"], "full");
    assert_eq!(state["stages"][1]["shared_from"], serde_json::Value::Null);
    let c = read_json(&out.join("report.json"));
    assert_eq!(c["cells"][0]["trainable"], 1.0);
    assert!(c["cells"][1]["trainable"].as_f64().unwrap() < 1.0);
    // Each post baseline is read like a strategy: its own row, from its own checkpoint.
    let strategies: Vec<&str> = c["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        strategies,
        [
            "full",
            "category",
            "full+reset-category-0.5",
            "full+average-0.5-from-a",
            "category+reset-category-0.5",
            "category+average-0.5-from-a"
        ]
    );
    let run = |dir: &str| {
        c["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dir"] == dir)
            .unwrap_or_else(|| panic!("{dir}"))
            .clone()
    };
    let full = read_json(&out.join("full/report.json"));
    let reset = &full["post"][0];
    let b = run("full/post/reset-category-0.5");
    assert_eq!(b["strategy"], "full+reset-category-0.5");
    assert_eq!(
        b["op"],
        full["metrics"]["post"]["reset-category-0.5"][0]["op"]
    );
    assert_eq!(
        b["learned"], reset["scores"]["pairs"]["exact_match"],
        "{b} {reset}"
    );
}

#[cfg(unix)]
fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

/// Two stages with a task each, so forgetting of the first is measured (exact match).
fn setup_grid(dir: &Path) {
    setup(dir, "lr: 1.0e-2");
    std::fs::write(
        dir.join("other.jsonl"),
        "{\"prompt\":\"k:ef=\",\"completion\":\"56\"}\n{\"prompt\":\"k:gh=\",\"completion\":\"78\"}\n",
    )
    .unwrap();
    let r = RECIPE
        .replace("LR_LINE", "lr: 1.0e-2")
        .replace("  - {name: pairs, path: pairs.jsonl}\n", "  - {name: pairs, path: pairs.jsonl}\n  - {name: other, path: other.jsonl}\n")
        .replace("    tasks: [text]\n    data: [{path: text.jsonl, batch: 2}]", "    tasks: [pairs]\n    data: [{path: pairs.jsonl, batch: 2}, {path: text.jsonl, batch: 1}]")
        .replace("    tasks: [pairs]\n    lr", "    tasks: [other]\n    lr")
        .replace("data: [{path: pairs.jsonl, batch: 2}, {path: text.jsonl, batch: 1}]\npost", "data: [{path: other.jsonl, batch: 2}, {path: text.jsonl, batch: 1}]\npost");
    assert!(
        r.contains("tasks: [other]") && r.contains("path: other.jsonl, batch: 2"),
        "{r}"
    );
    std::fs::write(dir.join("r.yaml"), r).unwrap();
}

#[test]
fn a_sweep_over_seeds_runs_every_cell_trains_shared_stages_once_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    setup_grid(d.path());
    let args = [
        "run",
        "r.yaml",
        "--compare",
        "full,category",
        "--sweep",
        "lr=3e-3,x3",
        "--seeds",
        "1,2",
    ];
    let first = hft_serial()
        .current_dir(d.path())
        .args(args)
        .assert()
        .success();
    let err = String::from_utf8(first.get_output().stderr.clone()).unwrap();
    // One progress line per run, and the grid's plan up front.
    assert_eq!(err.matches("hft: [").count(), 8, "{err}");
    assert!(
        err.contains("8 runs") && err.contains("10 of 16 stages to train, 6 shared"),
        "{err}"
    );
    let out = d.path().join("out");
    let mut trained_a = 0;
    for s in ["full", "category"] {
        for lr in ["lr=3e-3", "lr=x3"] {
            for seed in ["seed-1", "seed-2"] {
                let run = out.join(s).join(lr).join(seed);
                let state = read_json(&run.join("run.json"));
                assert_eq!(state["stages"].as_array().unwrap().len(), 2, "{run:?}");
                if state["stages"][0]["shared_from"].is_null() {
                    trained_a += 1;
                }
                assert!(state["stages"][1]["shared_from"].is_null());
                assert!(run.join("report.md").is_file());
            }
        }
    }
    // Stage `a` is pinned and the sweep leaves it alone: trained once per seed.
    assert_eq!(trained_a, 2);
    #[cfg(unix)]
    {
        let ck = |p: &str| out.join(p).join("00-a/model.safetensors");
        assert_eq!(
            inode(&ck("full/lr=3e-3/seed-1")),
            inode(&ck("category/lr=x3/seed-1"))
        );
        assert_ne!(
            std::fs::read(ck("full/lr=3e-3/seed-1")).unwrap(),
            std::fs::read(ck("full/lr=3e-3/seed-2")).unwrap()
        );
    }
    let rep = read_json(&out.join("report.json"));
    // 8 runs and their 2 post baselines each, read as strategies of their own.
    assert_eq!(rep["runs"].as_array().unwrap().len(), 8 + 16);
    assert_eq!(rep["cells"].as_array().unwrap().len(), 4 + 8);
    assert_eq!(rep["cells"][0]["seeds"], 2);
    assert_eq!(rep["cells"][0]["learned"]["n"], 2);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## At equal learning") && md.contains("| full | lr=x3 |"),
        "{md}"
    );
    assert!(
        md.contains("## Learned per task") && md.contains("| pairs | other |"),
        "{md}"
    );
    let svg = std::fs::read_to_string(out.join("learn-forget.svg")).unwrap();
    assert!(
        svg.starts_with("<!-- written by hft -->\n<svg") && svg.contains("category"),
        "{svg}"
    );

    // Again without --resume: refused, nothing touched.
    hft_serial()
        .current_dir(d.path())
        .args(args)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--resume"));
    // With --resume and one run's report gone: only that run continues; the rest is read back.
    std::fs::remove_file(out.join("category/lr=x3/seed-2/report.json")).unwrap();
    let again = hft_serial()
        .current_dir(d.path())
        .args(args)
        .args(["--resume", "--match-at", "0.5", "--plot", "lf.png"])
        .assert()
        .success();
    let err = String::from_utf8(again.get_output().stderr.clone()).unwrap();
    assert_eq!(
        err.matches("finished earlier, read back").count(),
        7,
        "{err}"
    );
    let png = std::fs::read(d.path().join("lf.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let rep = read_json(&out.join("report.json"));
    assert_eq!(rep["matched"][0]["level"], 0.5);
}

#[test]
fn parallel_runs_give_the_same_results_as_one_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    setup_grid(d.path());
    let grid = |jobs: &str, out: &str| {
        hft_serial()
            .current_dir(d.path())
            .args([
                "run",
                "r.yaml",
                "--compare",
                "full,category",
                "--seeds",
                "0,1",
            ])
            .args(["--jobs", jobs, "-o", out, "-q"])
            .assert()
            .success();
        let r = read_json(&d.path().join(out).join("report.json"));
        r["runs"].clone()
    };
    let one = grid("1", "one");
    let two = grid("2", "two");
    for (a, b) in one.as_array().unwrap().iter().zip(two.as_array().unwrap()) {
        for k in ["dir", "learned", "forgot", "loss_rise", "text_loss"] {
            assert_eq!(a[k], b[k], "{k}");
        }
    }
}

#[test]
fn bad_input_is_reported_with_where_it_is() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    let run = |recipe: &str| {
        std::fs::write(d.path().join("bad.yaml"), recipe).unwrap();
        hft_serial()
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
    hft_serial()
        .current_dir(d.path())
        .args(["plan", "other", "-o", "other.plan.yaml"])
        .assert()
        .success();
    run(&ok.replace(
        "    tasks: [pairs]\n",
        "    tasks: [pairs]\n    plan: {file: other.plan.yaml}\n",
    ))
    .stderr(predicate::str::contains("other.plan.yaml"));
    hft_serial()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--device", "cuda"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cuda"));
}

#[test]
fn bf16_products_train_on_the_cpu_and_bad_precisions_are_refused() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    hft_serial()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--precision", "bf16", "-q"])
        .assert()
        .success();
    // The run checks itself that frozen tensors are unchanged; the stage trained something.
    let r = read_json(&d.path().join("out/report.json"));
    assert!(r["stages"][1]["change"]["rel_delta"].as_f64().unwrap() > 0.0);
    assert!(r["stages"][1]["change"]["frozen_changed"]
        .as_array()
        .unwrap()
        .is_empty());
    hft_serial()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--precision", "f8", "--force"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("expected f32, bf16 or f16"));
}

#[test]
fn grid_flags_that_do_not_fit_are_refused_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    for (args, why) in [
        (vec!["--seeds", "1,1"], "given twice"),
        (vec!["--compare", "full,full"], "given twice"),
        (vec!["--compare", "full", "--match-at", "0.5"], "--sweep"),
        (vec!["--jobs", "2"], "need a grid"),
        (vec!["--sweep", "lr"], "KEY=V1,V2"),
        (vec!["--sweep", "lerning=1,2"], "not a numeric stage field"),
        (
            vec!["--sweep", "a.lr=1,2", "--compare", "x"],
            "unknown strategy",
        ),
    ] {
        hft_serial()
            .current_dir(d.path())
            .args(["run", "r.yaml"])
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(why));
    }
    assert!(!d.path().join("out").exists());
}
