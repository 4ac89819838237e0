//! `hft plan`: arguments only; the work is in `crate::select` and `crate::plan`.

use std::path::PathBuf;

use clap::{ArgAction, Args, ValueEnum};

use crate::plan::export::Emit;
use crate::select::{Balance, Prefer, Strategy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrainFreeze {
    Train,
    Freeze,
}

/// Which parameters train in a stage: write a freeze plan, print it as a map, or export it.
///
/// With neither -o nor --emit the plan is printed as a map: one line per layer showing which
/// of q k v o / gate up down / norms train (a dot: frozen, ~: trains in part) and the layer's
/// realised parameter fraction. With -o the plan file is written (YAML unless --emit says
/// otherwise) and the map goes to stderr. --check says whether an existing plan fits MODEL.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft plan MODEL                                          # category rule, map on stdout\n  \
    hft plan MODEL --strategy category --ratio 0.5 --seed 7 --stage 2 -o stage2.plan.yaml\n  \
    hft plan MODEL --balance params                          # GQA: balance parameters, not counts\n  \
    hft plan MODEL --emit regex                              # ms-swift --trainable_parameters_regex\n  \
    hft plan MODEL --emit axolotl >> axolotl.yaml            # unfrozen_parameters\n  \
    hft plan MODEL --strategy layer --emit names             # one trainable tensor a line\n  \
    hft plan MODEL --strategy element --ratio 0.4 --emit torch > hft_plan.py\n  \
    hft plan MODEL --strategy delta --diff prev.json --ratio 0.5 [--prefer most]\n  \
    hft plan MODEL --strategy lisa --lisa-layers 2 --lisa-interval 20 --emit torch\n  \
    hft plan MODEL --include 'lm_head' --exclude 'layers\\.0\\.'\n  \
    hft plan config.json                                     # shapes from the config alone\n  \
    hft plan --check stage2.plan.yaml MODEL                  # does this plan fit this model?")]
pub struct PlanArgs {
    /// The model: a checkpoint (.safetensors file, directory, sharded index) or a config.json
    /// (shapes computed for Llama-like families). Only headers are read, unless --strategy
    /// magnitude needs the weights.
    pub model: PathBuf,
    /// How to choose what trains.
    #[arg(long, value_enum, default_value = "category")]
    pub strategy: Strategy,
    /// Fraction that trains, in [0, 1] (default 0.5). Per-category counts scale with it; the
    /// plan's notes say how they rounded. Not for lisa (use --lisa-layers).
    #[arg(long, value_name = "R")]
    pub ratio: Option<f64>,
    /// Seed of every random draw (counter-based: the same seed gives the same plan anywhere).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Training stage: each stage redraws deterministically from the same seed.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub stage: u64,
    /// category only: `params` picks, among the matrices the count rule allows, those whose
    /// parameter count is closest to the ratio (grouped-query attention makes k/v smaller).
    #[arg(long, value_enum, default_value = "none")]
    pub balance: Balance,
    /// Force tensors whose name matches REGEX (searched, not anchored) to train; repeatable.
    #[arg(long, value_name = "REGEX", action = ArgAction::Append)]
    pub include: Vec<String>,
    /// Force tensors whose name matches REGEX to stay frozen (wins over --include); repeatable.
    #[arg(long, value_name = "REGEX", action = ArgAction::Append)]
    pub exclude: Vec<String>,
    /// Embeddings train (the default of every strategy but none).
    #[arg(long, conflicts_with = "freeze_embeddings")]
    pub train_embeddings: bool,
    /// Embeddings (token and position) stay frozen.
    #[arg(long)]
    pub freeze_embeddings: bool,
    /// The LM head trains (default). No effect on tied models: the embeddings flag decides.
    #[arg(long, conflicts_with = "freeze_head")]
    pub train_head: bool,
    /// The LM head stays frozen.
    #[arg(long)]
    pub freeze_head: bool,
    /// Every layer norm and the final norm train, instead of the draw.
    #[arg(long, conflicts_with = "freeze_norms")]
    pub train_norms: bool,
    /// Every layer norm and the final norm stay frozen.
    #[arg(long)]
    pub freeze_norms: bool,
    /// The final norm alone (default: train, as the known reimplementation of HFT does).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub final_norm: Option<TrainFreeze>,
    /// delta: a previous stage's `hft diff --format json` (of this model).
    #[arg(long, value_name = "FILE")]
    pub diff: Option<PathBuf>,
    /// delta and magnitude: train the matrices with the least or the most change/weight
    /// (defaults: delta least, magnitude most).
    #[arg(long, value_enum)]
    pub prefer: Option<Prefer>,
    /// lisa: layers that train per period (gamma).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub lisa_layers: usize,
    /// lisa: optimizer steps per period (K).
    #[arg(long, default_value_t = 20, value_name = "STEPS")]
    pub lisa_interval: u64,
    /// lisa: how many periods the schedule lists.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub lisa_periods: usize,
    /// lisa: the period whose state the plan's tensors (and name/regex exports) show.
    #[arg(long, default_value_t = 0, value_name = "P")]
    pub period: u64,
    /// Output form: yaml (the plan file), json, names, regex, axolotl, llamafactory, torch.
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// Write to FILE (atomically) instead of stdout; the map goes to stderr.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Check that the plan file PLAN fits MODEL (names and shapes); exit 2 if not.
    #[arg(long, value_name = "PLAN", conflicts_with_all = ["emit", "output"])]
    pub check: Option<PathBuf>,
}
