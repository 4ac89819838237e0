//! `hft reset`: half-reset, a part of TUNED put back to BASE.

use std::path::PathBuf;

use clap::Args;

use hft::arch::Layout;
use hft::defaults;
use hft::error::Result;
use hft::plan::Plan;
use hft::progress::Sink;
use hft::report;
use hft::surgery::reset::{self, Reset, ResetReport, ResetStrategy};

use super::output::{execute, summary, OutputArgs};
use super::{choice, open};

/// Put part of a fine-tuned model back to its base values (the HFT paper's half-reset).
///
/// Writes TUNED with a chosen part of its parameters reset to BASE. The part comes from a
/// selection strategy (the same machinery as `hft plan`), from a plan file (what the plan
/// freezes is reset, what it trains is kept), or from a list of tensor names. Embeddings and the
/// LM head always train in the paper's rule, so they are not reset unless asked. Prints per
/// layer which tensors were reset and the fraction of parameters reset.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft reset --base base/ --tuned tuned/ --ratio 0.5 --strategy category --seed 7 -o half/\n  \
    hft reset --base base/ --tuned tuned/ --strategy element --ratio 0.3 -o out/\n  \
    hft reset --base base/ --tuned tuned/ --plan plan.yaml -o out/   # reset what the plan freezes\n  \
    hft reset --base base/ --tuned tuned/ --names frozen.txt -o out/")]
pub struct ResetArgs {
    /// The model to reset towards (the previous stage, usually the pretrained base).
    #[arg(long, value_name = "BASE")]
    pub base: PathBuf,
    /// The fine-tuned model whose parameters are partly reset.
    #[arg(long, value_name = "TUNED")]
    pub tuned: PathBuf,
    /// Fraction of the parameters in the draw that are reset, in [0, 1].
    #[arg(long, default_value_t = defaults::RATIO, value_name = "R", conflicts_with_all = ["plan", "names"])]
    pub ratio: f64,
    /// How the reset part is drawn.
    #[arg(long, value_parser = choice::<ResetStrategy>(), default_value = "category", conflicts_with_all = ["plan", "names"])]
    pub strategy: ResetStrategy,
    /// Seed of the draw: the same seed gives the same reset on any machine.
    #[arg(long, default_value_t = defaults::SEED, value_name = "S", conflicts_with_all = ["plan", "names"])]
    pub seed: u64,
    /// Training stage whose draw to use (each stage of a sequence draws afresh).
    #[arg(long, default_value_t = 0, value_name = "K", conflicts_with_all = ["plan", "names"])]
    pub stage: u64,
    /// Take the selection from a plan file (`hft plan`): frozen parts are reset.
    #[arg(long, value_name = "FILE", conflicts_with = "names")]
    pub plan: Option<PathBuf>,
    /// Reset exactly the tensors named in FILE (one name a line, `#` comments).
    #[arg(long, value_name = "FILE")]
    pub names: Option<PathBuf>,
    /// Also reset the token (and position) embeddings.
    #[arg(long, conflicts_with_all = ["plan", "names"])]
    pub reset_embeddings: bool,
    /// Also reset the LM head (absent when embeddings are tied).
    #[arg(long, conflicts_with_all = ["plan", "names"])]
    pub reset_head: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn run(a: &ResetArgs, sink: &dyn Sink) -> Result<String> {
    let base = open(&a.base, sink)?;
    let tuned = open(&a.tuned, sink)?;
    let out = a.out.output()?;
    let side_inputs: Vec<&std::path::Path> =
        a.plan.iter().chain(&a.names).map(|p| p.as_path()).collect();
    hft::io::output::check_inputs(&out.path, &side_inputs)?;
    let layout = Layout::for_checkpoint(&tuned);
    let (plan, headline) = if let Some(p) = &a.plan {
        let plan = Plan::read(p)?;
        reset::check_plan(&plan, p, &tuned)?;
        let head = format!(
            "reset what plan {} freezes (strategy {}, trains {:.3}, seed {}, stage {})",
            p.display(),
            plan.strategy,
            plan.ratio,
            plan.seed,
            plan.stage
        );
        (plan, head)
    } else if let Some(p) = &a.names {
        let text = hft::io::input::read_text(p, hft::io::input::SMALL)?;
        let plan = reset::plan_from_names(&tuned, &text, p)?;
        (plan, format!("reset the tensors listed in {}", p.display()))
    } else {
        let s = reset::StrategyRequest {
            strategy: a.strategy,
            ratio: a.ratio,
            seed: a.seed,
            stage: a.stage,
            reset_embeddings: a.reset_embeddings,
            reset_head: a.reset_head,
        };
        let plan = reset::strategy_plan(&tuned, &s)?;
        let head = format!(
            "reset strategy {}, ratio {}, seed {}, stage {}",
            a.strategy.as_str(),
            a.ratio,
            a.seed,
            a.stage
        );
        (plan, head)
    };
    let report = ResetReport::new(&plan, &tuned, &layout);
    let p = serde_json::json!({
        "how": headline,
        "strategy": plan.strategy,
        "ratio": plan.ratio,
        "seed": plan.seed,
        "stage": plan.stage,
        "plan": a.plan.as_ref().map(|p| p.display().to_string()),
        "names": a.names.as_ref().map(|p| p.display().to_string()),
    });
    let inputs = [&base, &tuned];
    let outcome = execute(&inputs, reset::TUNED, &Reset { plan }, &out, "reset", sink)?;
    Ok(if a.out.json() {
        summary("reset", &inputs, p, &outcome, &out)
    } else {
        report::reset::table(&report, &headline)
    })
}
