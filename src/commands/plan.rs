//! `hft plan`: build (or check) a plan, then print its map, write it, or export it.

use std::io::Write;
use std::path::Path;

use crate::cli::plan::TrainFreeze;
use crate::cli::PlanArgs;
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::plan::export::{self, Emit};
use crate::plan::Plan;
use crate::report;
use crate::select::{self, LisaOptions, ModelInfo, SelectOptions, Strategy};

pub fn plan(args: &PlanArgs, quiet: bool) -> Result<String> {
    let model = ModelInfo::open(&args.model)?;
    if let Some(path) = &args.check {
        return check(path, &model);
    }
    let opts = options(args)?;
    let weights = if args.strategy == Strategy::Magnitude && !model.is_config_only() {
        Some(Checkpoint::open(&args.model)?)
    } else {
        None
    };
    let plan = select::build(&model, &opts, weights.as_ref())?;
    let map = report::plan::map(&model, &plan);
    let note = |s: &str| {
        if !quiet {
            eprintln!("hft: note: {s}");
        }
    };
    match (&args.output, args.emit) {
        (None, None) => Ok(map),
        (None, Some(how)) => {
            let e = export::emit(&plan, &model.layout, how)?;
            e.notes.iter().for_each(|n| note(n));
            Ok(e.text)
        }
        (Some(out), how) => {
            let e = export::emit(&plan, &model.layout, how.unwrap_or(Emit::Yaml))?;
            write_atomic(out, e.text.as_bytes())?;
            if !quiet {
                eprint!("{map}");
                e.notes.iter().for_each(|n| note(n));
                eprintln!("hft: wrote {}", out.display());
            }
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
    let mut o = SelectOptions::new(a.strategy, a.ratio.unwrap_or(0.5), a.seed);
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
        periods: a.lisa_periods,
        period: a.period,
    };
    Ok(o)
}

fn check(path: &Path, model: &ModelInfo) -> Result<String> {
    let plan = Plan::read(path)?;
    plan.check(&model.source, model.names_shapes())
        .map_err(|e| match e {
            Error::Input { msg, .. } => Error::input(
                path,
                format!("does not fit {}: {msg}", model.source.display()),
            ),
            other => other,
        })?;
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

/// Writes `bytes` to a temporary file beside `path`, then renames it into place, so a reader
/// never sees half a plan and a failure leaves any older file intact.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::usage(format!("-o {}: not a file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.hft-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
