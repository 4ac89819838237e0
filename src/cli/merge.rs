//! `hft merge`: task arithmetic, TIES, DARE and selective merging. Which method takes which
//! parameter is the library's to say (`Method::params`); this file only reads the flags.

use std::path::PathBuf;

use clap::Args;

use hft::defaults;
use hft::error::Result;
use hft::io::Checkpoint;
use hft::progress::Level;
use hft::progress::Sink;
use hft::surgery::average::Linear;
use hft::surgery::gta::Gta;
use hft::surgery::merge::{Method, Params};
use hft::surgery::mergekit::{self, Definitions};

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
    hft merge --method select base/ tuned/ --probs 0.5,0.5 --seed 7 -o half/   # element half-reset\n  \
    hft merge --config mergekit.yml -o out/            # a mergekit config (docs/surgery.md)\n  \
    hft merge --method ties --definitions mergekit --base base/ m1/ m2/ -o out/")]
pub struct MergeArgs {
    /// The merge method.
    #[arg(long, value_parser = choice::<Method>(), required_unless_present = "config")]
    pub method: Option<Method>,
    /// The common base model the task vectors are taken from (not for select).
    #[arg(long, value_name = "BASE")]
    pub base: Option<PathBuf>,
    /// The models to merge.
    #[arg(required_unless_present = "config", num_args = 1.., value_name = "MODEL")]
    pub models: Vec<PathBuf>,
    /// A mergekit config (merge_method linear, task_arithmetic, ties or dare_linear; models
    /// with weight and density; base_model; dtype) instead of the method, models and values.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["method", "base", "models", "weights", "lambda", "density", "drop", "probs"])]
    pub config: Option<PathBuf>,
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
    /// Whose definitions of task-arithmetic, ties and dare to follow: mergekit's (its working
    /// dtype and rounding, exactly int(density·n) kept, DARE rescaled to the L1 norm; the
    /// default with --config) or hft's (f32 rounded once; the default otherwise).
    #[arg(long, value_parser = choice::<Definitions>(), value_name = "WHOSE")]
    pub definitions: Option<Definitions>,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn run(a: &MergeArgs, sink: &dyn Sink) -> Result<String> {
    if let Some(c) = &a.config {
        return from_config(a, c, sink);
    }
    let method = a.method.expect("clap requires --method without --config");
    let list = |s: &Option<String>, flag: &str| s.as_deref().map(|s| numbers(s, flag)).transpose();
    let params = Params {
        weights: list(&a.weights, "--weights")?,
        lambda: a.lambda,
        density: a.density,
        drop: a.drop,
        probs: list(&a.probs, "--probs")?,
        seed: a.seed,
    };
    let merge = method.build(a.models.len(), a.base.is_some(), &params)?;
    let defs = a.definitions.unwrap_or(Definitions::Hft);
    let mk = match defs {
        Definitions::Hft => None,
        Definitions::Mergekit => Some(as_mergekit(method, &params, a.models.len())?),
    };
    let out = a.out.output()?;
    let base = a.base.as_ref().map(|p| open(p, sink)).transpose()?;
    let models = a
        .models
        .iter()
        .map(|p| open(p, sink))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<&Checkpoint> = base.iter().chain(models.iter()).collect();
    debug_assert_eq!(merge.with_base, base.is_some());
    let mut p = used(method, &params, a.models.len());
    p["base"] = serde_json::json!(a.base.as_ref().map(|b| b.display().to_string()));
    p["definitions"] = serde_json::json!(defs.as_str());
    let combine: &dyn hft::surgery::Combine = match &mk {
        Some(g) => g,
        None => merge.combine.as_ref(),
    };
    write(a, &inputs, merge.primary, combine, &out, p, sink)
}

/// `method` with `params` as mergekit defines it (task-arithmetic, ties, dare).
fn as_mergekit(method: Method, params: &Params, n: usize) -> Result<Gta> {
    let (name, density) = match method {
        Method::TaskArithmetic => ("task_arithmetic", 1.0),
        Method::Ties => ("ties", params.density.unwrap_or(defaults::DENSITY)),
        Method::Dare => ("dare_linear", 1.0 - params.drop.unwrap_or(defaults::DROP)),
        Method::Select => {
            return Err(hft::Error::usage(
                "--definitions mergekit applies to task-arithmetic, ties and dare (select is hft's own)",
            ))
        }
    };
    let weights = params.weights.clone().unwrap_or(vec![1.0; n]);
    let mut g = Gta::of(name, weights, vec![density; n]).expect("a mergekit method");
    g.lambda = params.lambda.unwrap_or(defaults::LAMBDA);
    g.seed = params.seed;
    g.check()?;
    Ok(g)
}

/// The values `method` used, defaults filled in; those it ignores are left out.
fn used(method: Method, params: &Params, n: usize) -> serde_json::Value {
    let mut p = serde_json::json!({ "method": method.as_str() });
    if !matches!(method, Method::Select) {
        p["weights"] = serde_json::json!(params.weights.clone().unwrap_or(vec![1.0; n]));
        p["lambda"] = serde_json::json!(params.lambda.unwrap_or(defaults::LAMBDA));
    }
    match method {
        Method::Ties => {
            p["density"] = serde_json::json!(params.density.unwrap_or(defaults::DENSITY))
        }
        Method::Dare => p["drop"] = serde_json::json!(params.drop.unwrap_or(defaults::DROP)),
        Method::Select => {
            p["probs"] = serde_json::json!(params.probs.clone().unwrap_or(vec![1.0 / n as f64; n]))
        }
        _ => {}
    }
    if matches!(method, Method::Dare | Method::Select) {
        p["seed"] = serde_json::json!(params.seed);
    }
    p
}

/// Runs the merge and, with `--format json`, returns its summary with `params`.
fn write(
    a: &MergeArgs,
    inputs: &[&Checkpoint],
    primary: usize,
    combine: &dyn hft::surgery::Combine,
    out: &hft::surgery::Output,
    params: serde_json::Value,
    sink: &dyn Sink,
) -> Result<String> {
    let outcome = execute(inputs, primary, combine, out, "merge", sink)?;
    Ok(if a.out.json() {
        summary("merge", inputs, params, &outcome, out)
    } else {
        String::new()
    })
}

/// `hft merge --config mergekit.yml`: the config's models, method and values, hft's
/// definitions (see `hft::surgery::mergekit`).
fn from_config(a: &MergeArgs, path: &std::path::Path, sink: &dyn Sink) -> Result<String> {
    let defs = a.definitions.unwrap_or(Definitions::Mergekit);
    let cfg = mergekit::read(path, defs)?;
    for n in &cfg.notes {
        sink.say(Level::Note, &format!("{}: {n}", path.display()));
    }
    let mut out = a.out.output()?;
    hft::io::output::check_inputs(&out.path, &[path])?;
    if out.dtype.is_none() {
        out.dtype = cfg.dtype;
    }
    let base = cfg.base.as_ref().map(|p| open(p, sink)).transpose()?;
    let models = cfg
        .models
        .iter()
        .map(|p| open(p, sink))
        .collect::<Result<Vec<_>>>()?;
    let config = serde_json::json!(path.display().to_string());
    let defs_name = serde_json::json!(defs.as_str());
    match &cfg.job {
        mergekit::Job::Linear { weights, normalize } => {
            let linear = Linear::new(weights.clone(), *normalize)?;
            let inputs: Vec<&Checkpoint> = models.iter().collect();
            let p = serde_json::json!({"method": "linear", "weights": weights,
                                       "normalize": normalize, "config": config,
                                       "definitions": defs_name});
            write(a, &inputs, 0, &linear, &out, p, sink)
        }
        mergekit::Job::Merge { method, params } => {
            let merge = method.build(models.len(), true, params)?;
            let inputs: Vec<&Checkpoint> = base.iter().chain(models.iter()).collect();
            let mut p = used(*method, params, models.len());
            p["config"] = config;
            p["definitions"] = defs_name;
            write(
                a,
                &inputs,
                merge.primary,
                merge.combine.as_ref(),
                &out,
                p,
                sink,
            )
        }
        mergekit::Job::Mergekit(g) => {
            let mut g = g.clone();
            g.seed = a.seed;
            g.check()?;
            let inputs: Vec<&Checkpoint> = base.iter().chain(models.iter()).collect();
            let p = serde_json::json!({"method": cfg.method, "weights": g.weights,
                "densities": g.densities, "normalize": g.normalize, "rescale": g.rescale,
                "lambda": g.lambda, "seed": g.seed, "config": config, "definitions": defs_name,
                "dtype": g.dtype.map(hft::io::dtype::name)});
            write(a, &inputs, 1, &g, &out, p, sink)
        }
    }
}
