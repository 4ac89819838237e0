//! Analysis: per-tensor change statistics, aggregated exactly per layer, category and model
//! ([`stats`]), and the diff of two checkpoints built on them ([`diff`]).

pub mod diff;
pub mod stats;
