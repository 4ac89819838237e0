//! The recipe: a YAML file describing a model, a sequence of training stages with a freeze plan
//! each, evaluation sets, optional post-hoc baselines and an output directory. Unknown keys are
//! errors (with their line), and every path is relative to the recipe's own directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::choice::Choice;
use crate::defaults;
use crate::error::{Error, Result};
use crate::select::Strategy;
use crate::surgery::reset::ResetStrategy;

mod settings;
mod variant;

pub use settings::{Resolved, Schedule, Settings, Source, Stage, StageKind};
pub use variant::SWEEP_KEYS;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Checkpoint directory (config.json + safetensors) of a Llama-family model.
    pub model: PathBuf,
    /// `bytes`, or the path of a `tokenizer.json`.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// Storage dtype of the stage checkpoints (`f32`, `bf16`, `f16`); default: the model's.
    #[serde(default)]
    pub dtype: Option<String>,
    /// The dtype matrix products run in: `f32` (the default), `bf16` or `f16`. Master weights,
    /// gradients, optimizer state, norms, softmax and the loss stay f32 (autocast).
    #[serde(default)]
    pub precision: Option<String>,
    /// Seed of data order (and the default seed of plans).
    #[serde(default)]
    pub seed: u64,
    pub output: PathBuf,
    /// Settings every stage starts from.
    #[serde(default)]
    pub defaults: Settings,
    /// The plan of every stage that does not set its own.
    #[serde(default)]
    pub plan: PlanSpec,
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub eval: Vec<EvalSet>,
    #[serde(default)]
    pub post: Vec<Post>,
    /// Overrides that `hft run --quick` lays over the recipe (a smaller variant of the same
    /// experiment, in the same file): mappings merge key by key, lists of named items (`stages`,
    /// `eval`) merge item by item by `name`, other values and lists are replaced.
    #[serde(default)]
    pub quick: Option<serde_json::Value>,
}

fn default_tokenizer() -> String {
    "bytes".into()
}

/// Which parameters train in a stage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// A selection strategy (`full`, `category`, `layer`, `model`, `element`, ...).
    pub strategy: Option<String>,
    /// Fraction of parameters that trains (default [`defaults::RATIO`]).
    pub ratio: Option<f64>,
    pub seed: Option<u64>,
    /// Draw afresh in every stage (default true); false reuses the stage-0 draw.
    pub redraw: Option<bool>,
    /// A plan file (from `hft plan`) instead of a strategy.
    pub file: Option<PathBuf>,
    /// `delta` and `protect`: train the units that changed `least` (the default) or `most`.
    pub order: Option<String>,
    /// `delta`: an `hft diff --format json` to rank by, instead of the previous stage's
    /// change as the run measures it.
    pub diff: Option<PathBuf>,
    /// `lisa`: layers that train at a time (LISA's gamma; default 2).
    pub layers: Option<usize>,
    /// `lisa`: optimizer steps between draws of the trainable layers (LISA's K; default 20).
    pub every: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSet {
    pub name: String,
    pub path: PathBuf,
    /// Score at most this many examples (the first ones).
    pub max_examples: Option<usize>,
    /// `task` (the default: loss, and exact match of prompt/completion sets) or `retention`
    /// (short facts: greedy exact match and log-probability of the answer, see
    /// `train::retention`).
    #[serde(default)]
    pub kind: EvalKind,
}

/// How an eval set is scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalKind {
    #[default]
    Task,
    Retention,
}

/// A post-hoc baseline made from the final model and the recipe's model, evaluated like a stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Post {
    /// Half-reset: the part of the final model a strategy draw freezes goes back to the base.
    Reset {
        #[serde(default = "default_reset_strategy")]
        strategy: String,
        #[serde(default = "half")]
        ratio: f64,
        #[serde(default)]
        seed: u64,
        /// The stage whose checkpoint is the base (default: the recipe's model).
        #[serde(default)]
        base: Option<String>,
        /// Made only after runs of these training strategies (default: after every run).
        #[serde(default)]
        after: Vec<String>,
    },
    /// WiSE-FT: (1 - alpha) base + alpha final, for each alpha.
    Average {
        alphas: Vec<f64>,
        #[serde(default)]
        base: Option<String>,
        #[serde(default)]
        after: Vec<String>,
    },
}

impl Post {
    pub fn base(&self) -> Option<&str> {
        match self {
            Post::Reset { base, .. } | Post::Average { base, .. } => base.as_deref(),
        }
    }

    /// Whether the baseline is made after a run of `strategy`: a baseline of full fine-tuning
    /// (`after: [full]`) need not be made, and scored, after every strategy of a grid.
    pub fn applies_after(&self, strategy: &str) -> bool {
        match self {
            Post::Reset { after, .. } | Post::Average { after, .. } => {
                after.is_empty() || after.iter().any(|a| a == strategy)
            }
        }
    }
}

fn default_reset_strategy() -> String {
    ResetStrategy::Category.as_str().into()
}

fn half() -> f64 {
    defaults::RATIO
}

/// A stage with its settings resolved and paths made absolute.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub index: usize,
    pub name: String,
    pub data: Vec<Source>,
    pub tasks: Vec<String>,
    pub plan: PlanSpec,
    /// The stage set its own plan (kept under `--compare`).
    pub pinned: bool,
    pub settings: Resolved,
    pub kind: StageKind,
    pub beta: f64,
}

/// Examples a stage may draw in all (steps x accumulate x batches): every draw is planned
/// before the first step, 8 bytes each, so this caps that plan at 1 GiB.
pub const MAX_DRAWN: u128 = 1 << 27;

/// Examples a stage with these sources draws in `steps` optimizer steps.
pub fn examples_drawn(data: &[Source], steps: u64, accumulate: u64) -> u128 {
    data.iter().map(|d| d.batch as u128).sum::<u128>() * steps as u128 * accumulate as u128
}

impl Recipe {
    /// Reads and checks a recipe; paths inside are resolved against its directory.
    pub fn read(path: &Path) -> Result<Recipe> {
        Self::read_variant(path, false)
    }

    /// Reads a recipe, with its `quick` block laid over it when `quick` is set.
    pub fn read_variant(path: &Path, quick: bool) -> Result<Recipe> {
        let text = crate::io::input::read_text(path, crate::io::input::SMALL)?;
        let r = Self::parse(&text, path)?;
        if !quick {
            return Ok(r);
        }
        let q = r.quick.ok_or_else(|| {
            Error::input(
                path,
                "has no `quick` block, which option `quick` lays over the recipe (see docs/recipe.md)",
            )
        })?;
        let mut v: serde_json::Value = serde_saphyr::from_str(&text)
            .map_err(|e| Error::yaml(path, "not a valid recipe: ", &e))?;
        if let Some(m) = v.as_object_mut() {
            m.remove("quick");
        }
        variant::merge(&mut v, &q, "quick").map_err(|e| e.in_file(path, ""))?;
        let r: Recipe = serde_json::from_value(v)
            .map_err(|e| Error::input(path, format!("with its `quick` block laid over: {e}")))?;
        Self::finish(r, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Recipe> {
        let r: Recipe = serde_saphyr::from_str(text)
            .map_err(|e| Error::yaml(path, "not a valid recipe: ", &e))?;
        Self::finish(r, path)
    }

    /// Resolves the paths against the recipe's directory and checks the whole.
    fn finish(mut r: Recipe, path: &Path) -> Result<Recipe> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };
        r.model = abs(&r.model);
        r.output = abs(&r.output);
        if r.tokenizer != "bytes" {
            r.tokenizer = abs(Path::new(&r.tokenizer)).display().to_string();
        }
        for p in
            std::iter::once(&mut r.plan).chain(r.stages.iter_mut().filter_map(|s| s.plan.as_mut()))
        {
            for f in [&mut p.file, &mut p.diff].into_iter().flatten() {
                *f = abs(f);
            }
        }
        for s in &mut r.stages {
            for d in &mut s.data {
                d.path = abs(&d.path);
            }
        }
        for e in &mut r.eval {
            e.path = abs(&e.path);
        }
        r.check(path)?;
        Ok(r)
    }

    /// Per stage, a hash of everything its checkpoint depends on: the model, tokenizer, dtype,
    /// precision and seed of the recipe, the stage's resolved settings, data and plan, the strategy that replaces
    /// an unpinned plan, and the fingerprint of the stage before.
    pub fn fingerprints(&self, strategy: Option<&str>) -> Vec<u64> {
        let r = self;
        let mut prev = crate::rng::fnv1a64(&format!(
            "{}|{}|{:?}|{:?}|{}",
            r.model.display(),
            r.tokenizer,
            r.dtype,
            r.precision,
            r.seed
        ));
        (0..r.stages.len())
            .map(|i| {
                let s = r.stage(i);
                let eff = if s.pinned { None } else { strategy };
                prev = crate::rng::fnv1a64(&format!("{prev:016x}|{s:?}|{eff:?}"));
                prev
            })
            .collect()
    }

    /// Every file and directory the recipe reads (model, tokenizer, plans, data, eval sets):
    /// what no output may be, contain or lie inside.
    pub fn inputs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.model.clone()];
        if self.tokenizer != "bytes" {
            v.push(PathBuf::from(&self.tokenizer));
        }
        v.extend(self.plan.file.clone());
        v.extend(self.plan.diff.clone());
        for s in &self.stages {
            v.extend(s.data.iter().map(|d| d.path.clone()));
            v.extend(s.plan.as_ref().and_then(|p| p.file.clone()));
            v.extend(s.plan.as_ref().and_then(|p| p.diff.clone()));
        }
        v.extend(self.eval.iter().map(|e| e.path.clone()));
        v
    }

    pub(crate) fn check(&self, path: &Path) -> Result<()> {
        /// Examples per source per step: far above what fits in any memory at seq_len 1.
        const MAX_BATCH: usize = 1 << 20;
        let bad = |m: String| Err(Error::input(path, m));
        parse_precision(self.precision.as_deref()).map_err(|e| e.in_file(path, ""))?;
        if self.stages.is_empty() {
            return bad("no stages".into());
        }
        let mut names = std::collections::HashSet::new();
        for e in &self.eval {
            if !names.insert(e.name.as_str()) {
                return bad(format!("eval set `{}` is defined twice", e.name));
            }
            if e.max_examples == Some(0) {
                return bad(format!(
                    "eval set `{}`: max_examples is 0; give at least 1 (or leave it out)",
                    e.name
                ));
            }
            if !e.path.is_file() {
                return bad(format!(
                    "eval set `{}`: file {} not found",
                    e.name,
                    e.path.display()
                ));
            }
        }
        let mut stage_names = std::collections::HashSet::new();
        for (i, s) in self.stages.iter().enumerate() {
            if !stage_names.insert(s.name.as_str()) {
                return bad(format!("stage name `{}` is used twice", s.name));
            }
            if s.name.is_empty() || s.name.contains(['/', '\\']) || s.name.starts_with('.') {
                return bad(format!(
                    "stage {i}: name `{}` cannot be a directory name",
                    s.name
                ));
            }
            if s.data.is_empty() {
                return bad(format!("stage `{}` has no data", s.name));
            }
            match (s.kind, s.beta) {
                (StageKind::Lm, Some(_)) => {
                    return bad(format!("stage `{}`: `beta` needs `kind: dpo`", s.name))
                }
                (StageKind::Dpo, Some(b)) if !(b > 0.0 && b.is_finite()) => {
                    return bad(format!("stage `{}`: beta must be positive", s.name))
                }
                _ => {}
            }
            for d in &s.data {
                if !d.path.is_file() {
                    return bad(format!(
                        "stage `{}`: data file {} not found",
                        s.name,
                        d.path.display()
                    ));
                }
                if d.batch == 0 || d.batch > MAX_BATCH {
                    return bad(format!(
                        "stage `{}`: batch of {} is {}; it must be 1 to {MAX_BATCH}",
                        s.name,
                        d.path.display(),
                        d.batch
                    ));
                }
            }
            for t in &s.tasks {
                if !names.contains(t.as_str()) {
                    return bad(format!(
                        "stage `{}` names task `{t}`, which is not an eval set",
                        s.name
                    ));
                }
            }
            let st = self.stage(i).settings;
            match (st.steps, st.epochs) {
                (None, None) => {
                    return bad(format!(
                        "stage `{}` sets neither `steps` nor `epochs`",
                        s.name
                    ))
                }
                (Some(_), Some(_)) => {
                    return bad(format!(
                        "stage `{}` has both `steps` and `epochs` (with `defaults`); give one",
                        s.name
                    ))
                }
                _ => {}
            }
            s.settings()
                .or(&self.defaults)
                .check()
                .map_err(|e| e.in_file(path, &format!("stage `{}`: ", s.name)))?;
            if let Some(steps) = st.steps {
                let drawn = examples_drawn(&s.data, steps, st.accumulate);
                if drawn > MAX_DRAWN {
                    return bad(format!(
                        "stage `{}`: steps x accumulate x batch draw {drawn} examples, more \
                         than the {} hft plans up front",
                        s.name, MAX_DRAWN
                    ));
                }
            }
            let plan = self.stage(i).plan;
            if let Some(s) = &plan.strategy {
                parse_strategy(s).map_err(|e| {
                    e.in_file(path, &format!("stage `{}` plan: ", self.stages[i].name))
                })?;
            }
            if let Some(f) = &plan.file {
                if !f.is_file() {
                    return bad(format!("plan file {} not found", f.display()));
                }
            }
        }
        if !self.model.exists() {
            return bad(format!("model {} not found", self.model.display()));
        }
        if self.tokenizer != "bytes" && !Path::new(&self.tokenizer).is_file() {
            return bad(format!("tokenizer {} not found", self.tokenizer));
        }
        for p in &self.post {
            if let Some(b) = p.base() {
                if !stage_names.contains(b) {
                    return bad(format!("post: base `{b}` is not a stage name"));
                }
            }
            let (Post::Reset { after, .. } | Post::Average { after, .. }) = p;
            for a in after {
                parse_strategy(a).map_err(|e| e.in_file(path, "post after: "))?;
            }
            match p {
                Post::Reset {
                    strategy, ratio, ..
                } => {
                    parse_reset_strategy(strategy).map_err(|e| e.in_file(path, "post reset: "))?;
                    if !(0.0..=1.0).contains(ratio) {
                        return bad(format!("post reset: ratio {ratio} is outside [0, 1]"));
                    }
                }
                Post::Average { alphas, .. } => {
                    if alphas.is_empty() || alphas.iter().any(|a| !a.is_finite()) {
                        return bad(
                            "post average: alphas must be a non-empty list of numbers".into()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Stage `i` with defaults applied.
    pub fn stage(&self, i: usize) -> StageSpec {
        let s = &self.stages[i];
        let mut plan = s.plan.clone().unwrap_or_else(|| self.plan.clone());
        if s.plan.is_some() {
            // Fields a stage's plan leaves out come from the recipe's plan.
            plan.ratio = plan.ratio.or(self.plan.ratio);
            plan.seed = plan.seed.or(self.plan.seed);
            plan.redraw = plan.redraw.or(self.plan.redraw);
            plan.order = plan.order.or(self.plan.order.clone());
            plan.layers = plan.layers.or(self.plan.layers);
            plan.every = plan.every.or(self.plan.every);
        }
        plan.ratio = s.ratio.or(plan.ratio);
        StageSpec {
            index: i,
            name: s.name.clone(),
            data: s.data.clone(),
            tasks: s.tasks.clone(),
            plan,
            pinned: s.plan.is_some(),
            settings: s.settings().or(&self.defaults).resolve(),
            kind: s.kind,
            beta: s.beta.unwrap_or(defaults::stage::BETA),
        }
    }
}

/// `precision` as a candle dtype.
pub fn parse_precision(p: Option<&str>) -> Result<candle_core::DType> {
    match p.unwrap_or("f32").to_ascii_lowercase().as_str() {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        "f16" => Ok(candle_core::DType::F16),
        other => Err(Error::field(
            "precision",
            format!("`{other}`: expected f32, bf16 or f16"),
        )),
    }
}

impl Recipe {
    /// The dtype of matrix products (checked when the recipe was read).
    pub fn compute_dtype(&self) -> candle_core::DType {
        parse_precision(self.precision.as_deref()).unwrap_or(candle_core::DType::F32)
    }
}

/// A reset strategy by name, as `hft reset` takes it.
pub fn parse_reset_strategy(s: &str) -> Result<ResetStrategy> {
    ResetStrategy::parse(s).ok_or_else(|| {
        Error::field(
            "strategy",
            format!("unknown strategy `{s}` (one of {})", ResetStrategy::names()),
        )
    })
}

/// A selection strategy by name, as `hft plan` takes it.
/// The stage strategy that freezes what earlier stages changed most (see `train::derive`).
pub const PROTECT: &str = "protect";

/// A stage's strategy: one of `hft plan`'s, or `protect` (a `delta` plan over the change of
/// every earlier stage, see [`crate::train::derive`]), which ranks like `delta`.
pub fn parse_strategy(s: &str) -> Result<Strategy> {
    if s == PROTECT {
        return Ok(Strategy::Delta);
    }
    Strategy::parse(s).ok_or_else(|| {
        Error::field(
            "strategy",
            format!(
                "unknown strategy `{s}` (one of {}, protect)",
                Strategy::names()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.jsonl"), "{\"text\":\"x\"}\n").unwrap();
        std::fs::create_dir(d.path().join("m")).unwrap();
        d
    }

    const OK: &str = "model: m\noutput: out\ndefaults:\n  lr: 0.01\n  steps: 3\nplan:\n  strategy: category\neval:\n  - name: a\n    path: a.jsonl\nstages:\n  - name: s0\n    data: [{path: a.jsonl, batch: 2}]\n    tasks: [a]\n    plan: {strategy: full}\n  - name: s1\n    data: [{path: a.jsonl, batch: 2}]\n    lr: 0.5\n";

    #[test]
    fn recipes_resolve_defaults_paths_and_pinned_plans() {
        let d = setup();
        let p = d.path().join("r.yaml");
        let r = Recipe::parse(OK, &p).unwrap();
        assert_eq!(r.model, d.path().join("m"));
        let s0 = r.stage(0);
        assert!(s0.pinned);
        assert_eq!(s0.plan.strategy.as_deref(), Some("full"));
        assert_eq!(s0.settings.lr, 0.01);
        let s1 = r.stage(1);
        assert!(!s1.pinned);
        assert_eq!(s1.plan.strategy.as_deref(), Some("category"));
        assert_eq!(s1.settings.lr, 0.5);
        assert_eq!(s1.settings.steps, Some(3));
        assert_eq!(s1.data[0].path, d.path().join("a.jsonl"));
    }

    #[test]
    fn unknown_keys_name_their_line_and_missing_files_are_named() {
        let d = setup();
        let p = d.path().join("r.yaml");
        let text = OK.replace("    lr: 0.5\n", "    lr: 0.5\n    lerning_rate: 2\n");
        let e = Recipe::parse(&text, &p).unwrap_err().to_string();
        assert!(e.contains("lerning_rate") && e.contains("line 19"), "{e}");
        let e = Recipe::parse(
            &OK.replace("path: a.jsonl, batch", "path: nope.jsonl, batch"),
            &p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope.jsonl") && e.contains("not found"), "{e}");
        let e = Recipe::parse(&OK.replace("strategy: category", "strategy: halves"), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown strategy `halves`"), "{e}");
    }

    #[test]
    fn quick_blocks_merge_by_key_and_by_name_and_say_what_does_not_fit() {
        let d = setup();
        let p = d.path().join("r.yaml");
        let quick = "quick:\n  output: small\n  defaults: {steps: 1}\n  stages:\n    - {name: s1, lr: 0.25, data: [{path: a.jsonl, batch: 1}]}\n";
        std::fs::write(&p, format!("{OK}{quick}")).unwrap();
        let full = Recipe::read(&p).unwrap();
        assert_eq!(full.stage(1).settings.steps, Some(3));
        let q = Recipe::read_variant(&p, true).unwrap();
        assert_eq!(q.output, d.path().join("small"));
        assert_eq!(q.stage(0).settings.steps, Some(1));
        assert_eq!(q.stage(0).settings.lr, 0.01);
        assert!(q.stage(0).pinned);
        assert_eq!(q.stage(1).settings.lr, 0.25);
        assert_eq!(q.stage(1).data[0].batch, 1);
        assert_eq!(q.stage(1).tasks, full.stage(1).tasks);
        let bad = quick.replace("name: s1", "name: s9");
        std::fs::write(&p, format!("{OK}{bad}")).unwrap();
        let e = Recipe::read_variant(&p, true).unwrap_err().to_string();
        assert!(e.contains("quick.stages") && e.contains("`s9`"), "{e}");
        std::fs::write(&p, OK).unwrap();
        let e = Recipe::read_variant(&p, true).unwrap_err().to_string();
        assert!(e.contains("no `quick` block"), "{e}");
    }
}
