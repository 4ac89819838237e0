//! A hostile user's inputs, one test per class of failure (docs/guarantees.md says what each
//! proves): outputs that would destroy inputs or other files, leftovers of interrupted runs,
//! unbounded resources, numbers that overflow, and errors that must be one line with exit 2.
//! Every input is generated here; the committed fixtures are only ever copied.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::surgery::{fxs, p};

/// Runs hft and returns (exit code, stderr).
pub(super) fn code_err(args: &[&str]) -> (Option<i32>, String) {
    let res = hft(2).args(args).output().unwrap();
    (
        res.status.code(),
        String::from_utf8_lossy(&res.stderr).into(),
    )
}

/// Asserts exit 2 and exactly one stderr line containing `needle`.
pub(super) fn bad(args: &[&str], needle: &str) -> String {
    let (code, err) = code_err(args);
    assert_eq!(code, Some(2), "hft {}: {err}", args.join(" "));
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    err
}

/// A private copy of a fixture model, so that a bug cannot damage the committed files.
pub(super) fn copy_model(name: &str, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to.to_path_buf()
}

/// Every file under `dir` with its bytes, to prove nothing changed.
pub(super) fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

pub(super) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub(super) fn leftovers(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .chain(std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()))
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|n| n.contains(".hft-tmp-") || n.contains(".hft-old-"))
        .collect()
}

/// `reset --base llama-base --tuned llama-tuned` and then `rest`.
fn reset<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "reset",
        "--base",
        fxs("llama-base"),
        "--tuned",
        fxs("llama-tuned"),
    ];
    v.extend_from_slice(rest);
    v
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
}

// ----------------------------------------------------------------------------------------------
// 1. Outputs never destroy inputs or other files.

#[test]
fn plan_and_plot_outputs_never_touch_inputs_devices_or_foreign_files() {
    let d = tempfile::tempdir().unwrap();
    let m = copy_model("llama-base", &d.path().join("m"));
    let t = copy_model("llama-tuned", &d.path().join("t"));
    let before = snapshot(d.path());
    for out in ["m/model.safetensors", "m/config.json", "m", "."] {
        let o = d.path().join(out);
        bad(&["plan", p(&m), "-o", p(&o), "--force"], "input");
        bad(&["diff", p(&m), p(&t), "--plot", p(&o), "--force"], "input");
    }
    assert_eq!(snapshot(d.path()), before, "an input changed");

    // Device nodes and FIFOs are never outputs, with or without --force (and never block).
    let fifo = d.path().join("fifo.yaml");
    mkfifo(&fifo);
    for o in [Path::new("/dev/null"), fifo.as_path()] {
        bad(
            &["plan", p(&m), "-o", p(o), "--force"],
            "not a regular file",
        );
    }
    bad(
        &["diff", p(&m), p(&t), "--plot", "/dev/null", "--force"],
        "not a regular file",
    );
    std::fs::remove_file(&fifo).unwrap();

    // A file hft did not write: refused without --force, and with it.
    let notes = d.path().join("notes.md");
    std::fs::write(&notes, "# my notes\nhello\n").unwrap();
    bad(&["plan", p(&m), "-o", p(&notes)], "--force");
    bad(&["plan", p(&m), "-o", p(&notes), "--force"], "hft's own");
    bad(
        &["plan", p(&m), "--emit", "names", "-o", p(&notes), "--force"],
        "hft's own",
    );
    bad(
        &["diff", p(&m), p(&t), "--plot", p(&notes), "--force"],
        "hft's own",
    );
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "# my notes\nhello\n"
    );

    // What hft wrote, it may replace with --force (every export form, both plot formats).
    for emit in [
        "yaml",
        "json",
        "names",
        "regex",
        "axolotl",
        "llamafactory",
        "torch",
    ] {
        let o = d.path().join(format!("plan.{emit}"));
        // LLaMA-Factory can say whole layers only.
        let args = [
            "plan",
            p(&m),
            "--strategy",
            "full",
            "--emit",
            emit,
            "-o",
            p(&o),
        ];
        run_ok(hft(2), &args);
        bad(&args, "--force");
        run_ok(hft(2), &[&args[..], &["--force"]].concat());
    }
    for ext in ["svg", "png"] {
        let o = d.path().join(format!("heat.{ext}"));
        run_ok(hft(2), &["diff", p(&m), p(&t), "--plot", p(&o)]);
        run_ok(hft(2), &["diff", p(&m), p(&t), "--plot", p(&o), "--force"]);
    }
    // `..` after directories that do not exist yet resolves by name: still the input.
    bad(
        &["plan", p(&m), "-o", p(&d.path().join("x/y/../../m/p.yaml"))],
        "input",
    );
    let evil = d.path().join("x/y/../../t/evil.safetensors");
    bad(
        &["reset", "--base", p(&m), "--tuned", p(&t), "-o", p(&evil)],
        "input",
    );
    assert!(!d.path().join("t/evil.safetensors").exists());
    // A symbolic link is never replaced (the link's target could be anything).
    let link = d.path().join("link.yaml");
    std::os::unix::fs::symlink(&notes, &link).unwrap();
    bad(&["plan", p(&m), "-o", p(&link), "--force"], "symbolic link");
    assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
}

#[test]
fn force_replaces_only_directories_hft_wrote() {
    let d = tempfile::tempdir().unwrap();
    let (base, tuned) = (fxs("llama-base"), fxs("llama-tuned"));
    // A directory of the user's: refused with --force too, and left as it was.
    let mine = d.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("keep.txt"), "x").unwrap();
    std::fs::create_dir(mine.join("sub")).unwrap();
    bad(&["average", base, tuned, "-o", p(&mine)], "--force");
    bad(&reset(&["-o", p(&mine), "--force"]), ".hft-output");
    assert!(mine.join("keep.txt").is_file() && mine.join("sub").is_dir());
    // An empty directory is no one's data; hft's own output is replaced with --force.
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run_ok(hft(2), &["average", base, tuned, "-o", p(&out)]);
    assert!(out.join(".hft-output").is_file());
    bad(&["average", base, tuned, "-o", p(&out)], "--force");
    run_ok(hft(2), &["average", base, tuned, "-o", p(&out), "--force"]);
    // A file the user added to hft's output: --force refuses, naming it, and keeps it.
    std::fs::create_dir(out.join("eval")).unwrap();
    std::fs::write(out.join("eval/results.json"), "{}").unwrap();
    bad(
        &["average", base, tuned, "-o", p(&out), "--force"],
        "out/eval, which hft did not write",
    );
    assert!(out.join("eval/results.json").is_file());
    // A marker alone (empty, or copied into someone's directory) is not hft's.
    let fake = d.path().join("fake");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("important.txt"), "data").unwrap();
    std::fs::write(fake.join(".hft-output"), "").unwrap();
    bad(
        &["average", base, tuned, "-o", p(&fake), "--force"],
        "no valid .hft-output",
    );
    assert!(fake.join("important.txt").is_file());
    // A single-file output: another safetensors file is not hft's.
    let single = d.path().join("w.safetensors");
    std::fs::copy(fixture("llama-base").join("model.safetensors"), &single).unwrap();
    bad(
        &["average", base, tuned, "-o", p(&single), "--force"],
        "hft's own",
    );
    std::fs::remove_file(&single).unwrap();
    run_ok(hft(2), &["average", base, tuned, "-o", p(&single)]);
    run_ok(
        hft(2),
        &["average", base, tuned, "-o", p(&single), "--force"],
    );
    // A device is never an output, as root neither.
    bad(
        &reset(&["-o", "/dev/null", "--force"]),
        "not a regular file",
    );
    assert!(Path::new("/dev/null").exists() && !Path::new("/dev/null").is_dir());
    assert!(leftovers(d.path()).is_empty());
}

#[test]
fn stale_temporaries_of_killed_runs_are_reclaimed() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    // What `kill -9` leaves: a half-written output under a dead process's id.
    let stale = d.path().join(".out.hft-tmp-4999999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), vec![0u8; 4096]).unwrap();
    let old = d.path().join(".out.hft-old-4999998");
    std::fs::create_dir(&old).unwrap();
    run_ok(
        hft(2),
        &[
            "average",
            fxs("llama-base"),
            fxs("llama-tuned"),
            "-o",
            p(&out),
        ],
    );
    assert!(!stale.exists() && !old.exists());
    assert!(leftovers(d.path()).is_empty());
}

// ----------------------------------------------------------------------------------------------
// 3. Bounded resources: sizes, lists, threads and inputs that are not files.

#[test]
fn absurd_sizes_and_endless_inputs_are_refused_at_once() {
    let d = tempfile::tempdir().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("llama-base").join("config.json")).unwrap())
            .unwrap();
    let cases = [
        (r#"{"num_hidden_layers": 100000000}"#, "num_hidden_layers"),
        (r#"{"vocab_size": 18446744073709551615}"#, "vocab_size"),
        (r#"{"hidden_size": 0}"#, "hidden_size"),
        (r#"{"num_key_value_heads": 3}"#, "num_key_value_heads"),
        (
            r#"{"hidden_size": 4096, "num_attention_heads": 3, "num_key_value_heads": 3, "head_dim": null}"#,
            "not a multiple",
        ),
    ];
    for (patch, needle) in cases {
        let mut c = config.clone();
        let patch: serde_json::Value = serde_json::from_str(patch).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let f = d.path().join("config.json");
        std::fs::write(&f, c.to_string()).unwrap();
        let start = Instant::now();
        bad(&["plan", p(&f)], needle);
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    // Lists and checkpoints that never end, or would block.
    let (base, tuned) = (fxs("llama-base"), fxs("llama-tuned"));
    let out = d.path().join("out");
    bad(
        &reset(&["--names", "/dev/zero", "-o", p(&out)]),
        "not a regular file",
    );
    let fifo = d.path().join("fifo.safetensors");
    mkfifo(&fifo);
    bad(&["diff", p(&fifo), tuned], "not a regular file");
    bad(&reset(&["--names", p(&fifo), "-o", p(&out)]), "FIFO");
    bad(&["--threads", "100000", "diff", base, tuned], "--threads");
    bad(&["--threads=0", "diff", base, tuned], "--threads");
    bad(
        &[
            "average",
            base,
            tuned,
            "--max-shard-size",
            "99999999999999999999GB",
            "-o",
            p(&out),
        ],
        "--max-shard-size",
    );
    assert!(!out.exists());
    // Each size within its bound, together beyond any machine: refused, not an overflow.
    let mut c = config.clone();
    for (k, v) in [
        ("hidden_size", 1u64 << 20),
        ("num_hidden_layers", 4096),
        ("num_attention_heads", 16384),
        ("num_key_value_heads", 16384),
        ("head_dim", 65536),
    ] {
        c[k] = v.into();
    }
    let f = d.path().join("huge.json");
    std::fs::write(&f, c.to_string()).unwrap();
    bad(&["plan", p(&f)], "10^13 parameters");
    let mut c = config.clone();
    c["num_hidden_layers"] = (-1).into();
    std::fs::write(&f, c.to_string()).unwrap();
    bad(
        &["plan", p(&f)],
        "`num_hidden_layers` = -1 is not a whole number",
    );
}

// ----------------------------------------------------------------------------------------------
// 4. Numbers that overflow are refused, naming the tensor; nothing is written.

#[test]
fn overflowing_numbers_are_refused_with_the_tensor_named() {
    let d = tempfile::tempdir().unwrap();
    let (base, tuned) = (fxs("llama-base"), fxs("llama-tuned"));
    let out = d.path().join("out");
    bad(
        &[
            "merge",
            "--method",
            "task-arithmetic",
            "--base",
            base,
            tuned,
            "--lambda",
            "1e39",
            "-o",
            p(&out),
        ],
        "tensor `",
    );
    bad(
        &[
            "average",
            base,
            tuned,
            "--weights",
            "1e39,1",
            "--no-normalize",
            "-o",
            p(&out),
        ],
        "too large",
    );
    bad(
        &["average", base, tuned, "--alpha", "1e30", "-o", p(&out)],
        "--alpha",
    );
    for v in ["nan", "inf", "-inf"] {
        bad(
            &[
                "average",
                base,
                tuned,
                &format!("--weights={v},1"),
                "-o",
                p(&out),
            ],
            v,
        );
    }
    // A value beyond f16's range: --dtype f16 refuses instead of writing infinity.
    let m = d.path().join("big.safetensors");
    let vals: Vec<u8> = [1.0f32, 1e5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &vals).unwrap();
    std::fs::write(
        &m,
        safetensors::tensor::serialize([("w.weight", view)], None).unwrap(),
    )
    .unwrap();
    bad(
        &["average", p(&m), p(&m), "--dtype", "f16", "-o", p(&out)],
        "tensor `w.weight`: element 1 is 100000",
    );
    // An F64 value beyond f32's range, which hft computes in, is refused too.
    let m64 = d.path().join("big64.safetensors");
    let vals: Vec<u8> = [1.0f64, 1e300]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &vals).unwrap();
    std::fs::write(
        &m64,
        safetensors::tensor::serialize([("w.weight", view)], None).unwrap(),
    )
    .unwrap();
    bad(
        &["average", p(&m64), p(&m64), "-o", p(&out)],
        "element 1 is 1e300",
    );
    bad(
        &["average", p(&m64), p(&m64), "--dtype", "f32", "-o", p(&out)],
        "beyond f32",
    );
    assert!(!out.exists() && leftovers(d.path()).is_empty());
}

mod errors;

// ----------------------------------------------------------------------------------------------
// Training: run directories, recipe fields, validation before writing, resume, interruption.

#[cfg(feature = "train")]
mod run;
