//! `hft merge`: task arithmetic, TIES, DARE and selective merging. Which method takes which
//! parameter is the library's to say (`Method::params`); this file only reads the flags.

use std::path::PathBuf;

use clap::Args;

use hft::defaults;
use hft::error::Result;
use hft::io::Checkpoint;
use hft::progress::Sink;
use hft::surgery::merge::{Method, Params};

use super::output::{execute, summary};
use super::output::{numbers, OutputArgs};
use super::{choice, open};

/// Merge fine-tunes of one base: task arithmetic, TIES, DARE, or per-element selection.
///
/// Task vectors are dᵢ = Mᵢ − BASE. Arithmetic in f32, rounded once to the output dtype. Random
/// draws (dare, select) are pure functions of (seed, tensor name, element index), so a merge is
/// reproducible anywhere. Config, tokenizer and metadata come from the first model.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft merge --method task-arithmetic --base base/ math/ code/ --lambda 0.8 -o out/\n  \
    hft merge --method ties --base base/ m1/ m2/ m3/ --density 0.2 -o out/\n  \
    hft merge --method dare --base base/ m1/ m2/ --drop 0.9 --seed 1 -o out/\n  \
    hft merge --method select base/ tuned/ --probs 0.5,0.5 --seed 7 -o half/   # element half-reset")]
pub struct MergeArgs {
    /// The merge method.
    #[arg(long, value_parser = choice::<Method>())]
    pub method: Method,
    /// The common base model the task vectors are taken from (not for select).
    #[arg(long, value_name = "BASE")]
    pub base: Option<PathBuf>,
    /// The models to merge.
    #[arg(required = true, num_args = 1.., value_name = "MODEL")]
    pub models: Vec<PathBuf>,
    /// Comma-separated task-vector weights wᵢ, one per model (default: 1 each).
    #[arg(long, value_name = "W1,W2,..")]
    pub weights: Option<String>,
    /// Scale λ of the merged task vector (default 1).
    #[arg(long, value_name = "L")]
    pub lambda: Option<f64>,
    /// ties: fraction of each task vector kept (largest magnitudes; default 0.2).
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,
    /// dare: drop rate p of task-vector entries (default 0.9).
    #[arg(long, value_name = "P")]
    pub drop: Option<f64>,
    /// select: comma-separated probabilities, one per model (default: equal).
    #[arg(long, value_name = "P1,P2,..")]
    pub probs: Option<String>,
    /// Seed of the random draws (dare, select).
    #[arg(long, default_value_t = defaults::SEED, value_name = "S")]
    pub seed: u64,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn run(a: &MergeArgs, sink: &dyn Sink) -> Result<String> {
    let list = |s: &Option<String>, flag: &str| s.as_deref().map(|s| numbers(s, flag)).transpose();
    let params = Params {
        weights: list(&a.weights, "--weights")?,
        lambda: a.lambda,
        density: a.density,
        drop: a.drop,
        probs: list(&a.probs, "--probs")?,
        seed: a.seed,
    };
    let merge = a.method.build(a.models.len(), a.base.is_some(), &params)?;
    let out = a.out.output()?;
    let base = a.base.as_ref().map(|p| open(p, sink)).transpose()?;
    let models = a
        .models
        .iter()
        .map(|p| open(p, sink))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<&Checkpoint> = base.iter().chain(models.iter()).collect();
    debug_assert_eq!(merge.with_base, base.is_some());
    let outcome = execute(
        &inputs,
        merge.primary,
        merge.combine.as_ref(),
        &out,
        "merge",
        sink,
    )?;
    Ok(if a.out.json() {
        // The values the method used, defaults filled in; those it ignores are left out.
        let n = a.models.len();
        let mut p = serde_json::json!({
            "method": a.method.as_str(),
            "base": a.base.as_ref().map(|b| b.display().to_string()),
        });
        let with_base = !matches!(a.method, Method::Select);
        if with_base {
            p["weights"] = serde_json::json!(params.weights.clone().unwrap_or(vec![1.0; n]));
            p["lambda"] = serde_json::json!(params.lambda.unwrap_or(defaults::LAMBDA));
        }
        match a.method {
            Method::Ties => {
                p["density"] = serde_json::json!(params.density.unwrap_or(defaults::DENSITY))
            }
            Method::Dare => p["drop"] = serde_json::json!(params.drop.unwrap_or(defaults::DROP)),
            Method::Select => {
                p["probs"] =
                    serde_json::json!(params.probs.clone().unwrap_or(vec![1.0 / n as f64; n]))
            }
            _ => {}
        }
        if matches!(a.method, Method::Dare | Method::Select) {
            p["seed"] = serde_json::json!(params.seed);
        }
        summary("merge", &inputs, p, &outcome, &out)
    } else {
        String::new()
    })
}
