//! Class 5 of the hostile inputs: malformed files, hostile tensor names, odd arguments and a
//! lost stdout give one-line errors with the right exit code, never a panic or raw control
//! characters.

use std::path::Path;

use super::{bad, copy_model};
use crate::common::*;
use crate::surgery::{fxs, p};

#[test]
fn malformed_files_are_one_line_errors_with_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let m = fxs("llama-base");
    let f = |name: &str, bytes: &[u8]| {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let latin1 = f("plan.yaml", b"format: 1\nstrategy: caf\xe9\n");
    bad(&["plan", m, "--check", p(&latin1)], "line 2: not UTF-8");
    let yaml = f("broken.yaml", b"format: 1\nstrategy: [x\n");
    let e = bad(&["plan", m, "--check", p(&yaml)], "broken.yaml: ");
    assert!(e.contains("line "), "{e}");
    bad(&["plan", m, "--check", p(d.path())], "is a directory");
    let lp = d.path().join("loop");
    std::os::unix::fs::symlink(&lp, &lp).unwrap();
    bad(&["diff", p(&lp), m], "loop");
    let long = d.path().join("x".repeat(300));
    bad(&["diff", p(&long), m], "x");
    // GGUF: magic and version each have their own message.
    let g = f(
        "v9.gguf",
        b"GGUF\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    );
    if cfg!(feature = "train") {
        bad(
            &["import", p(&g), "-o", p(&d.path().join("imp"))],
            "GGUF version 9",
        );
        let g = f("nope.gguf", b"GGML\x03\x00\x00\x00");
        bad(
            &["import", p(&g), "-o", p(&d.path().join("imp"))],
            "bad magic",
        );
    }
}

/// A safetensors file whose header is written by hand.
fn raw_safetensors(path: &Path, header: &str, data: usize) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data));
    std::fs::write(path, b).unwrap();
}

#[test]
fn odd_arguments_and_lost_stdout_are_errors_not_panics() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    // A directory name that is not UTF-8: recorded lossily in the provenance, no panic.
    let odd = d.path().join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    copy_model("llama-tuned", &odd);
    let out = d.path().join("o");
    let res = hft(2)
        .arg("average")
        .arg(&odd)
        .args([fxs("llama-base"), "-o", p(&out)])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    // A result that cannot reach stdout is a failure (exit 1), a closed reader is not.
    if Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let res = std::process::Command::new(env!("CARGO_BIN_EXE_hft"))
            .args([
                "diff",
                fxs("llama-base"),
                fxs("llama-tuned"),
                "--format",
                "json",
            ])
            .stdout(full)
            .output()
            .unwrap();
        assert_eq!(res.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&res.stderr).contains("stdout"));
    }
    bad(
        &[
            "plan",
            fxs("llama-base"),
            "--strategy",
            "lisa",
            "--lisa-periods",
            "18446744073709551615",
        ],
        "--lisa-periods",
    );
    bad(
        &[
            "average",
            fxs("llama-base"),
            fxs("llama-tuned"),
            "--weights",
            "1e308,1e308",
            "-o",
            p(&out),
        ],
        "--weights",
    );
    // clap's multi-line messages keep their content on the one line.
    bad(&["reset"], "--base");
}

#[test]
fn hostile_tensor_names_are_refused_and_never_reach_the_terminal_raw() {
    let d = tempfile::tempdir().unwrap();
    let dup = d.path().join("dup.safetensors");
    raw_safetensors(
        &dup,
        r#"{"a.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        4,
    );
    bad(&["diff", p(&dup), p(&dup)], "appears twice");
    let ctl = d.path().join("ctl.safetensors");
    raw_safetensors(
        &ctl,
        r#"{"a\u001b[31m.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        4,
    );
    let e = bad(&["diff", p(&ctl), p(&ctl)], "control characters");
    assert!(!e.contains('\u{1b}'), "raw escape in: {e:?}");
    // A file name with a control character is escaped in the message too.
    let odd = d.path().join("odd\u{7}name");
    let e = bad(&["diff", p(&odd), fxs("llama-base")], "odd");
    assert!(!e.contains('\u{7}'), "{e:?}");
}
