//! The stage loop: one stage of training. Draws every micro-batch's examples up front from
//! seeded samplers, runs forward and backward through the objective, accumulates gradients,
//! clips by global norm, steps masked AdamW on the learning-rate schedule, and records the loss
//! curve, throughput and optimizer memory.

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::defaults;
use crate::error::{Error, Result};
use crate::progress::{Level, Progress, Sink};
use crate::train::data::Sampler;
use crate::train::model::Llama;
use crate::train::objective::Objective;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::recipe::{Schedule, StageSpec};
use crate::train::TrainError;

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
    pub fn lines(self) -> bool {
        self == Log::Lines
    }
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

/// LISA within a stage: every `every` steps the trainable layers are drawn again.
#[derive(Debug, Clone)]
pub struct Switches {
    pub every: u64,
    /// Per period, the tensors that train in it.
    pub trains: Vec<std::collections::HashSet<String>>,
    /// Tensors whose optimizer state carries over a switch: those outside the layers, as
    /// LMFlow's `LISATrainer` keeps its first two parameter groups. Layers drawn (again) start
    /// with fresh moments and bias correction, as its new optimizer gives them.
    pub keep: std::collections::HashSet<String>,
}

/// The optimizer steps of a stage: its `steps`, or its `epochs` over the first data source
/// (`lens`: examples per source).
pub fn stage_steps(spec: &StageSpec, lens: &[usize]) -> Result<u64> {
    let st = &spec.settings;
    match (st.steps, st.epochs) {
        (Some(s), _) => Ok(s),
        (None, Some(e)) => {
            let per = spec.data[0].batch as f64 * st.accumulate as f64;
            Ok((e * lens[0] as f64 / per).ceil().max(1.0) as u64)
        }
        (None, None) => Err(Error::Internal("stage without steps".into())),
    }
}

/// Trains `model` for one stage.
#[allow(clippy::too_many_arguments)]
pub fn train_stage(
    mut model: Llama,
    switches: Option<&Switches>,
    spec: &StageSpec,
    objective: &mut Objective,
    pad: u32,
    seed: u64,
    log: Log,
    sink: &dyn Sink,
) -> Result<Trained> {
    let lens = objective.lens();
    let st = &spec.settings;
    let steps = stage_steps(spec, &lens)?;
    let drawn = crate::train::recipe::examples_drawn(&spec.data, steps, st.accumulate);
    if drawn > crate::train::recipe::MAX_DRAWN {
        // Named as the field that made the steps; the caller adds the recipe and the stage.
        let field = if st.steps.is_some() {
            "steps"
        } else {
            "epochs"
        };
        return Err(Error::field(
            field,
            format!(
                "{steps} steps draw {drawn} examples, more than the {} hft plans up front; \
                 train fewer",
                crate::train::recipe::MAX_DRAWN
            ),
        ));
    }
    let mut vars = model.vars();
    // The masks move to the optimizer, which keeps them in the form it needs.
    let mut masks = std::mem::take(&mut model.masks);
    let with_masks: Vec<_> = vars
        .iter()
        .map(|(n, v)| (v.clone(), masks.remove(n)))
        .collect();
    let cfg = AdamWConfig {
        beta1: st.betas[0],
        beta2: st.betas[1],
        eps: defaults::stage::EPS,
        weight_decay: st.weight_decay,
    };
    let mut opt = AdamW::new(with_masks, cfg).map_err(TrainError::map)?;
    let mut optimizer_bytes = opt.state_bytes();
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
    let bar = if log == Log::Quiet {
        Progress::hidden()
    } else {
        Progress::steps(sink, steps, &spec.name)
    };
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
        if let Some(sw) = switches.filter(|sw| step > 0 && step % sw.every == 0) {
            let now = &sw.trains[(step / sw.every) as usize];
            model.set_trainable(|n| now.contains(n))?;
            let new_vars = model.vars();
            let mut new = AdamW::new(
                new_vars.iter().map(|(_, v)| (v.clone(), None)).collect(),
                cfg,
            )
            .map_err(TrainError::map)?;
            for (to, (name, _)) in new_vars.iter().enumerate() {
                let from = vars.iter().position(|(n, _)| n == name);
                if let Some(from) = from.filter(|_| sw.keep.contains(name)) {
                    new.adopt(to, &mut opt, from);
                }
            }
            (opt, vars) = (new, new_vars);
            optimizer_bytes = optimizer_bytes.max(opt.state_bytes());
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
                     run again with option `resume`: finished stages are kept",
                    spec.name,
                    step + 1
                )));
            }
            step_loss += lv / st.accumulate as f64;
        }
        // Linear weights' gradients were accumulated in place over the micro-batches.
        for (g, s) in grads
            .iter_mut()
            .zip(model.take_sunk().map_err(TrainError::map)?)
        {
            if let Some(s) = s {
                *g = Some(match g.take() {
                    Some(old) => (old + s).map_err(TrainError::map)?,
                    None => s,
                });
            }
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
            if bar.is_shown() {
                bar.message(&msg);
            } else if log.lines() {
                sink.say(
                    Level::Log,
                    &format!("{} step {}/{steps} {msg}", spec.name, step + 1),
                );
            }
        }
        bar.inc(1);
    }
    bar.finish();
    let seconds = start.elapsed().as_secs_f64();
    let step_seconds = match warm_start {
        Some(w) if steps > warm_steps => w.elapsed().as_secs_f64() / (steps - warm_steps) as f64,
        _ => seconds / steps.max(1) as f64,
    };
    Ok(Trained {
        epochs: samplers[0].epochs(),
        optimizer_bytes: optimizer_bytes.max(opt.state_bytes()),
        model,
        steps,
        seconds,
        tokens,
        curve,
        step_seconds,
    })
}

fn lr_at(s: &crate::train::recipe::Resolved, step: u64, steps: u64) -> f64 {
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
