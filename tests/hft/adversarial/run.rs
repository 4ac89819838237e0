//! The hostile user's inputs to `hft run`: run directories that would hold or sit inside the
//! recipe's inputs, recipe fields out of range, validation before anything is written, a resume
//! after the recipe changed, and an interrupted run.

use super::*;
use crate::run::{hft_serial, setup, RECIPE};

fn recipe(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("r.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_bad(dir: &Path, args: &[&str], needle: &str) -> String {
    let res = hft_serial().current_dir(dir).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr).into_owned();
    assert_eq!(res.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    err
}

#[test]
fn run_outputs_never_hold_or_sit_inside_inputs() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("recipes");
    std::fs::create_dir(&dir).unwrap();
    setup(&dir, "lr: 1.0e-2");
    let before = snapshot(&dir);
    for out in ["model", "model/run", ".", ".."] {
        for force in [false, true] {
            let mut args = vec!["run", "r.yaml", "-o", out];
            if force {
                args.push("--force");
            }
            run_bad(&dir, &args, "input");
        }
    }
    assert_eq!(snapshot(&dir), before, "an input changed");
    // A user's directory is not replaced; a plot may not land on an input either.
    let mine = d.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("keep.txt"), "x").unwrap();
    run_bad(
        &dir,
        &["run", "r.yaml", "-o", p(&mine), "--force"],
        ".hft-output",
    );
    run_bad(&dir, &["run", "r.yaml", "-o", p(&mine)], "--force");
    assert!(mine.join("keep.txt").is_file());
    run_bad(
        &dir,
        &[
            "run",
            "r.yaml",
            "--compare",
            "full,category",
            "--plot",
            "text.jsonl",
        ],
        "input",
    );
    // Two outputs of one command at one path; values from the command line named as flags.
    let g = ["run", "r.yaml", "-o", "../g", "--compare", "full,category"];
    run_bad(&dir, &[&g[..], &["--plot", "../g"]].concat(), "--plot");
    run_bad(
        &dir,
        &["run", "r.yaml", "--sweep", "warmup=1,0.5"],
        "--sweep: warmup=1",
    );
    for level in ["--match-at=nan", "--match-at=2"] {
        run_bad(
            &dir,
            &["run", "r.yaml", "--sweep", "lr=1e-3,2e-3", level],
            "--match-at",
        );
    }
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn recipe_fields_out_of_range_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    let ok = RECIPE.replace("LR_LINE", "lr: 1.0e-2");
    let cases = [
        (
            "  steps: 3\n",
            "  steps: 3\n  accumulate: 0\n",
            "accumulate",
        ),
        ("  steps: 3\n", "  steps: 3\n  warmup: 2\n", "warmup"),
        ("  steps: 3\n", "  steps: 3\n  min_lr: 5\n", "min_lr"),
        ("  steps: 3\n", "  steps: 3\n  clip: -1\n", "clip"),
        (
            "  steps: 3\n",
            "  steps: 3\n  epochs: 2\n",
            "both `steps` and `epochs`",
        ),
        ("  steps: 3\n", "  steps: 0\n", "steps"),
        ("  steps: 3\n", "  steps: 18446744073709551615\n", "steps"),
        ("  steps: 3\n", "  steps: 4294967296\n", "steps"),
        (
            "  steps: 3\n",
            "  steps: 3\n  accumulate: 18446744073709551615\n",
            "accumulate",
        ),
        (
            "  steps: 3\n",
            "  steps: 3000000\n  accumulate: 60000\n",
            "plans up front",
        ),
        ("lr: 1.0e-2\n  steps", "lr: 1.0e39\n  steps", "lr"),
        ("  steps: 3\n", "  steps: 3\n  log_every: 0\n", "log_every"),
        ("  seq_len: 32\n", "  seq_len: 1\n", "seq_len"),
        (
            "batch: 2}]\n  - name: b",
            "batch: 1000000000000}]\n  - name: b",
            "batch",
        ),
        (
            "{name: text, path: text.jsonl}",
            "{name: text, path: text.jsonl, max_examples: 0}",
            "max_examples",
        ),
        // A bad plan in the second stage: found before the first stage trains.
        (
            "    tasks: [pairs]\n",
            "    tasks: [pairs]\n    plan: {strategy: category, ratio: 7}\n",
            "stage `b` plan",
        ),
    ];
    for (from, to, needle) in cases {
        assert!(ok.contains(from), "{from}");
        recipe(d.path(), &ok.replacen(from, to, 1));
        let e = run_bad(d.path(), &["run", "r.yaml"], needle);
        assert!(e.contains("r.yaml"), "{e}");
        assert!(!e.contains("--"), "a recipe value reported as a flag: {e}");
        assert!(!d.path().join("out").exists(), "{needle}: output written");
    }
    // YAML syntax: one line with the file and the line.
    recipe(d.path(), &ok.replace("  steps: 3\n", "  steps: [3\n"));
    let e = run_bad(d.path(), &["run", "r.yaml"], "r.yaml: ");
    assert!(e.contains("line "), "{e}");
    std::fs::write(d.path().join("r.yaml"), b"model: m\xff\n").unwrap();
    run_bad(d.path(), &["run", "r.yaml"], "not UTF-8");
    run_bad(d.path(), &["run", "."], "is a directory");
}

#[test]
fn resume_retrains_a_stage_whose_settings_changed() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    let mut first = hft_serial();
    first.current_dir(d.path());
    run_ok(first, &["run", "r.yaml", "-q"]);
    let state = read_json(&d.path().join("out/run.json"));
    let fp = |s: &serde_json::Value, i: usize| s["stages"][i]["fingerprint"].as_u64().unwrap();
    let (a, b) = (fp(&state, 0), fp(&state, 1));
    // Unchanged: nothing retrains.
    let res = hft_serial()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--resume"])
        .output()
        .unwrap();
    assert!(res.status.success());
    assert!(!String::from_utf8_lossy(&res.stderr).contains("changed"));
    // Stage b's learning rate changed: b retrains, a is kept.
    setup(d.path(), "lr: 2.0e-2");
    let res = hft_serial()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--resume"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert!(
        err.contains("stage `b` changed since it was trained"),
        "{err}"
    );
    let state = read_json(&d.path().join("out/run.json"));
    assert_eq!(fp(&state, 0), a);
    assert_ne!(fp(&state, 1), b);
}

/// Starts a long run, waits until it trains, sends `signal`, and returns (exit code, stderr).
fn interrupt(dir: &Path, signal: &str) -> (Option<i32>, String) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hft"))
        .current_dir(dir)
        .args(["--threads", "1", "run", "r.yaml", "-q", "--force"])
        .env("RAYON_NUM_THREADS", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The state file exists once the baseline is scored, just before the first stage trains.
    let state = dir.join("out/run.json");
    let start = Instant::now();
    while !state.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_interrupted_run_leaves_no_temporaries_and_exits_with_the_signal() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    let long = RECIPE
        .replace("LR_LINE", "lr: 1.0e-2")
        .replace("  steps: 3\n", "  steps: 100000\n");
    recipe(d.path(), &long);
    for (signal, code, says) in [
        ("INT", 130, "interrupted"),
        ("TERM", 143, "interrupted"),
        // What a memory-mapped input truncated under a read raises: one line, exit 1.
        ("BUS", 1, "shrank or changed while it was being read"),
    ] {
        let (got, err) = interrupt(d.path(), signal);
        assert_eq!(got, Some(code), "{signal}: {err}");
        assert!(err.contains(says), "{signal}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{signal}: {err}");
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }
}
