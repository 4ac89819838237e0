//! `hft average`: weighted mean of checkpoints (model soup; WiSE-FT with two).

use std::path::PathBuf;

use clap::Args;

use hft::error::{Error, Result};
use hft::io::Checkpoint;
use hft::progress::Sink;
use hft::surgery::average::{AverageConfig, Linear};

use super::open;
use super::output::{execute, numbers, summary, OutputArgs};

/// Weighted average of N checkpoints (model soup; WiSE-FT with two).
///
/// Every float tensor becomes Σ wᵢ Mᵢ, computed in f32 and rounded once to the output dtype.
/// Weights are normalised to sum to 1 unless --no-normalize. Per-layer and per-category weights
/// come from a YAML file (--config): see docs/surgery.md. Config, tokenizer and metadata come
/// from the first model.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft average base/ tuned/ --alpha 0.3 -o wise/          # 0.7*base + 0.3*tuned\n  \
    hft average m1/ m2/ m3/ --weights 0.5,0.3,0.2 -o soup/\n  \
    hft average base/ tuned/ --config weights.yaml -o out/\n\n\
    weights.yaml:\n  \
    default: [0.5, 0.5]\n  \
    rules:\n    \
    - categories: [ffn]        # FFN from tuned, attention averaged\n      \
    weights: [0, 1]\n    \
    - layers: \"0-3\"\n      \
    weights: [1, 0]")]
pub struct AverageArgs {
    /// The checkpoints to average (two or more).
    #[arg(required = true, num_args = 2.., value_name = "MODEL")]
    pub models: Vec<PathBuf>,
    /// Comma-separated weights, one per model (default: equal).
    #[arg(long, value_name = "W1,W2,..", conflicts_with = "alpha")]
    pub weights: Option<String>,
    /// Two models only: (1 - a)·M1 + a·M2.
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,
    /// Use the weights as given instead of scaling them to sum to 1.
    #[arg(long)]
    pub no_normalize: bool,
    /// YAML file with per-category and per-layer weights.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn run(a: &AverageArgs, sink: &dyn Sink) -> Result<String> {
    let n = a.models.len();
    let normalize = !a.no_normalize;
    let weights = match (&a.weights, a.alpha) {
        (Some(w), _) => {
            let w = numbers(w, "--weights")?;
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
            if !(alpha.is_finite() && alpha.abs() <= 1e3) {
                return Err(Error::usage(format!(
                    "--alpha {alpha} is outside [-1000, 1000]: it weighs the second model (0: the \
                     first, 1: the second, beyond: extrapolation)"
                )));
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
        (Some(c), Some(p)) => Linear::with_config(default, Some((c, p)), normalize),
        _ => Linear::new(default, normalize),
    }?;
    let models = a
        .models
        .iter()
        .map(|p| open(p, sink))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<&Checkpoint> = models.iter().collect();
    let out = a.out.output()?;
    if let Some(c) = &a.config {
        hft::io::output::check_inputs(&out.path, &[c.as_path()])?;
    }
    let outcome = execute(&inputs, 0, &linear, &out, "average", sink)?;
    Ok(if a.out.json() {
        let p = serde_json::json!({
            "weights": a.weights.as_deref().map(|w| numbers(w, "--weights")).transpose()?,
            "alpha": a.alpha,
            "normalize": normalize,
            "config": a.config.as_ref().map(|p| p.display().to_string()),
        });
        summary("average", &inputs, p, &outcome, &out)
    } else {
        String::new()
    })
}
