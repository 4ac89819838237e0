//! The CLI's [`Sink`]: progress bars and lines on stderr. Bars appear only when stderr is a
//! terminal and the work is large enough to be worth watching; everywhere else (pipes, CI,
//! tests) they cost nothing and print nothing. `--quiet` silences notes, logs and bars;
//! warnings too, as before.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use hft::progress::{Counter, Level, Sink, Unit};

/// Byte work below this finishes too fast for a bar to help.
const MIN_BYTES: u64 = 256 << 20;

pub struct Terminal {
    pub quiet: bool,
}

struct Bar(ProgressBar);

impl Counter for Bar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Sink for Terminal {
    fn say(&self, level: Level, text: &str) {
        // Warnings say the result may not be what was asked for: --quiet keeps them.
        if self.quiet && level != Level::Warning {
            return;
        }
        let text = super::flags_in(text);
        match level {
            Level::Note => eprintln!("hft: note: {text}"),
            Level::Warning => eprintln!("hft: warning: {text}"),
            Level::Log => eprintln!("hft: {text}"),
        }
    }

    fn counter(&self, what: &str, total: u64, unit: Unit) -> Option<Box<dyn Counter>> {
        let big = unit == Unit::Steps || total >= MIN_BYTES;
        if self.quiet || !big || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let (template, message) = match unit {
            Unit::Bytes => (
                "{msg:8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                true,
            ),
            Unit::Steps => ("{prefix:>12} [{bar:30}] {pos}/{len} {msg}", false),
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        if message {
            bar.set_message(what.to_string());
        } else {
            bar.set_prefix(what.to_string());
        }
        Some(Box::new(Bar(bar)))
    }
}
