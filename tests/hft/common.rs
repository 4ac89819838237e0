//! Helpers shared by the test modules: the `hft` command, the committed fixtures, running a
//! command that must succeed, and reading JSON files back.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The `hft` binary built for these tests, with no arguments (so the default thread count).
pub(crate) fn hft_bin() -> Command {
    Command::cargo_bin("hft").unwrap()
}

/// The `hft` binary with `--threads <threads>` (the worker pool size) set before any subcommand.
pub(crate) fn hft(threads: usize) -> Command {
    let mut c = hft_bin();
    c.arg("--threads").arg(threads.to_string());
    c
}

/// The committed fixtures directory, `<crate root>/fixtures`.
pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// One committed fixture (a checkpoint directory such as `llama-base`).
pub(crate) fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// Runs `cmd` with `args`, asserts success (showing stderr otherwise) and returns stdout.
pub(crate) fn run_ok(mut cmd: Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "hft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A JSON file parsed (reports, run state, config.json, manifests).
pub(crate) fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
