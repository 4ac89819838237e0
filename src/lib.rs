//! `hft`: checkpoint surgery and Half Fine-Tuning (HFT) of large language models.
//!
//! The library behind the `hft` binary (whose command line lives in `src/cli/`, outside the
//! library). Its layers, each using only those below it (checked by `tests/hft/architecture.rs`):
//!
//! 1. rendering ([`report`]): tables, CSV, JSON, Markdown and plots of the structs below
//!    (training reaches it only through the [`train::Reporter`] its caller passes);
//! 2. training and import ([`train`], [`import`], [`tokenizer`]; the `train` feature);
//! 3. surgery, plans and selection ([`surgery`], [`plan`], [`select`]);
//! 4. analysis ([`analysis`]): per-tensor statistics, exact aggregation, diffs;
//! 5. architecture knowledge ([`arch`]): families, names, shapes, categories;
//! 6. I/O ([`io`]): checkpoints, the writer, the output policy, dtypes.
//!
//! Beside them: [`error`], [`rng`], [`progress`] (the sink the caller provides; the library
//! never prints), [`choice`] and [`defaults`]. [`fixtures`] (generators of test inputs) exists
//! only for tests and examples. Everything streams tensor by tensor from memory maps.

pub mod analysis;
pub mod arch;
pub mod choice;
pub mod defaults;
pub mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
#[cfg(feature = "train")]
pub mod import;
pub mod io;
pub mod plan;
pub mod progress;
pub mod report;
pub mod rng;
pub mod select;
pub mod surgery;
#[cfg(feature = "train")]
pub mod tokenizer;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Error, Result};
