//! The `hft` integration tests, one binary: the CLI end to end (`diff`, `plan`, `reset`,
//! `average`, `merge`, and with the `train` feature `import`, `logits` and `run`) over the
//! committed fixtures and tiny synthetic models, a property test of the checkpoint reader over
//! corrupted files, and the crate's architecture rules. Shared helpers live in [`common`].
//!
//! `cargo test --test hft` runs it all; `cargo test --test hft plan::` runs one area.

mod adversarial;
mod architecture;
#[cfg(feature = "train")]
mod baselines;
mod common;
mod defaults;
#[cfg(feature = "train")]
mod derived;
mod diff;
mod exports;
mod fuzz;
#[cfg(feature = "train")]
mod import;
mod mergekit;
mod moe;
mod outputs;
mod plan;
#[cfg(feature = "train")]
mod prior;
#[cfg(feature = "train")]
mod run;
mod surgery;
