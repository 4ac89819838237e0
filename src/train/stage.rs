//! The stage loop: for each stage, a plan from the selection strategies (or a plan file), a
//! model loaded from the previous stage's checkpoint with that trainable set, masked AdamW
//! over the trainable tensors, a checkpoint written through the writer, the `hft diff` of the
//! stage against the one before, and every eval set scored. `run.json` in the output records
//! each finished stage, so `--resume` continues after the last one.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use indexmap::IndexMap;

use super::data::{read_jsonl, Batch, Example, Sampler, Tokenizer};
use super::dpo::{self, Pair, Reference};
use super::eval::{self, Score};
use super::model::Llama;
use super::optim::{AdamW, AdamWConfig};
use super::recipe::{
    parse_reset_strategy, parse_strategy, EvalKind, Post, Recipe, Schedule, StageKind, StageSpec,
};
use super::report::{Change, PlanInfo, PostResult, RunReport, StageResult};
use super::TrainError;
use crate::error::{Error, Result};
use crate::io::dtype::{self, DType as FileDType};
use crate::io::writer::{provenance, CheckpointWriter, TensorSpec, WriterOptions};
use crate::io::Checkpoint;
use crate::plan::{Entry, Plan, State};
use crate::progress::Progress;
use crate::select::{self, ModelInfo, SelectOptions};

/// How to run a recipe.
#[derive(Debug, Clone)]
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
}

pub const RUN_STATE: &str = "run.json";

/// What a run prints while it trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// Nothing.
    Quiet,
    /// Only the in-place progress bar, on a terminal (a grid prints its own line per run).
    Bar,
    /// A line per stage, and the bar on a terminal or a line per logged step elsewhere.
    Lines,
}

impl Log {
    fn lines(self) -> bool {
        self == Log::Lines
    }
}

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
            EvalKind::Retention => super::retention::read_facts(&e.path, tok, max_len)?,
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
                EvalKind::Retention => super::retention::score(model, ex, pad, 64)?.score(),
            };
            Ok((n.clone(), s))
        })
        .collect()
}

/// The plan of a stage: a plan file checked against the model, or a strategy draw on the
/// stage's starting checkpoint (whose weights `magnitude` reads).
pub fn stage_plan(
    spec: &StageSpec,
    strategy_override: Option<&str>,
    start: &Checkpoint,
    default_seed: u64,
) -> Result<Plan> {
    let info = ModelInfo::from_checkpoint(start);
    let use_file = spec.plan.file.is_some() && (spec.pinned || strategy_override.is_none());
    if use_file {
        let f = spec.plan.file.as_ref().expect("checked");
        let plan = Plan::read(f)?;
        plan.check(f, info.names_shapes())?;
        return Ok(plan);
    }
    let name = match (spec.pinned, strategy_override) {
        (false, Some(s)) => s.to_string(),
        _ => spec.plan.strategy.clone().unwrap_or_else(|| "full".into()),
    };
    let strategy = parse_strategy(&name).map_err(Error::usage)?;
    let mut o = SelectOptions::new(
        strategy,
        spec.plan.ratio.unwrap_or(0.5),
        spec.plan.seed.unwrap_or(default_seed),
    );
    o.stage = if spec.plan.redraw.unwrap_or(true) {
        spec.index as u64
    } else {
        0
    };
    if strategy == select::Strategy::Lisa {
        return Err(Error::usage(
            "strategy `lisa` changes its layers during a stage; `hft run` does not schedule it yet",
        ));
    }
    select::build(&info, &o, Some(start))
}

fn lr_at(s: &super::recipe::Resolved, step: u64, steps: u64) -> f64 {
    let warm = (s.warmup * steps as f64).round() as u64;
    if step < warm {
        return s.lr * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (steps.saturating_sub(warm)).max(1) as f64;
    let f = match s.schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => 1.0 - (1.0 - s.min_lr) * p,
        Schedule::Cosine => {
            s.min_lr + (1.0 - s.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    };
    s.lr * f
}

/// Peak resident set of this process so far, in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What training one stage produced, before it is written.
pub struct Trained {
    pub model: Llama,
    pub steps: u64,
    pub epochs: f64,
    pub seconds: f64,
    pub tokens: u64,
    pub curve: Vec<(u64, f64)>,
    pub optimizer_bytes: u64,
    /// Mean seconds per step after the first few (warm-up).
    pub step_seconds: f64,
}

/// The data of one stage, per source.
pub enum StageData {
    /// Language modelling / SFT examples.
    Lm(Vec<Vec<Example>>),
    /// DPO preference pairs.
    Dpo(Vec<Vec<Pair>>),
}

impl StageData {
    /// Reads every source of `spec` in the form its kind needs.
    pub fn read(spec: &StageSpec, tok: &Tokenizer, max_len: usize) -> Result<StageData> {
        Ok(match spec.kind {
            StageKind::Lm => StageData::Lm(
                spec.data
                    .iter()
                    .map(|s| read_jsonl(&s.path, tok, max_len))
                    .collect::<Result<_>>()?,
            ),
            StageKind::Dpo => StageData::Dpo(
                spec.data
                    .iter()
                    .map(|s| dpo::read_pairs(&s.path, tok, max_len))
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

/// What a stage minimises, over examples drawn per source.
pub enum Objective<'a> {
    /// Mean NLL of the scored tokens.
    Lm(&'a [Vec<Example>]),
    /// The DPO loss against the reference log-probabilities (per source) of the stage's
    /// starting weights, filled by [`Objective::prepare`] for the pairs the stage draws.
    Dpo {
        pairs: &'a [Vec<Pair>],
        refs: Vec<Reference>,
        beta: f64,
    },
}

impl<'a> Objective<'a> {
    pub fn new(data: &'a StageData, spec: &StageSpec) -> Self {
        match data {
            StageData::Lm(s) => Objective::Lm(s),
            StageData::Dpo(pairs) => Objective::Dpo {
                refs: pairs.iter().map(|p| Reference::unscored(p.len())).collect(),
                pairs,
                beta: spec.beta,
            },
        }
    }

    /// Before the first step: for DPO, scores the pairs that `draws` (every micro-batch's
    /// picks, per source) will use under `model`, the stage's starting weights, as the frozen
    /// reference. Only drawn pairs are scored, so a short stage on a large set costs little.
    fn prepare(&mut self, model: &Llama, draws: &[Vec<Vec<usize>>], pad: u32) -> Result<()> {
        if let Objective::Dpo { pairs, refs, .. } = self {
            for (k, r) in refs.iter_mut().enumerate() {
                let mut used: Vec<usize> =
                    draws.iter().flat_map(|d| d[k].iter().copied()).collect();
                used.sort_unstable();
                used.dedup();
                r.fill(model, &pairs[k], &used, pad, 16)?;
            }
        }
        Ok(())
    }

    fn lens(&self) -> Vec<usize> {
        match self {
            Objective::Lm(s) => s.iter().map(Vec::len).collect(),
            Objective::Dpo { pairs, .. } => pairs.iter().map(Vec::len).collect(),
        }
    }

    /// Tokens the picked examples feed through the model.
    fn tokens(&self, picks: &[Vec<usize>]) -> u64 {
        let n = |e: &Example| e.tokens.len() as u64 - 1;
        picks
            .iter()
            .enumerate()
            .map(|(k, idx)| match self {
                Objective::Lm(s) => idx.iter().map(|&i| n(&s[k][i])).sum::<u64>(),
                Objective::Dpo { pairs, .. } => idx
                    .iter()
                    .map(|&i| n(&pairs[k][i].chosen) + n(&pairs[k][i].rejected))
                    .sum(),
            })
            .sum()
    }

    /// The loss of the picked examples (the mean over sources for DPO).
    fn loss(&self, model: &Llama, picks: &[Vec<usize>], pad: u32) -> candle_core::Result<Tensor> {
        match self {
            Objective::Lm(s) => {
                let batches: Vec<Batch> = picks
                    .iter()
                    .enumerate()
                    .map(|(k, idx)| {
                        let picked: Vec<&Example> = idx.iter().map(|&i| &s[k][i]).collect();
                        Batch::new(&picked, pad)
                    })
                    .collect();
                eval::loss(model, &batches, true)
            }
            Objective::Dpo { pairs, refs, beta } => {
                let mut total: Option<Tensor> = None;
                for (k, idx) in picks.iter().enumerate() {
                    let (l, _) =
                        dpo::batch_loss(model, &pairs[k], &refs[k], idx, *beta, pad, true)?;
                    total = Some(match total {
                        Some(t) => (t + l)?,
                        None => l,
                    });
                }
                match total {
                    Some(t) => t / picks.len() as f64,
                    None => candle_core::bail!("loss of no batches"),
                }
            }
        }
    }
}

/// Trains `model` for one stage.
pub fn train_stage(
    model: Llama,
    spec: &StageSpec,
    objective: &mut Objective,
    pad: u32,
    seed: u64,
    log: Log,
) -> Result<Trained> {
    let lens = objective.lens();
    let st = &spec.settings;
    let steps = match (st.steps, st.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => {
            let per = spec.data[0].batch as f64 * st.accumulate as f64;
            (e * lens[0] as f64 / per).ceil().max(1.0) as u64
        }
        (None, None) => return Err(Error::Internal("stage without steps".into())),
    };
    let vars = model.vars();
    let with_masks: Vec<_> = vars
        .iter()
        .map(|(n, v)| (v.clone(), model.masks.get(n).cloned()))
        .collect();
    let cfg = AdamWConfig {
        beta1: st.betas[0],
        beta2: st.betas[1],
        eps: 1e-8,
        weight_decay: st.weight_decay,
    };
    let mut opt = AdamW::new(with_masks, cfg).map_err(TrainError::map)?;
    let mut samplers: Vec<Sampler> = lens
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            Sampler::new(
                n,
                crate::rng::key(seed, &format!("stage/{}/source/{k}", spec.index)),
            )
        })
        .collect();
    // Every micro-batch's picks are drawn up front (the samplers are seeded, so this is the
    // order the loop would draw in): a DPO stage scores only the pairs it will use.
    let draws: Vec<Vec<Vec<usize>>> = (0..steps * st.accumulate)
        .map(|_| {
            samplers
                .iter_mut()
                .enumerate()
                .map(|(k, s)| s.take(spec.data[k].batch))
                .collect()
        })
        .collect();
    objective.prepare(&model, &draws, pad)?;
    let mut draws = draws.into_iter();
    let bar = (log != Log::Quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(steps);
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(spec.name.clone());
        b
    });
    let start = Instant::now();
    let mut warm_start = None;
    let warm_steps = 3.min(steps.saturating_sub(1));
    let mut tokens = 0u64;
    let mut curve = Vec::new();
    let mut window = (0f64, 0u64);
    for step in 0..steps {
        if step == warm_steps {
            warm_start = Some(Instant::now());
        }
        let lr = lr_at(st, step, steps);
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut step_loss = 0f64;
        for _ in 0..st.accumulate {
            let picks = draws.next().expect("drawn for every micro-batch");
            tokens += objective.tokens(&picks);
            let mut run = || -> candle_core::Result<f64> {
                let loss = objective.loss(&model, &picks, pad)?;
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !lv.is_finite() {
                    return Ok(lv);
                }
                let gs = (loss / st.accumulate as f64)?.backward()?;
                for (g, (_, v)) in grads.iter_mut().zip(&vars) {
                    if let Some(new) = gs.get(v.as_tensor()) {
                        let new = new.detach();
                        *g = Some(match g.take() {
                            Some(old) => (old + new)?,
                            None => new,
                        });
                    }
                }
                Ok(lv)
            };
            let lv = run().map_err(TrainError::map)?;
            if !lv.is_finite() {
                return Err(Error::usage(format!(
                    "stage `{}`: the training loss became {lv} at step {} (of {steps}); the stage \
                     was stopped and nothing of it was written. Lower its lr (or raise clip) and \
                     run again with --resume: finished stages are kept",
                    spec.name,
                    step + 1
                )));
            }
            step_loss += lv / st.accumulate as f64;
        }
        let norm = opt.mask_and_norm(&mut grads).map_err(TrainError::map)?;
        let scale = if st.clip > 0.0 && norm > st.clip {
            st.clip / norm
        } else {
            1.0
        };
        opt.step(&grads, lr, scale).map_err(TrainError::map)?;
        window.0 += step_loss;
        window.1 += 1;
        if (step + 1) % st.log_every == 0 || step + 1 == steps {
            let mean = window.0 / window.1 as f64;
            curve.push((step + 1, mean));
            window = (0.0, 0);
            let tps = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
            let msg = format!("loss {mean:.4} lr {lr:.2e} {tps:.0} tok/s");
            match &bar {
                Some(b) => b.set_message(msg),
                None if log.lines() => {
                    eprintln!("hft: {} step {}/{steps} {msg}", spec.name, step + 1)
                }
                None => {}
            }
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let seconds = start.elapsed().as_secs_f64();
    let step_seconds = match warm_start {
        Some(w) if steps > warm_steps => w.elapsed().as_secs_f64() / (steps - warm_steps) as f64,
        _ => seconds / steps.max(1) as f64,
    };
    Ok(Trained {
        epochs: samplers[0].epochs(),
        optimizer_bytes: opt.state_bytes(),
        model,
        steps,
        seconds,
        tokens,
        curve,
        step_seconds,
    })
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
    let r = crate::diff::diff(prev, new, &Progress::hidden())?;
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

fn stage_dir(i: usize, name: &str) -> String {
    format!("{i:02}-{name}")
}

fn output_dtype(recipe: &Recipe) -> Result<Option<FileDType>> {
    recipe.dtype.as_deref().map(dtype::parse_float).transpose()
}

/// Runs every stage of `recipe` not yet finished in `opts.output`, then the post baselines.
pub fn run(recipe: &Recipe, recipe_path: &Path, opts: &RunOptions) -> Result<RunReport> {
    let base = Checkpoint::open(&recipe.model)?;
    let tok = tokenizer(recipe, &base)?;
    let probe = Llama::load(&base, None, DType::F32, &Device::Cpu)?;
    let cfg = probe.config.clone();
    drop(probe);
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
                "holds an earlier run; pass --resume to continue it or --force to start over",
            ));
        }
        if opts.force && opts.output.exists() {
            std::fs::remove_dir_all(&opts.output).map_err(|e| Error::io(&opts.output, e))?;
        }
        std::fs::create_dir_all(&opts.output).map_err(|e| Error::io(&opts.output, e))?;
        let model = Llama::load(&base, None, DType::F32, &opts.device)?
            .with_compute(recipe.compute_dtype());
        let r = RunReport::new(
            recipe_path,
            &strategy_label,
            score_all(&model, &evals, tok.pad())?,
        );
        r.write(&state_path)?;
        r
    };
    // Stages recorded but whose checkpoint vanished are redone.
    while let Some(last) = report.stages.last() {
        if opts.output.join(&last.checkpoint).is_dir() {
            break;
        }
        report.stages.pop();
    }
    let done = report.stages.len();
    if done > 0 && opts.log.lines() {
        eprintln!(
            "hft: resuming after stage `{}` ({done} of {} finished)",
            report.stages[done - 1].name,
            recipe.stages.len()
        );
    }
    let mut prev_path = match report.stages.last() {
        Some(s) => opts.output.join(&s.checkpoint),
        None => recipe.model.clone(),
    };
    for (i, sources) in all_sources.into_iter().enumerate().skip(done) {
        let spec = recipe.stage(i);
        let prev = Checkpoint::open(&prev_path)?;
        let plan = stage_plan(&spec, opts.strategy.as_deref(), &prev, recipe.seed)?;
        let model = Llama::load(&prev, Some(&plan), DType::F32, &opts.device)?
            .with_compute(recipe.compute_dtype());
        if opts.log.lines() {
            eprintln!(
                "hft: stage {i} `{}`: {} plan, {:.1}% of parameters train",
                spec.name,
                plan.strategy,
                100.0 * plan.summary.all.fraction
            );
        }
        let mut objective = Objective::new(&sources, &spec);
        let t = train_stage(
            model,
            &spec,
            &mut objective,
            tok.pad(),
            recipe.seed,
            opts.log,
        )?;
        let dir = stage_dir(i, &spec.name);
        let dest = opts.output.join(&dir);
        write_checkpoint(&t.model, &base, out_dtype, &plan, &dest, &opts.command)?;
        let new = Checkpoint::open(&dest)?;
        let change = change(&prev, &new, &plan)?;
        if !change.frozen_changed.is_empty() {
            return Err(Error::Internal(format!(
                "frozen tensors changed in stage `{}`: {}",
                spec.name,
                change.frozen_changed.join(", ")
            )));
        }
        let scores = score_all(&t.model, &evals, tok.pad())?;
        let res = StageResult {
            index: i,
            name: spec.name.clone(),
            tasks: spec.tasks.clone(),
            checkpoint: dir,
            plan: PlanInfo::of(&plan),
            steps: t.steps,
            epochs: t.epochs,
            seconds: t.seconds,
            step_seconds: t.step_seconds,
            tokens_per_second: t.tokens as f64 / t.seconds.max(1e-9),
            optimizer_bytes: t.optimizer_bytes,
            peak_rss_mib: peak_rss_mib(),
            curve: t.curve,
            scores,
            change,
            pinned: spec.pinned,
            shared_from: None,
        };
        if opts.log.lines() {
            eprintln!(
                "hft: stage {i} `{}` done in {:.1}s: {}",
                spec.name,
                t.seconds,
                res.score_line()
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
    for p in &recipe.post {
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
                    strategy: parse_reset_strategy(strategy).map_err(Error::usage)?,
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
