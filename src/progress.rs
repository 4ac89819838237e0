//! The one channel from the library to a person. The library never prints: long jobs report
//! progress through a [`Progress`] counter and say things through a [`Sink`], both provided by
//! the caller. The CLI's sink draws bars and writes lines on stderr; tests and library users
//! pass [`Silent`] (or their own sink) and nothing reaches a terminal.

use std::sync::Arc;

/// What a counter counts, so a sink can show it well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Steps,
}

/// What kind of line the library has to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something the user may want to know about the result (a tensor copied, a font missing).
    Note,
    /// Something that may be wrong with an input.
    Warning,
    /// A line of a long job's log (a stage started, a step's loss).
    Log,
}

/// A running count shown to a person (a progress bar on a terminal).
pub trait Counter: Send + Sync {
    fn inc(&self, n: u64);
    /// A short status shown beside the count (a loss, a speed).
    fn message(&self, msg: &str);
    fn finish(&self);
}

/// Where the library's progress and lines go.
pub trait Sink: Send + Sync {
    fn say(&self, level: Level, text: &str);
    /// A counter for `total` units of `what`, or `None` when this sink shows none (not a
    /// terminal, quiet, or work too small to watch): the caller may then log lines instead.
    fn counter(&self, what: &str, total: u64, unit: Unit) -> Option<Box<dyn Counter>>;
}

/// A sink that says nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Sink for Silent {
    fn say(&self, _: Level, _: &str) {}
    fn counter(&self, _: &str, _: u64, _: Unit) -> Option<Box<dyn Counter>> {
        None
    }
}

/// A counter that may be absent; cheap to clone and share between threads.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Counter>>);

impl Progress {
    /// A byte counter for `total` bytes of `what` from `sink` (hidden if the sink shows none).
    pub fn bytes(sink: &dyn Sink, total: u64, what: &str) -> Self {
        Progress(sink.counter(what, total, Unit::Bytes).map(Arc::from))
    }

    /// A step counter for `total` steps of `what`.
    pub fn steps(sink: &dyn Sink, total: u64, what: &str) -> Self {
        Progress(sink.counter(what, total, Unit::Steps).map(Arc::from))
    }

    pub fn hidden() -> Self {
        Progress(None)
    }

    /// Whether a person sees this counter.
    pub fn is_shown(&self) -> bool {
        self.0.is_some()
    }

    pub fn inc(&self, n: u64) {
        if let Some(c) = &self.0 {
            c.inc(n);
        }
    }

    pub fn message(&self, msg: &str) {
        if let Some(c) = &self.0 {
            c.message(msg);
        }
    }

    pub fn finish(&self) {
        if let Some(c) = &self.0 {
            c.finish();
        }
    }
}
