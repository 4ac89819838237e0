//! What reset, average and merge share: where and how the checkpoint is written, lists of
//! numbers typed on the command line, and the one call into the surgery driver.

use std::path::PathBuf;

use clap::Args;

use hft::defaults;
use hft::error::{Error, Result};
use hft::io::writer::parse_size;
use hft::io::{dtype, Checkpoint};
use hft::progress::{Level, Progress, Sink};
use hft::surgery::{self, Combine, Outcome, Output};

/// Where and how a surgery writes its checkpoint (shared by reset, average and merge).
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output: a directory (Hugging Face layout: model.safetensors, or shards plus
    /// model.safetensors.index.json, with config and tokenizer files copied) or a path ending in
    /// .safetensors (one file, weights only).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Store float tensors in this dtype (bf16, f16, f32, f64) instead of the input's;
    /// rounding is to nearest even.
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
    /// Largest shard of a directory output (5GB, 500MB, 2GiB, or bytes); larger models are
    /// split into model-0000k-of-0000K.safetensors shards.
    #[arg(long, default_value = defaults::MAX_SHARD_SIZE, value_name = "SIZE")]
    pub max_shard_size: String,
    /// Replace an existing output that hft wrote (never an input, nor anything else).
    #[arg(long)]
    pub force: bool,
    /// What goes to stdout: text, or json (a summary: inputs, method, parameters, what was
    /// written; schema `hft-surgery/1`).
    #[arg(long, value_parser = ["text", "json"], default_value = "text", value_name = "FORMAT")]
    pub format: String,
    /// Copy tensors that only some inputs hold from one that holds it (TUNED / the first model
    /// first), and for a resized vocabulary combine the shared rows and copy the extra rows
    /// from the model that has them, instead of refusing.
    #[arg(long)]
    pub allow_missing: bool,
}

impl OutputArgs {
    pub fn json(&self) -> bool {
        self.format == "json"
    }

    pub fn output(&self) -> Result<Output> {
        let mut out = Output::new(&self.output);
        out.dtype = self.dtype.as_deref().map(dtype::parse_float).transpose()?;
        out.max_shard_bytes = parse_size(&self.max_shard_size)?;
        out.force = self.force;
        out.allow_missing = self.allow_missing;
        out.command = super::command_line();
        Ok(out)
    }
}

/// Parses comma-separated numbers (`0.5,0.3,0.2`) typed after `flag`.
pub fn numbers(s: &str, flag: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|p| {
            let p = p.trim();
            p.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| Error::usage(format!("{flag}: `{p}` is not a number")))
        })
        .collect()
}

/// The `schema` of the `--format json` summary of reset, average and merge.
pub const SCHEMA: &str = "hft-surgery/1";

/// The `--format json` summary of a surgery: what went in, how, and what came out.
pub fn summary(
    command: &str,
    inputs: &[&Checkpoint],
    parameters: serde_json::Value,
    outcome: &Outcome,
    out: &Output,
) -> String {
    let mut files: Vec<String> = match std::fs::read_dir(&outcome.path) {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        // A single .safetensors output is its one file.
        Err(_) => outcome
            .path
            .file_name()
            .map(|n| vec![n.to_string_lossy().into_owned()])
            .unwrap_or_default(),
    };
    files.sort();
    let v = serde_json::json!({
        "schema": SCHEMA,
        "command": command,
        "inputs": inputs.iter().map(|c| c.display_name()).collect::<Vec<_>>(),
        "parameters": parameters,
        "output": outcome.path.display().to_string(),
        "files": files,
        "dtype": out.dtype.map(dtype::name),
        "tensors": outcome.tensors,
        "parameters_written": outcome.elements,
        "bytes": outcome.bytes,
        "copied_missing": outcome.copied_missing.iter().map(|(n, i)| {
            serde_json::json!({"tensor": n, "from": inputs[*i].display_name()})
        }).collect::<Vec<_>>(),
        "resized": outcome.resized.iter().map(|(n, shared, extra, i)| {
            serde_json::json!({"tensor": n, "shared_rows": shared, "extra_rows": extra,
                               "extra_from": inputs[*i].display_name()})
        }).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).expect("JSON") + "\n"
}

/// Runs one surgery with a progress bar and says what was written.
pub fn execute(
    inputs: &[&Checkpoint],
    primary: usize,
    combine: &dyn Combine,
    out: &Output,
    what: &str,
    sink: &dyn Sink,
) -> Result<Outcome> {
    let progress = Progress::bytes(sink, surgery::input_bytes(inputs), what);
    let outcome = surgery::run(inputs, primary, combine, out, &progress)?;
    for (name, i) in &outcome.copied_missing {
        sink.say(
            Level::Note,
            &format!(
                "`{name}` copied from {} (not in every input)",
                inputs[*i].display_name()
            ),
        );
    }
    for (name, shared, extra, i) in &outcome.resized {
        sink.say(
            Level::Note,
            &format!(
                "`{name}`: {shared} shared rows combined, {extra} extra rows copied from {}",
                inputs[*i].display_name()
            ),
        );
    }
    sink.say(
        Level::Log,
        &format!(
            "wrote {} ({} tensors, {:.1} MiB{})",
            outcome.path.display(),
            outcome.tensors,
            outcome.bytes as f64 / (1u64 << 20) as f64,
            if outcome.side_files.is_empty() {
                String::new()
            } else {
                format!(", with {}", outcome.side_files.join(", "))
            }
        ),
    );
    Ok(outcome)
}
