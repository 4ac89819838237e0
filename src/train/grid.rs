//! `hft run` over a grid: strategies (`--compare`) × one swept recipe field (`--sweep`) × seeds
//! (`--seeds`). Each cell is an ordinary run in its own directory. A stage whose every input is
//! the same in two cells (seed, settings, plan, starting checkpoint) is trained once and linked
//! into the others: each stage gets a fingerprint that chains the one before it, and a cell
//! starts from the finished cell that shares the longest run of fingerprints with it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::progress::{Level, Sink};
use crate::train::metrics::{learned, RunReport};
use crate::train::recipe::Recipe;
use crate::train::stage::Log;
use crate::train::stages::{run_stages, RunOptions, RUN_STATE};
use crate::train::Reporter;

/// One value of `--sweep`: an absolute value, or (written `x0.5`) a factor on each stage's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub key: String,
    /// As the user wrote it (it names the run's directory).
    pub text: String,
    pub value: f64,
    pub scale: bool,
}

impl Setting {
    pub fn label(&self) -> String {
        format!("{}={}", self.key, self.text)
    }
}

/// `--sweep KEY=V1,V2,...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub key: String,
    pub values: Vec<Setting>,
}

impl Sweep {
    pub fn parse(s: &str) -> Result<Sweep> {
        let bad = |m: String| Error::field("sweep", format!("{s}: {m}"));
        let (key, vals) = s
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=V1,V2,... (for example lr=1e-4,3e-4,1e-3)".into()))?;
        let key = key.trim().to_string();
        let mut values: Vec<Setting> = Vec::new();
        for text in vals.split(',').map(str::trim) {
            let (scale, num) = match text.strip_prefix(['x', '*']) {
                Some(n) => (true, n),
                None => (false, text),
            };
            let value: f64 = num
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| bad(format!("`{text}` is not a number (or xFACTOR)")))?;
            if !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-*".contains(c))
            {
                return Err(bad(format!(
                    "`{text}` has characters a directory name cannot"
                )));
            }
            if values.iter().any(|v| v.value == value && v.scale == scale) {
                return Err(bad(format!("`{text}` is given twice")));
            }
            values.push(Setting {
                key: key.clone(),
                text: text.replace('*', "x"),
                value,
                scale,
            });
        }
        Ok(Sweep { key, values })
    }
}

/// What to cross.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    /// `--compare` (empty: the recipe's own plans).
    pub strategies: Vec<String>,
    pub sweep: Option<Sweep>,
    /// `--seeds` (empty: the recipe's seed).
    pub seeds: Vec<u64>,
}

/// One run of the grid.
#[derive(Debug, Clone)]
pub struct Cell {
    /// "category lr=1e-3 seed=1": how progress lines and reports name the run.
    pub label: String,
    /// The strategy as reports name it (the recipe's own when there is no `--compare`).
    pub strategy: String,
    /// Replaces the plan of every stage that does not pin its own.
    pub strategy_override: Option<String>,
    pub setting: Option<Setting>,
    pub seed: Option<u64>,
    /// Relative to the output: STRATEGY[/KEY=VALUE][/seed-N].
    pub dir: PathBuf,
    pub recipe: Recipe,
    /// Per stage: a hash of everything that determines its checkpoint, chained.
    pub fingerprints: Vec<u64>,
}

/// The runs of `g`, seeds outermost (so the run that trains a seed's shared stages comes
/// before the runs that reuse them), then settings, then strategies.
pub fn expand(recipe: &Recipe, recipe_path: &Path, g: &Grid) -> Result<Vec<Cell>> {
    for (i, s) in g.strategies.iter().enumerate() {
        crate::train::recipe::parse_strategy(s).map_err(|e| match e {
            Error::Field { msg, .. } => Error::field("compare", msg),
            e => e,
        })?;
        if g.strategies[..i].contains(s) {
            return Err(Error::field("compare", format!("`{s}` is given twice")));
        }
    }
    for (i, s) in g.seeds.iter().enumerate() {
        if g.seeds[..i].contains(s) {
            return Err(Error::field("seeds", format!("{s} is given twice")));
        }
    }
    let own = recipe
        .plan
        .strategy
        .clone()
        .unwrap_or_else(|| "full".into());
    let strategies: Vec<Option<&String>> = if g.strategies.is_empty() {
        vec![None]
    } else {
        g.strategies.iter().map(Some).collect()
    };
    let settings: Vec<Option<&Setting>> = match &g.sweep {
        Some(s) => s.values.iter().map(Some).collect(),
        None => vec![None],
    };
    let seeds: Vec<Option<u64>> = if g.seeds.is_empty() {
        vec![None]
    } else {
        g.seeds.iter().copied().map(Some).collect()
    };
    let mut cells = Vec::new();
    for &seed in &seeds {
        for &setting in &settings {
            let mut r = match seed {
                Some(s) => recipe.with_seed(s),
                None => recipe.clone(),
            };
            if let Some(v) = setting {
                r.set_field(&v.key, v.value, v.scale)?;
                // The recipe itself passed: what fails now is the swept value.
                r.check(recipe_path).map_err(|e| match e {
                    Error::Input { msg, .. } => {
                        Error::field("sweep", format!("{}: {msg}", v.label()))
                    }
                    e => e,
                })?;
            }
            for &strategy in &strategies {
                let name = strategy.cloned().unwrap_or_else(|| own.clone());
                let mut dir = PathBuf::from(&name);
                let mut label = name.clone();
                if let Some(v) = setting {
                    dir.push(v.label());
                    label += &format!(" {}", v.label());
                }
                if let Some(s) = seed {
                    dir.push(format!("seed-{s}"));
                    label += &format!(" seed={s}");
                }
                cells.push(Cell {
                    label,
                    strategy: name,
                    strategy_override: strategy.cloned(),
                    setting: setting.cloned(),
                    seed,
                    dir,
                    fingerprints: r.fingerprints(strategy.map(String::as_str)),
                    recipe: r.clone(),
                });
            }
        }
    }
    Ok(cells)
}

/// For each cell, the earlier cell whose stages it can start from and how many: the longest
/// run of equal fingerprints (the first such cell on ties).
pub fn donors(cells: &[Cell]) -> Vec<Option<(usize, usize)>> {
    cells
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let mut best: Option<(usize, usize)> = None;
            for (j, d) in cells[..k].iter().enumerate() {
                let n = c
                    .fingerprints
                    .iter()
                    .zip(&d.fingerprints)
                    .take_while(|(a, b)| a == b)
                    .count();
                if n > 0 && best.is_none_or(|(_, m)| n > m) {
                    best = Some((j, n));
                }
            }
            best
        })
        .collect()
}

/// How to run a grid.
pub struct GridOptions<'a> {
    /// Where log lines go.
    pub sink: Arc<dyn Sink>,
    /// Writes each finished run's report files.
    pub reporter: &'a dyn Reporter,
    pub recipe_path: &'a Path,
    pub output: &'a Path,
    pub device: candle_core::Device,
    pub resume: bool,
    pub force: bool,
    pub quiet: bool,
    pub command: String,
    /// Runs at once; each gets its own pool of `threads` threads.
    pub jobs: usize,
    pub threads: usize,
}

/// Runs every cell not yet finished (with `resume`) and returns their reports in cell order.
pub fn run_grid(cells: &[Cell], o: &GridOptions) -> Result<Vec<RunReport>> {
    let existing: Vec<&Cell> = cells
        .iter()
        .filter(|c| o.output.join(&c.dir).join(RUN_STATE).exists())
        .collect();
    if !existing.is_empty() && !o.resume && !o.force {
        return Err(Error::input(
            o.output.join(&existing[0].dir),
            format!(
                "holds an earlier run ({} of the {} runs of this grid exist); option `resume` \
                 continues the grid, option `force` starts over",
                existing.len(),
                cells.len()
            ),
        ));
    }
    if o.force {
        for c in cells {
            let d = o.output.join(&c.dir);
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            }
        }
    }
    std::fs::create_dir_all(o.output).map_err(|e| Error::io(o.output, e))?;
    crate::io::output::mark(o.output, &o.command, crate::io::output::Marked::Grid)?;
    let donors = donors(cells);
    if !o.quiet {
        let trained: usize = donors
            .iter()
            .zip(cells)
            .map(|(d, c)| c.fingerprints.len() - d.map_or(0, |d| d.1))
            .sum();
        let all: usize = cells.iter().map(|c| c.fingerprints.len()).sum();
        o.sink.say(
            Level::Log,
            &format!(
                "{} run{} under {}, {} at a time; {trained} of {all} stages to train, {} shared",
                cells.len(),
                if cells.len() == 1 { "" } else { "s" },
                o.output.display(),
                o.jobs.min(cells.len()).max(1),
                all - trained
            ),
        );
    }
    let state = Mutex::new(Sched {
        next: 0,
        done: vec![false; cells.len()],
        finished: 0,
        failed: None,
        reports: vec![None; cells.len()],
    });
    let wake = Condvar::new();
    let worker = || {
        let pool = match rayon::ThreadPoolBuilder::new()
            .num_threads(o.threads.max(1))
            .build()
        {
            Ok(p) => p,
            Err(e) => {
                state.lock().expect("not poisoned").failed =
                    Some(Error::Internal(format!("thread pool: {e}")));
                wake.notify_all();
                return;
            }
        };
        loop {
            let k = {
                let mut s = state.lock().expect("not poisoned");
                if s.failed.is_some() || s.next == cells.len() {
                    return;
                }
                let k = s.next;
                s.next += 1;
                // A cell that starts from another's stages waits for that cell.
                while let Some((j, _)) = donors[k] {
                    if s.done[j] || s.failed.is_some() {
                        break;
                    }
                    s = wake.wait(s).expect("not poisoned");
                }
                if s.failed.is_some() {
                    return;
                }
                k
            };
            let t = Instant::now();
            let got = pool.install(|| run_cell(cells, k, donors[k], o));
            let mut s = state.lock().expect("not poisoned");
            match got {
                Ok((r, line)) => {
                    s.finished += 1;
                    if !o.quiet {
                        o.sink.say(
                            Level::Log,
                            &format!(
                                "[{}/{}] {}: {line} ({:.0} s)",
                                s.finished,
                                cells.len(),
                                cells[k].label,
                                t.elapsed().as_secs_f64()
                            ),
                        );
                    }
                    s.reports[k] = Some(r);
                    s.done[k] = true;
                }
                Err(e) => {
                    s.failed.get_or_insert(match e {
                        Error::Internal(m) => {
                            Error::Internal(format!("run {}: {m}", cells[k].label))
                        }
                        e => e,
                    });
                }
            }
            wake.notify_all();
        }
    };
    std::thread::scope(|sc| {
        for _ in 0..o.jobs.clamp(1, cells.len().max(1)) {
            sc.spawn(worker);
        }
    });
    let s = state.into_inner().expect("not poisoned");
    if let Some(e) = s.failed {
        return Err(e);
    }
    Ok(s.reports
        .into_iter()
        .map(|r| r.expect("every cell ran"))
        .collect())
}

struct Sched {
    next: usize,
    done: Vec<bool>,
    finished: usize,
    failed: Option<Error>,
    reports: Vec<Option<RunReport>>,
}

/// Runs one cell (or reads it back when it finished earlier) and says in a line what it found.
fn run_cell(
    cells: &[Cell],
    k: usize,
    donor: Option<(usize, usize)>,
    o: &GridOptions,
) -> Result<(RunReport, String)> {
    let c = &cells[k];
    let dir = o.output.join(&c.dir);
    let state_path = dir.join(RUN_STATE);
    if o.resume && dir.join("report.json").is_file() && state_path.is_file() {
        let r = RunReport::read(&state_path)?;
        if r.stages.len() == c.recipe.stages.len() {
            return Ok((r, "finished earlier, read back".into()));
        }
    }
    let mut resume = o.resume && state_path.is_file();
    let mut shared = 0;
    if let (false, Some((j, n))) = (resume, donor) {
        let from = o.output.join(&cells[j].dir);
        let first = RunReport::read(&from.join(RUN_STATE))?;
        shared = n.min(first.stages.len());
        if shared > 0 {
            seed_shared(&first, &from, &dir, &c.strategy, shared, &cells[j].label)?;
            resume = true;
        }
    }
    // Every cell of a grid starts from the same model and scores the same eval sets (no grid
    // axis changes them), so the scores before the first stage are computed once.
    let mut before_from = None;
    if !resume {
        for j in (0..k).rev() {
            let from = o.output.join(&cells[j].dir);
            if let Ok(first) = RunReport::read(&from.join(RUN_STATE)) {
                seed_shared(&first, &from, &dir, &c.strategy, 0, &cells[j].label)?;
                resume = true;
                before_from = Some(&cells[j].label);
                break;
            }
        }
    }
    let opts = RunOptions {
        device: o.device.clone(),
        strategy: c.strategy_override.clone(),
        output: dir.clone(),
        resume,
        force: false,
        // Bars of runs side by side would overwrite each other.
        log: if o.quiet || o.jobs > 1 {
            Log::Quiet
        } else {
            Log::Bar
        },
        command: o.command.clone(),
        sink: o.sink.clone(),
    };
    let r = run_stages(&c.recipe, o.recipe_path, &opts)?;
    o.reporter.run(&r, &dir)?;
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.3}", v + 0.0));
    let learned = learned(&r);
    let line = format!(
        "learned {}, forgot {}, OP {}{}",
        f(learned),
        f(r.metrics.exact_match.bwt.map(|b| -b)),
        f(r.metrics.exact_match.op),
        if shared > 0 {
            format!(
                "; {shared} stage{} reused from {}",
                if shared == 1 { "" } else { "s" },
                cells[donor.expect("shared").0].label
            )
        } else if let Some(l) = before_from {
            format!("; scores before training read from {l}")
        } else {
            String::new()
        }
    );
    Ok((r, line))
}

/// Starts `to` as the first `n` stages of the run in `from` (checkpoints hard-linked where the
/// file system allows, copied otherwise).
fn seed_shared(
    first: &RunReport,
    from: &Path,
    to: &Path,
    strategy: &str,
    n: usize,
    from_label: &str,
) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| Error::io(to, e))?;
    }
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    crate::io::output::mark(to, "", crate::io::output::Marked::Run)?;
    let mut r = first.clone();
    r.strategy = strategy.to_string();
    r.stages.truncate(n);
    r.post.clear();
    r.metrics = Default::default();
    for s in &mut r.stages {
        link_dir(&from.join(&s.checkpoint), &to.join(&s.checkpoint))?;
        s.shared_from.get_or_insert_with(|| from_label.to_string());
    }
    r.write(&to.join(RUN_STATE))
}

fn link_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let e = e.map_err(|e| Error::io(from, e))?;
        let dest = to.join(e.file_name());
        if std::fs::hard_link(e.path(), &dest).is_err() {
            std::fs::copy(e.path(), &dest).map_err(|err| Error::io(&dest, err))?;
        }
    }
    Ok(())
}

/// Runs at once by default: one per `threads` cores, keeping a core for the rest of the
/// machine, so a 2-core machine runs one at a time.
pub fn auto_jobs(threads: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ((cores.saturating_sub(1)) / threads.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_parse_values_factors_and_refuse_junk() {
        let s = Sweep::parse("lr=1e-4, 3e-4,x2").unwrap();
        assert_eq!(s.key, "lr");
        let v: Vec<(f64, bool, &str)> = s
            .values
            .iter()
            .map(|v| (v.value, v.scale, v.text.as_str()))
            .collect();
        assert_eq!(
            v,
            vec![
                (1e-4, false, "1e-4"),
                (3e-4, false, "3e-4"),
                (2.0, true, "x2")
            ]
        );
        for bad in ["lr", "lr=abc", "lr=1,1", "lr=1/2", "lr=inf"] {
            assert!(Sweep::parse(bad).is_err(), "{bad}");
        }
    }

    const RECIPE: &str = "
model: m
output: out
seed: 4
defaults: {lr: 0.01, steps: 3}
plan: {strategy: category, seed: 10}
eval:
  - {name: a, path: a.jsonl}
stages:
  - {name: s0, data: [{path: a.jsonl, batch: 2}], plan: {strategy: full}}
  - {name: s1, data: [{path: a.jsonl, batch: 2}], lr: 0.5}
  - {name: s2, data: [{path: a.jsonl, batch: 2}]}
";

    fn recipe() -> (tempfile::TempDir, Recipe, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.jsonl"), "{\"text\":\"x\"}\n").unwrap();
        std::fs::create_dir(d.path().join("m")).unwrap();
        let p = d.path().join("r.yaml");
        let r = Recipe::parse(RECIPE, &p).unwrap();
        (d, r, p)
    }

    #[test]
    fn a_grid_expands_to_every_cell_with_its_settings_and_seeds() {
        let (_d, r, p) = recipe();
        let g = Grid {
            strategies: vec!["full".into(), "category".into()],
            sweep: Some(Sweep::parse("lr=1e-3,x2").unwrap()),
            seeds: vec![4, 7],
        };
        let cells = expand(&r, &p, &g).unwrap();
        let dirs: Vec<String> = cells.iter().map(|c| c.dir.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "full/lr=1e-3/seed-4",
                "category/lr=1e-3/seed-4",
                "full/lr=x2/seed-4",
                "category/lr=x2/seed-4",
                "full/lr=1e-3/seed-7",
                "category/lr=1e-3/seed-7",
                "full/lr=x2/seed-7",
                "category/lr=x2/seed-7",
            ]
        );
        // The sweep sets the unpinned stages only; a factor scales each stage's own value.
        let lrs =
            |c: &Cell| -> Vec<f64> { (0..3).map(|i| c.recipe.stage(i).settings.lr).collect() };
        assert_eq!(lrs(&cells[0]), [0.01, 1e-3, 1e-3]);
        assert_eq!(lrs(&cells[2]), [0.01, 1.0, 0.02]);
        // Seed 4 is the recipe's own; seed 7 moves the explicit plan seed with it.
        assert_eq!(cells[0].recipe.plan.seed, Some(10));
        assert_eq!(
            (cells[4].recipe.seed, cells[4].recipe.plan.seed),
            (7, Some(13))
        );
        // Stage s0 (pinned) is shared by every cell of a seed, and nothing across seeds.
        let d = donors(&cells);
        assert_eq!(d[0], None);
        assert_eq!(d[1], Some((0, 1)));
        assert_eq!(d[3], Some((0, 1)));
        assert_eq!(d[4], None);
        assert_eq!(d[7], Some((4, 1)));
    }

    #[test]
    fn unfit_sweeps_are_refused_with_the_reason() {
        let (_d, r, p) = recipe();
        let run = |s: &str| {
            let g = Grid {
                sweep: Some(Sweep::parse(s).unwrap()),
                ..Grid::default()
            };
            expand(&r, &p, &g)
                .map(|c| c.len())
                .map_err(|e| e.to_string())
        };
        assert_eq!(run("s0.steps=5,6"), Ok(2));
        assert_eq!(run("ratio=0.25,0.75"), Ok(2));
        for (bad, why) in [
            ("lerning_rate=1", "not a numeric stage field"),
            ("steps=2.5", "whole number"),
            ("warmup=2", "must lie in [0, 1]"),
            ("beta=0.1", "dpo"),
            ("s9.lr=1", "no stage `s9`"),
            ("lr=-1", "must be positive"),
        ] {
            let e = run(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_ratio_sweep_leaves_the_stage_unpinned() {
        let (_d, r, p) = recipe();
        let g = Grid {
            strategies: vec!["full".into(), "category".into()],
            sweep: Some(Sweep::parse("ratio=0.25").unwrap()),
            seeds: vec![],
        };
        let cells = expand(&r, &p, &g).unwrap();
        let s1 = cells[1].recipe.stage(1);
        assert!(!s1.pinned);
        assert_eq!(s1.plan.ratio, Some(0.25));
        assert_eq!(cells[1].recipe.stage(0).plan.ratio, None);
        assert_ne!(cells[0].fingerprints[1], cells[1].fingerprints[1]);
    }
}
