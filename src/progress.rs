//! Progress bars on stderr, shown only when stderr is a terminal and the work is large enough
//! to be worth watching; everywhere else (pipes, CI, tests) they cost nothing and print nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Work below this many bytes finishes too fast for a bar to help.
const MIN_BYTES: u64 = 256 << 20;

#[derive(Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    /// A byte-counting bar labelled `what`; hidden when `quiet`, when stderr is not a terminal,
    /// or when `total` is small.
    pub fn bytes(total: u64, what: &str, quiet: bool) -> Self {
        let show = !quiet && total >= MIN_BYTES && std::io::stderr().is_terminal();
        if !show {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Progress(bar)
    }

    pub fn hidden() -> Self {
        Progress(ProgressBar::hidden())
    }

    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
