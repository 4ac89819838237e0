//! `hft reset`, `hft average`, `hft merge`: argument checks, then one call into
//! [`crate::surgery::run`] each. Every check that can fail on user input runs before the
//! output is created.

use std::path::Path;

use crate::cli::{AverageArgs, MergeArgs, MergeMethod, OutputArgs, ResetArgs};
use crate::error::{Error, Result};
use crate::io::writer::parse_size;
use crate::io::{dtype, Checkpoint};
use crate::layout::Layout;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::surgery::average::{AverageConfig, Linear};
use crate::surgery::merge::{Select, TaskArithmetic, Ties};
use crate::surgery::reset::{self, Reset, ResetReport};
use crate::surgery::{self, parse_list, Combine, Outcome, Output};

use super::open;

/// TIES paper default: keep the top 20% of each task vector.
const DEFAULT_DENSITY: f64 = 0.2;
/// DARE paper headline setting: drop 90% of each task vector.
const DEFAULT_DROP: f64 = 0.9;

fn output(a: &OutputArgs) -> Result<Output> {
    let mut out = Output::new(&a.output);
    out.dtype = a.dtype.as_deref().map(dtype::parse_float).transpose()?;
    out.max_shard_bytes = parse_size(&a.max_shard_size)?;
    out.force = a.force;
    out.allow_missing = a.allow_missing;
    out.command = command_line();
    Ok(out)
}

/// The command line as a shell would need it typed, for the output's provenance metadata.
fn command_line() -> String {
    let mut args = std::env::args();
    let first = args.next().map(|p| {
        Path::new(&p)
            .file_name()
            .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
    });
    first
        .into_iter()
        .chain(args)
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn execute(
    inputs: &[&Checkpoint],
    primary: usize,
    combine: &dyn Combine,
    out: &Output,
    what: &str,
    quiet: bool,
) -> Result<Outcome> {
    let progress = Progress::bytes(surgery::input_bytes(inputs), what, quiet);
    let outcome = surgery::run(inputs, primary, combine, out, &progress)?;
    if !quiet {
        for (name, i) in &outcome.copied_missing {
            eprintln!(
                "hft: note: `{name}` copied from {} (not in every input)",
                inputs[*i].display_name()
            );
        }
        for (name, shared, extra, i) in &outcome.resized {
            eprintln!(
                "hft: note: `{name}`: {shared} shared rows combined, {extra} extra rows copied from {}",
                inputs[*i].display_name()
            );
        }
        eprintln!(
            "hft: wrote {} ({} tensors, {:.1} MiB{})",
            outcome.path.display(),
            outcome.tensors,
            outcome.bytes as f64 / (1u64 << 20) as f64,
            if outcome.side_files.is_empty() {
                String::new()
            } else {
                format!(", with {}", outcome.side_files.join(", "))
            }
        );
    }
    Ok(outcome)
}

pub fn reset(a: &ResetArgs, quiet: bool) -> Result<String> {
    let base = open(&a.base, quiet)?;
    let tuned = open(&a.tuned, quiet)?;
    let out = output(&a.out)?;
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
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
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
    execute(
        &[&base, &tuned],
        reset::TUNED,
        &Reset { plan },
        &out,
        "reset",
        quiet,
    )?;
    Ok(report.render(&headline))
}

pub fn average(a: &AverageArgs, quiet: bool) -> Result<String> {
    let n = a.models.len();
    let normalize = !a.no_normalize;
    let weights = match (&a.weights, a.alpha) {
        (Some(w), _) => {
            let w = parse_list(w, "--weights")?;
            if w.len() != n {
                return Err(Error::usage(format!(
                    "--weights has {} values for {n} models",
                    w.len()
                )));
            }
            Some(w)
        }
        (None, Some(alpha)) => {
            if n != 2 {
                return Err(Error::usage(format!(
                    "--alpha averages two models; {n} given (use --weights)"
                )));
            }
            if !alpha.is_finite() {
                return Err(Error::usage("--alpha must be a finite number"));
            }
            Some(vec![1.0 - alpha, alpha])
        }
        (None, None) => None,
    };
    let config = a
        .config
        .as_ref()
        .map(|p| AverageConfig::read(p))
        .transpose()?;
    if config.as_ref().is_some_and(|c| c.default.is_some()) && weights.is_some() {
        return Err(Error::usage(
            "the config file has `default` weights and --weights/--alpha gives them too; keep one",
        ));
    }
    let default = weights.unwrap_or_else(|| vec![1.0 / n as f64; n]);
    let linear = match (&config, &a.config) {
        (Some(c), Some(p)) => Linear::with_config(default, Some((c, p)), normalize)?,
        _ => Linear::new(default, normalize)?,
    };
    let models = a
        .models
        .iter()
        .map(|p| open(p, quiet))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<&Checkpoint> = models.iter().collect();
    execute(&inputs, 0, &linear, &output(&a.out)?, "average", quiet)?;
    Ok(String::new())
}

pub fn merge(a: &MergeArgs, quiet: bool) -> Result<String> {
    let n = a.models.len();
    let only = |flag: &str, given: bool, method: MergeMethod| -> Result<()> {
        if given && a.method != method {
            return Err(Error::usage(format!(
                "{flag} does not apply to --method {}",
                method_name(a.method)
            )));
        }
        Ok(())
    };
    only("--density", a.density.is_some(), MergeMethod::Ties)?;
    only("--drop", a.drop.is_some(), MergeMethod::Dare)?;
    only("--probs", a.probs.is_some(), MergeMethod::Select)?;
    if !a.lambda.is_finite() {
        return Err(Error::usage("--lambda must be a finite number"));
    }
    let list = |s: &Option<String>, flag: &str, default: f64| -> Result<Vec<f64>> {
        match s {
            None => Ok(vec![default; n]),
            Some(s) => {
                let v = parse_list(s, flag)?;
                if v.len() != n {
                    return Err(Error::usage(format!(
                        "{flag} has {} values for {n} models",
                        v.len()
                    )));
                }
                Ok(v)
            }
        }
    };
    let out = output(&a.out)?;
    if a.method == MergeMethod::Select {
        if a.base.is_some() {
            return Err(Error::usage(
                "select takes no --base: list every model to select among (BASE too, for a half-reset)",
            ));
        }
        if a.weights.is_some() || a.lambda != 1.0 {
            return Err(Error::usage(
                "select takes --probs, not --weights or --lambda",
            ));
        }
        if n < 2 {
            return Err(Error::usage("select needs at least two models"));
        }
        let probs = list(&a.probs, "--probs", 1.0)?;
        let select = Select::new(&probs, a.seed)?;
        let models = a
            .models
            .iter()
            .map(|p| open(p, quiet))
            .collect::<Result<Vec<_>>>()?;
        let inputs: Vec<&Checkpoint> = models.iter().collect();
        execute(&inputs, 0, &select, &out, "merge", quiet)?;
        return Ok(String::new());
    }
    let base_path = a.base.as_ref().ok_or_else(|| {
        Error::usage(format!(
            "--method {} needs --base (the model the task vectors are taken from)",
            method_name(a.method)
        ))
    })?;
    let weights = list(&a.weights, "--weights", 1.0)?;
    let combine: Box<dyn Combine> = match a.method {
        MergeMethod::TaskArithmetic => Box::new(TaskArithmetic::new(weights, a.lambda)),
        MergeMethod::Dare => Box::new(TaskArithmetic::dare(
            weights,
            a.lambda,
            a.drop.unwrap_or(DEFAULT_DROP),
            a.seed,
        )?),
        MergeMethod::Ties => Box::new(Ties::new(
            weights,
            a.lambda,
            a.density.unwrap_or(DEFAULT_DENSITY),
        )?),
        MergeMethod::Select => unreachable!("handled above"),
    };
    let base = open(base_path, quiet)?;
    let models = a
        .models
        .iter()
        .map(|p| open(p, quiet))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<&Checkpoint> = std::iter::once(&base).chain(models.iter()).collect();
    execute(&inputs, 1, combine.as_ref(), &out, "merge", quiet)?;
    Ok(String::new())
}

fn method_name(m: MergeMethod) -> &'static str {
    match m {
        MergeMethod::TaskArithmetic => "task-arithmetic",
        MergeMethod::Ties => "ties",
        MergeMethod::Dare => "dare",
        MergeMethod::Select => "select",
    }
}
