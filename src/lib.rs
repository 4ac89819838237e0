//! `hft`: checkpoint surgery around Half Fine-Tuning (HFT) of large language models.
//!
//! The library behind the `hft` binary: checkpoint I/O ([`io`]), tensor-name layout
//! ([`layout`]), change statistics ([`stats`], [`diff`]) and report rendering ([`report`]).
//! Everything streams tensor by tensor from memory maps; nothing loads a whole model.

pub mod cli;
pub mod commands;
pub mod diff;
pub mod error;
#[cfg(feature = "train")]
pub mod import;
pub mod io;
pub mod layout;
pub mod plan;
pub mod progress;
pub mod report;
pub mod rng;
pub mod select;
pub mod stats;
pub mod surgery;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Error, Result};
