//! The run of stages: for each stage of a recipe, a plan from the selection strategies (or a
//! plan file), a model loaded from the previous stage's checkpoint with that trainable set, the
//! stage loop ([`crate::train::stage`]), a checkpoint written through the writer, the `hft
//! diff` of the stage against the one before, and every eval set scored; then the post-hoc
//! baselines. `run.json` in the output records each finished stage, so a resumed run continues
//! after the last one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::io::dtype::{self, DType as FileDType};
use crate::io::writer::{provenance, CheckpointWriter, TensorSpec, WriterOptions};
use crate::io::Checkpoint;
use crate::plan::{Entry, Plan, State};
use crate::progress::{Level, Progress, Sink};
use crate::train::data::{read_jsonl, Example, Tokenizer};
use crate::train::derive;
use crate::train::eval::{self, retention, Score};
use crate::train::metrics::{Change, PlanInfo, PostResult, RunReport, StageResult};
use crate::train::model::Llama;
use crate::train::objective::{Objective, StageData};
use crate::train::recipe::{parse_reset_strategy, EvalKind, Post, Recipe, StageKind};
use crate::train::stage::{stage_steps, train_stage, Log};
use crate::train::sys::peak_rss_mib;
use crate::train::TrainError;

/// How to run a recipe.
#[derive(Clone)]
pub struct RunOptions {
    pub device: Device,
    /// Replace the strategy of every stage that does not pin its own plan.
    pub strategy: Option<String>,
    /// Where this run writes (the recipe's `output`, or a sub-directory under `--compare`).
    pub output: PathBuf,
    pub resume: bool,
    pub force: bool,
    pub log: Log,
    /// The command line, recorded in checkpoint metadata.
    pub command: String,
    /// Where log lines and the progress bar go.
    pub sink: Arc<dyn Sink>,
}

pub const RUN_STATE: &str = "run.json";

/// Eval sets: name -> how it is scored and its examples.
pub type EvalData = IndexMap<String, (EvalKind, Vec<Example>)>;

/// Loads the tokenizer the recipe names.
pub fn tokenizer(recipe: &Recipe, base: &Checkpoint) -> Result<Tokenizer> {
    if recipe.tokenizer == "bytes" {
        return Ok(Tokenizer::Bytes);
    }
    let tok = |k: &str| {
        base.config
            .as_ref()
            .and_then(|c| c.get(k))
            .and_then(|v| v.as_u64())
            .map(|v| v as u32)
    };
    Tokenizer::from_file(
        Path::new(&recipe.tokenizer),
        tok("bos_token_id"),
        tok("eos_token_id"),
    )
}

/// Loads every eval set (examples up to the model's context).
pub fn eval_data(recipe: &Recipe, tok: &Tokenizer, max_len: usize) -> Result<EvalData> {
    let mut out = IndexMap::new();
    for e in &recipe.eval {
        let mut ex = match e.kind {
            EvalKind::Task => read_jsonl(&e.path, tok, max_len)?,
            EvalKind::Retention => retention::read_facts(&e.path, tok, max_len)?,
        };
        if let Some(m) = e.max_examples {
            ex.truncate(m);
        }
        out.insert(e.name.clone(), (e.kind, ex));
    }
    Ok(out)
}

fn score_all(model: &Llama, evals: &EvalData, pad: u32) -> Result<IndexMap<String, Score>> {
    evals
        .iter()
        .map(|(n, (kind, ex))| {
            let s = match kind {
                EvalKind::Task => eval::score(model, ex, pad, 64)?,
                EvalKind::Retention => retention::score(model, ex, pad, 64)?.score(),
            };
            Ok((n.clone(), s))
        })
        .collect()
}

/// Writes `model` as a checkpoint in each tensor's dtype of `base` (or `dtype`), with the base's
/// side files (config, tokenizer) and `plan.yaml`.
pub fn write_checkpoint(
    model: &Llama,
    base: &Checkpoint,
    dtype: Option<FileDType>,
    plan: &Plan,
    dest: &Path,
    command: &str,
) -> Result<()> {
    let specs: Vec<TensorSpec> = model
        .params
        .iter()
        .map(|(n, p)| TensorSpec {
            name: n.clone(),
            dtype: dtype.unwrap_or_else(|| base.get(n).map_or(FileDType::F32, |t| t.dtype)),
            shape: p.tensor().dims().to_vec(),
        })
        .collect();
    let opts = WriterOptions {
        metadata: provenance(base.metadata(), command),
        force: true,
        ..WriterOptions::default()
    };
    let w = CheckpointWriter::create(dest, specs.clone(), &opts)?;
    for (i, (spec, (_, p))) in specs.iter().zip(&model.params).enumerate() {
        let vals = p
            .tensor()
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(TrainError::map)?;
        let eb = dtype::elem_bytes(spec.dtype).ok_or_else(|| Error::Internal("dtype".into()))?;
        let mut bytes = vec![0u8; vals.len() * eb];
        dtype::encode_f32(spec.dtype, &vals, &mut bytes);
        w.write(i, 0, &bytes)?;
    }
    if let Some(dir) = &base.dir {
        w.copy_side_files(dir)?;
    }
    w.add_file("plan.yaml", plan.to_yaml().as_bytes())?;
    w.finish()?;
    Ok(())
}

/// The per-layer and per-category change of a stage, from `hft diff`'s library call, and
/// how many tensors the plan froze yet changed (must be 0).
pub fn change(prev: &Checkpoint, new: &Checkpoint, plan: &Plan) -> Result<Change> {
    let r = crate::analysis::diff::diff(prev, new, &Progress::hidden())?;
    let frozen_changed = r
        .tensors
        .iter()
        .filter(|t| plan.entry(&t.name) == Some(&Entry::Whole(State::Freeze)) && !t.equal)
        .map(|t| t.name.clone())
        .collect();
    Ok(Change {
        rel_delta: r.total.rel_delta,
        by_category: r
            .categories
            .iter()
            .map(|c| (c.category.to_string(), c.figures.rel_delta))
            .collect(),
        by_layer: r
            .layers
            .iter()
            .map(|l| (l.layer.to_string(), l.figures.rel_delta))
            .collect(),
        frozen_changed,
    })
}

/// Refuses a stage whose micro-batch cannot fit in this machine's memory, before anything is
/// allocated or written. The estimate is a lower bound: the weights in f32 and, per token and
/// layer, the activations the backward pass must keep (hidden-sized: 4, FFN-sized: 3), so a
/// refusal is certain and a pass is no promise.
fn check_memory(
    recipe: &Recipe,
    recipe_path: &Path,
    cfg: &crate::train::model::Config,
) -> Result<()> {
    let Some(total) = crate::train::sys::total_memory() else {
        return Ok(());
    };
    let per_token_layer = (4 * cfg.hidden + 3 * cfg.intermediate) as u128 * 4;
    let weights =
        (cfg.vocab * cfg.hidden * 2 + cfg.layers * 4 * cfg.hidden * cfg.hidden) as u128 * 4;
    for i in 0..recipe.stages.len() {
        let spec = recipe.stage(i);
        let examples: u128 = spec.data.iter().map(|d| d.batch as u128).sum();
        let pairs = if spec.kind == StageKind::Dpo { 2 } else { 1 };
        let seq = spec.settings.seq_len.min(cfg.max_positions) as u128;
        let need = weights + examples * pairs * seq * cfg.layers as u128 * per_token_layer;
        if need > total as u128 {
            return Err(Error::input(
                recipe_path,
                format!(
                    "stage `{}`: a micro-batch of {examples} examples of up to {seq} tokens needs \
                     at least {:.1} GiB, and this machine has {:.1} GiB; lower `batch` or \
                     `seq_len` (a larger `accumulate` keeps the effective batch)",
                    spec.name,
                    need as f64 / (1u64 << 30) as f64,
                    total as f64 / (1u64 << 30) as f64
                ),
            ));
        }
    }
    Ok(())
}

fn output_dtype(recipe: &Recipe) -> Result<Option<FileDType>> {
    recipe.dtype.as_deref().map(dtype::parse_float).transpose()
}

/// Runs every stage of `recipe` not yet finished in `opts.output`, then the post baselines.
pub fn run_stages(recipe: &Recipe, recipe_path: &Path, opts: &RunOptions) -> Result<RunReport> {
    let base = Checkpoint::open(&recipe.model)?;
    let tok = tokenizer(recipe, &base)?;
    let cfg = Llama::check(&base)?;
    if cfg.vocab < tok.min_vocab() {
        return Err(Error::input(
            &recipe.model,
            format!(
                "vocabulary {} is smaller than the tokenizer needs ({})",
                cfg.vocab,
                tok.min_vocab()
            ),
        ));
    }
    let out_dtype = output_dtype(recipe)?;
    let evals = eval_data(recipe, &tok, cfg.max_positions)?;
    // Every stage's data is read (and checked) before anything is trained or written.
    let all_sources = (0..recipe.stages.len())
        .map(|i| {
            let spec = recipe.stage(i);
            StageData::read(&spec, &tok, spec.settings.seq_len.min(cfg.max_positions))
        })
        .collect::<Result<Vec<_>>>()?;
    let strategy_label = opts
        .strategy
        .clone()
        .or_else(|| recipe.plan.strategy.clone())
        .unwrap_or_else(|| "full".into());
    // Every stage's plan is built once (on the base model) before anything is written, so a
    // bad plan setting fails here and not after the first stage, with no run directory made.
    for i in 0..recipe.stages.len() {
        let spec = recipe.stage(i);
        derive::validate(&spec, opts.strategy.as_deref(), &base, recipe.seed)
            .map_err(|e| e.in_file(recipe_path, &format!("stage `{}` plan: ", spec.name)))?;
    }
    check_memory(recipe, recipe_path, &cfg)?;
    let fingerprints = recipe.fingerprints(opts.strategy.as_deref());
    let state_path = opts.output.join(RUN_STATE);
    let mut report = if opts.resume && state_path.is_file() {
        let r = RunReport::read(&state_path)?;
        if r.strategy != strategy_label {
            return Err(Error::input(
                &state_path,
                format!(
                    "records strategy `{}`, this run is `{strategy_label}`",
                    r.strategy
                ),
            ));
        }
        r
    } else {
        if opts.output.join(RUN_STATE).exists() && !opts.force {
            return Err(Error::input(
                &opts.output,
                "holds an earlier run; option `resume` continues it, option `force` starts over",
            ));
        }
        if opts.force && opts.output.exists() {
            crate::io::output::check_existing(&opts.output, crate::io::output::Kind::Dir, true)?;
            std::fs::remove_dir_all(&opts.output).map_err(|e| Error::io(&opts.output, e))?;
        }
        let model = Llama::load(&base, None, DType::F32, &opts.device)?
            .with_compute(recipe.compute_dtype());
        let r = RunReport::new(
            recipe_path,
            &strategy_label,
            score_all(&model, &evals, tok.pad())?,
        );
        std::fs::create_dir_all(&opts.output).map_err(|e| Error::io(&opts.output, e))?;
        crate::io::output::mark(&opts.output, &opts.command, crate::io::output::Marked::Run)?;
        r.write(&state_path)?;
        r
    };
    // A stage whose settings, data paths or plan changed since it was trained is retrained,
    // and every stage after it.
    if let Some(k) = report.stages.iter().position(|s| {
        s.fingerprint
            .is_some_and(|f| Some(&f) != fingerprints.get(s.index))
    }) {
        if opts.log.lines() {
            opts.sink.say(
                Level::Note,
                &format!(
                    "stage `{}` changed since it was trained; retraining it and the {} stage(s) \
                     after it",
                    report.stages[k].name,
                    recipe.stages.len() - k - 1
                ),
            );
        }
        report.stages.truncate(k);
    }
    // Stages recorded but whose checkpoint vanished are redone.
    while let Some(last) = report.stages.last() {
        if opts.output.join(&last.checkpoint).is_dir() {
            break;
        }
        report.stages.pop();
    }
    let done = report.stages.len();
    if done > 0 && opts.log.lines() {
        opts.sink.say(
            Level::Log,
            &format!(
                "resuming after stage `{}` ({done} of {} finished)",
                report.stages[done - 1].name,
                recipe.stages.len()
            ),
        );
    }
    let mut prev_path = match report.stages.last() {
        Some(s) => opts.output.join(&s.checkpoint),
        None => recipe.model.clone(),
    };
    for (i, sources) in all_sources.into_iter().enumerate().skip(done) {
        let spec = recipe.stage(i);
        let prev = Checkpoint::open(&prev_path)?;
        // A value out of range in the stage's plan is the recipe's to fix: say where.
        let in_recipe = |e: Error| e.in_file(recipe_path, &format!("stage `{}` plan: ", spec.name));
        let in_stage = |e: Error| e.in_file(recipe_path, &format!("stage `{}`: ", spec.name));
        let derived = derive::diff_for(recipe, &spec, opts.strategy.as_deref(), &opts.output)
            .map_err(in_recipe)?;
        let diff = derived.as_ref().map(|(p, _)| p.as_path());
        let mut objective = Objective::new(&sources, &spec);
        let steps = stage_steps(&spec, &objective.lens()).map_err(in_stage)?;
        let plan = derive::stage_plan(
            &spec,
            opts.strategy.as_deref(),
            &prev,
            recipe.seed,
            diff,
            Some(steps),
        )
        .map_err(in_recipe)?;
        let layout = crate::arch::Layout::for_checkpoint(&prev);
        let switches = derive::switches(&plan, &layout);
        let model = Llama::load(&prev, Some(&plan), DType::F32, &opts.device)?
            .with_compute(recipe.compute_dtype());
        if opts.log.lines() {
            let every = switches.as_ref().map_or(String::new(), |s| {
                format!(" (layers drawn again every {} steps)", s.every)
            });
            opts.sink.say(
                Level::Log,
                &format!(
                    "stage {i} `{}`: {} plan, {:.1}% of parameters train{every}",
                    spec.name,
                    plan.strategy,
                    100.0 * plan.summary.all.fraction
                ),
            );
        }
        let t = train_stage(
            model,
            switches.as_ref(),
            &spec,
            &mut objective,
            tok.pad(),
            recipe.seed,
            opts.log,
            opts.sink.as_ref(),
        )
        .map_err(in_stage)?;
        let dir = derive::stage_dir(i, &spec.name);
        let dest = opts.output.join(&dir);
        write_checkpoint(&t.model, &base, out_dtype, &plan, &dest, &opts.command)?;
        let new = Checkpoint::open(&dest)?;
        let change = change(&prev, &new, &derive::ever_trained(&plan, &layout))?;
        if !change.frozen_changed.is_empty() {
            return Err(Error::Internal(format!(
                "frozen tensors changed in stage `{}`: {}",
                spec.name,
                change.frozen_changed.join(", ")
            )));
        }
        let scored = std::time::Instant::now();
        let scores = score_all(&t.model, &evals, tok.pad())?;
        let eval_seconds = scored.elapsed().as_secs_f64();
        let res = StageResult {
            index: i,
            name: spec.name.clone(),
            tasks: spec.tasks.clone(),
            checkpoint: dir,
            plan: PlanInfo {
                derived_from: derived.map(|(_, what)| what),
                ..PlanInfo::of(&plan)
            },
            steps: t.steps,
            epochs: t.epochs,
            seconds: t.seconds,
            step_seconds: t.step_seconds,
            tokens_per_second: t.tokens as f64 / t.seconds.max(1e-9),
            optimizer_bytes: t.optimizer_bytes,
            peak_rss_mib: peak_rss_mib(),
            eval_seconds,
            curve: t.curve,
            scores,
            change,
            pinned: spec.pinned,
            shared_from: None,
            fingerprint: fingerprints.get(i).copied(),
        };
        if opts.log.lines() {
            opts.sink.say(
                Level::Log,
                &format!(
                    "stage {i} `{}` done in {:.1}s: {}",
                    spec.name,
                    t.seconds,
                    res.score_line()
                ),
            );
        }
        report.stages.push(res);
        report.write(&state_path)?;
        prev_path = dest;
    }
    report.post = post_baselines(recipe, &base, &report, &prev_path, &evals, &tok, opts)?;
    report.finish();
    report.write(&state_path)?;
    Ok(report)
}

/// The post-hoc baselines of the recipe, made by the surgery library from the base and the
/// final checkpoint and scored on every eval set.
fn post_baselines(
    recipe: &Recipe,
    model: &Checkpoint,
    report: &RunReport,
    last: &Path,
    evals: &EvalData,
    tok: &Tokenizer,
    opts: &RunOptions,
) -> Result<Vec<PostResult>> {
    use crate::surgery::{self, average::Linear, reset};
    let mut out = Vec::new();
    if recipe.post.is_empty() {
        return Ok(out);
    }
    let tuned = Checkpoint::open(last)?;
    let mut made: Vec<(String, PathBuf)> = Vec::new();
    for p in recipe
        .post
        .iter()
        .filter(|p| p.applies_after(&report.strategy))
    {
        let base_ck;
        let base = match p.base() {
            None => model,
            Some(b) => {
                let s = report
                    .stages
                    .iter()
                    .find(|s| s.name == b)
                    .ok_or_else(|| Error::usage(format!("post: no finished stage `{b}`")))?;
                base_ck = Checkpoint::open(opts.output.join(&s.checkpoint))?;
                &base_ck
            }
        };
        let tag = p.base().map_or(String::new(), |b| format!("-from-{b}"));
        match p {
            Post::Reset {
                strategy,
                ratio,
                seed,
                ..
            } => {
                let req = reset::StrategyRequest {
                    strategy: parse_reset_strategy(strategy)?,
                    ratio: *ratio,
                    seed: *seed,
                    stage: 0,
                    reset_embeddings: false,
                    reset_head: false,
                };
                let plan = reset::strategy_plan(&tuned, &req)?;
                let name = format!("reset-{strategy}-{ratio}{tag}");
                let mut o = surgery::Output::new(opts.output.join("post").join(&name));
                o.force = true;
                o.command = opts.command.clone();
                surgery::run(
                    &[base, &tuned],
                    reset::TUNED,
                    &reset::Reset { plan },
                    &o,
                    &Progress::hidden(),
                )?;
                made.push((name, o.path));
            }
            Post::Average { alphas, .. } => {
                for a in alphas {
                    let name = format!("average-{a}{tag}");
                    let mut o = surgery::Output::new(opts.output.join("post").join(&name));
                    o.force = true;
                    o.command = opts.command.clone();
                    let lin = Linear::new(vec![1.0 - a, *a], false)?;
                    surgery::run(&[base, &tuned], 1, &lin, &o, &Progress::hidden())?;
                    made.push((name, o.path));
                }
            }
        }
    }
    for (name, path) in made {
        let ck = Checkpoint::open(&path)?;
        let model =
            Llama::load(&ck, None, DType::F32, &opts.device)?.with_compute(recipe.compute_dtype());
        let scores = score_all(&model, evals, tok.pad())?;
        out.push(PostResult {
            name,
            checkpoint: path
                .strip_prefix(&opts.output)
                .unwrap_or(&path)
                .display()
                .to_string(),
            scores,
        });
    }
    Ok(out)
}
