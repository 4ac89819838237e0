//! `hft plan`: which parameters train in a stage. Builds (or checks) a plan with the
//! selection library, then prints its map, writes it, or exports it for a trainer.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Args};

use hft::defaults;
use hft::error::{Error, Result};
use hft::io::{atomic, output, Checkpoint};
use hft::plan::export::{self, Emit};
use hft::plan::Plan;
use hft::progress::{Level, Sink};
use hft::report;
use hft::select::{self, Balance, LisaOptions, ModelInfo, Prefer, SelectOptions, Strategy};

use super::{choice, Terminal};

hft::choice! {
    /// Whether a part trains.
    pub enum TrainFreeze {
        Train = "train",
        Freeze = "freeze",
    }
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
    hft plan --check stage2.plan.yaml MODEL                  # does this plan fit this model?\n  \
    hft plan runs/r/00-sft --from runs/r/01-dpo/plan.yaml --emit swift   # a run's derived plan")]
pub struct PlanArgs {
    /// The model: a checkpoint (.safetensors file, directory, sharded index) or a config.json
    /// (shapes computed for Llama-like families). Only headers are read, unless --strategy
    /// magnitude needs the weights.
    pub model: PathBuf,
    /// How to choose what trains.
    #[arg(long, value_parser = choice::<Strategy>(), default_value = "category")]
    pub strategy: Strategy,
    /// Fraction that trains, in [0, 1] (default 0.5). Per-category counts scale with it; the
    /// plan's notes say how they rounded. Not for lisa (use --lisa-layers).
    #[arg(long, value_name = "R")]
    pub ratio: Option<f64>,
    /// Seed of every random draw (counter-based: the same seed gives the same plan anywhere).
    #[arg(long, default_value_t = defaults::SEED, value_name = "N")]
    pub seed: u64,
    /// Training stage: each stage redraws deterministically from the same seed.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub stage: u64,
    /// category only: `params` picks, among the matrices the count rule allows, those whose
    /// parameter count is closest to the ratio (grouped-query attention makes k/v smaller).
    #[arg(long, value_parser = choice::<Balance>(), default_value = "none")]
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
    #[arg(long, value_parser = choice::<TrainFreeze>(), value_name = "WHAT")]
    pub final_norm: Option<TrainFreeze>,
    /// delta: a previous stage's `hft diff --format json` (of this model).
    #[arg(long, value_name = "FILE")]
    pub diff: Option<PathBuf>,
    /// delta and magnitude: train the matrices with the least or the most change/weight
    /// (defaults: delta least, magnitude most).
    #[arg(long, value_parser = choice::<Prefer>())]
    pub prefer: Option<Prefer>,
    /// lisa: layers that train per period (gamma).
    #[arg(long, default_value_t = defaults::LISA_LAYERS, value_name = "N")]
    pub lisa_layers: usize,
    /// lisa: optimizer steps per period (K).
    #[arg(long, default_value_t = defaults::LISA_INTERVAL, value_name = "STEPS")]
    pub lisa_interval: u64,
    /// lisa: how many periods the schedule lists.
    #[arg(long, default_value_t = defaults::LISA_PERIODS as u32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub lisa_periods: u32,
    /// lisa: the period whose state the plan's tensors (and name/regex exports) show.
    #[arg(long, default_value_t = 0, value_name = "P")]
    pub period: u64,
    /// Output form: yaml (the plan file), json, names, regex, axolotl, swift (an ms-swift
    /// config), llamafactory, torch.
    #[arg(long, value_parser = choice::<Emit>())]
    pub emit: Option<Emit>,
    /// Write to FILE (atomically) instead of stdout; the map goes to stderr.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace an existing FILE that hft wrote (never an input, nor any other file).
    #[arg(long, requires = "output")]
    pub force: bool,
    /// Check that the plan file PLAN fits MODEL (names and shapes); exit 2 if not.
    #[arg(long, value_name = "PLAN", conflicts_with_all = ["emit", "output"])]
    pub check: Option<PathBuf>,
    /// Print, write or export the plan file PLAN (checked against MODEL) instead of drawing
    /// one: how a plan `hft run` derived (a stage's plan.yaml) reaches the PyTorch trainers.
    /// The drawing flags (--strategy, --ratio, ...) do not apply, and are refused with it.
    #[arg(long, value_name = "PLAN", conflicts_with_all = [
        "check", "strategy", "ratio", "seed", "stage", "balance", "include", "exclude",
        "train_embeddings", "freeze_embeddings", "train_head", "freeze_head", "train_norms",
        "freeze_norms", "final_norm", "diff", "prefer", "lisa_layers", "lisa_interval",
        "lisa_periods", "period",
    ])]
    pub from: Option<PathBuf>,
}

pub fn run(args: &PlanArgs, sink: &Terminal) -> Result<String> {
    let model = ModelInfo::open(&args.model)?;
    if let Some(path) = &args.check {
        return check(path, &model);
    }
    if let Some(out) = &args.output {
        let mut inputs = vec![args.model.as_path()];
        inputs.extend(args.diff.as_deref());
        inputs.extend(args.from.as_deref());
        output::check(out, output::Kind::File, &inputs, args.force)?;
    }
    let plan = match &args.from {
        Some(path) => {
            let plan = Plan::read(path)?;
            fits(path, &plan, &model)?;
            plan
        }
        None => {
            let opts = options(args)?;
            let weights = if args.strategy == Strategy::Magnitude && !model.is_config_only() {
                Some(Checkpoint::open(&args.model)?)
            } else {
                None
            };
            select::build(&model, &opts, weights.as_ref())?
        }
    };
    let map = report::plan::map(&model, &plan);
    // What an export cannot say (partial tensors listed whole, a schedule's one period) is a
    // warning: it shows with --quiet too.
    let note = |s: &str| sink.say(Level::Warning, s);
    match (&args.output, args.emit) {
        (None, None) => Ok(map),
        (None, Some(how)) => {
            let e = export::emit(&plan, &model.layout, how)?;
            e.notes.iter().for_each(|n| note(n));
            Ok(e.text)
        }
        (Some(out), how) => {
            let e = export::emit(&plan, &model.layout, how.unwrap_or(Emit::Yaml))?;
            atomic::write_file(out, e.text.as_bytes())?;
            if !sink.quiet {
                eprint!("{map}");
            }
            e.notes.iter().for_each(|n| note(n));
            sink.say(Level::Log, &format!("wrote {}", out.display()));
            Ok(String::new())
        }
    }
}

fn options(a: &PlanArgs) -> Result<SelectOptions> {
    if a.strategy == Strategy::Lisa && a.ratio.is_some() {
        return Err(Error::usage(
            "--strategy lisa takes --lisa-layers (layers per period), not --ratio",
        ));
    }
    let both = |t: bool, f: bool| match (t, f) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let mut o = SelectOptions::new(a.strategy, a.ratio.unwrap_or(defaults::RATIO), a.seed);
    o.stage = a.stage;
    o.balance = a.balance;
    o.include = a.include.clone();
    o.exclude = a.exclude.clone();
    o.embeddings = both(a.train_embeddings, a.freeze_embeddings);
    o.head = both(a.train_head, a.freeze_head);
    o.norms = both(a.train_norms, a.freeze_norms);
    o.final_norm = a.final_norm.map(|f| f == TrainFreeze::Train);
    o.diff = a.diff.clone();
    o.prefer = a.prefer;
    o.lisa = LisaOptions {
        layers: a.lisa_layers,
        interval: a.lisa_interval,
        periods: a.lisa_periods as usize,
        period: a.period,
    };
    Ok(o)
}

/// Refuses a plan file that does not fit the model, naming the file.
fn fits(path: &Path, plan: &Plan, model: &ModelInfo) -> Result<()> {
    plan.check(&model.source, model.names_shapes())
        .map_err(|e| match e {
            Error::Input { msg, .. } => Error::input(
                path,
                format!("does not fit {}: {msg}", model.source.display()),
            ),
            other => other,
        })
}

fn check(path: &Path, model: &ModelInfo) -> Result<String> {
    let plan = Plan::read(path)?;
    fits(path, &plan, model)?;
    let a = &plan.summary.all;
    Ok(format!(
        "ok: {} fits {} ({} model, {} tensors): strategy {}, {:.1}% of {} parameters train\n",
        path.display(),
        model.source.display(),
        model.layout.family_name(),
        model.tensors.len(),
        plan.strategy,
        a.fraction * 100.0,
        a.total
    ))
}
