//! Stage plans, including the ones a run derives from its own measurements: a `delta` stage
//! without a diff file ranks units by how much the previous stage changed them, and a
//! `protect` stage by how much every earlier stage changed them together (measured from the
//! recipe's model), training the least changed: the hypothesis that keeping what earlier
//! tasks moved reduces forgetting. The diffs are `hft diff`'s own (`analysis::diff`), written
//! as JSON under the run's `diffs/` and made again from the checkpoints when missing (after a
//! resume, or in a grid run whose first stages were shared from another run).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::arch::Layout;
use crate::choice::Choice;
use crate::defaults;
use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::plan::{Entry, Plan};
use crate::progress::Progress;
use crate::select::{self, ModelInfo, Prefer, SelectOptions};
use crate::train::recipe::{parse_strategy, Recipe, StageSpec, PROTECT};
use crate::train::stage::Switches;

/// The directory of stage `i` in a run.
pub fn stage_dir(i: usize, name: &str) -> String {
    format!("{i:02}-{name}")
}

/// The strategy a stage draws with: the grid's override unless the stage pins its own plan.
pub fn strategy_name(spec: &StageSpec, strategy_override: Option<&str>) -> String {
    match (spec.pinned, strategy_override) {
        (false, Some(s)) => s.to_string(),
        _ => spec.plan.strategy.clone().unwrap_or_else(|| "full".into()),
    }
}

/// Whether the stage's plan is a file rather than a draw.
fn uses_file(spec: &StageSpec, strategy_override: Option<&str>) -> bool {
    spec.plan.file.is_some() && (spec.pinned || strategy_override.is_none())
}

/// The stage's strategy when it ranks by a diff (`delta`, `protect`) rather than a file.
fn ranked_by_diff(spec: &StageSpec, strategy_override: Option<&str>) -> Option<String> {
    let name = strategy_name(spec, strategy_override);
    let ranked = name == "delta" || name == PROTECT;
    (ranked && !uses_file(spec, strategy_override)).then_some(name)
}

/// Refuses a derived strategy in the first stage: nothing has been measured yet.
fn nothing_measured(spec: &StageSpec, name: &str) -> Result<()> {
    if spec.index == 0 {
        return Err(Error::field(
            "strategy",
            format!("`{name}` ranks by what earlier stages changed; the first stage has none"),
        ));
    }
    Ok(())
}

/// The diff a `delta` or `protect` stage ranks by, and what it measures (for the report):
/// the recipe's `diff` if it gives one, else made from the run's checkpoints. None for the
/// other strategies.
pub fn diff_for(
    recipe: &Recipe,
    spec: &StageSpec,
    strategy_override: Option<&str>,
    output: &Path,
) -> Result<Option<(PathBuf, String)>> {
    let Some(name) = ranked_by_diff(spec, strategy_override) else {
        return Ok(None);
    };
    if let Some(d) = &spec.plan.diff {
        return Ok(Some((d.clone(), format!("the diff {}", d.display()))));
    }
    nothing_measured(spec, &name)?;
    let i = spec.index;
    let ckpt = |k: usize| output.join(stage_dir(k, &recipe.stages[k].name));
    let (from, to, file, what) = if name == PROTECT {
        let names: Vec<&str> = recipe.stages[..i].iter().map(|s| s.name.as_str()).collect();
        (
            recipe.model.clone(),
            ckpt(i - 1),
            format!("{}-protect.json", stage_dir(i, &spec.name)),
            format!("the change of stages {} together", names.join(", ")),
        )
    } else {
        let prev = &recipe.stages[i - 1].name;
        let start = if i == 1 {
            recipe.model.clone()
        } else {
            ckpt(i - 2)
        };
        (
            start,
            ckpt(i - 1),
            format!("{}.json", stage_dir(i - 1, prev)),
            format!("the change of stage `{prev}`"),
        )
    };
    let path = output.join("diffs").join(file);
    if !path.is_file() {
        let r = crate::analysis::diff::diff(
            &Checkpoint::open(&from)?,
            &Checkpoint::open(&to)?,
            &Progress::hidden(),
        )?;
        let text = serde_json::to_string_pretty(&r).expect("diff reports serialise") + "\n";
        crate::io::atomic::write_file(&path, text.as_bytes())?;
    }
    let shown = path
        .strip_prefix(output)
        .unwrap_or(&path)
        .display()
        .to_string();
    Ok(Some((path, format!("{what} ({shown})"))))
}

/// Checks what can be checked of a stage's plan before anything runs: a drawn plan is built on
/// `start`; a derived one (whose diff does not exist yet) has its ratio and order checked.
pub fn validate(
    spec: &StageSpec,
    strategy_override: Option<&str>,
    start: &Checkpoint,
    seed: u64,
) -> Result<()> {
    let name = match ranked_by_diff(spec, strategy_override) {
        // Its diff does not exist before the run makes it: check what can be checked.
        Some(name) if spec.plan.diff.is_none() => name,
        _ => return stage_plan(spec, strategy_override, start, seed, None, None).map(|_| ()),
    };
    nothing_measured(spec, &name)?;
    let r = spec.plan.ratio.unwrap_or(defaults::RATIO);
    if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
        return Err(Error::field("ratio", format!("{r} is outside [0, 1]")));
    }
    order(spec, &name).map(|_| ())
}

fn order(spec: &StageSpec, name: &str) -> Result<Option<Prefer>> {
    match &spec.plan.order {
        None if name == PROTECT => Ok(Some(Prefer::Least)),
        None => Ok(None),
        Some(o) => Prefer::parse(o)
            .map(Some)
            .ok_or_else(|| Error::field("order", format!("`{o}`: expected least or most"))),
    }
}

/// The plan of a stage: a plan file checked against the model, or a strategy draw on the
/// stage's starting checkpoint (whose weights `magnitude` reads; `delta` and `protect` rank
/// by `diff`). A `lisa` plan lists a draw of layers for every period of `every` steps in the
/// stage's `steps` (one period when they are not known yet).
pub fn stage_plan(
    spec: &StageSpec,
    strategy_override: Option<&str>,
    start: &Checkpoint,
    default_seed: u64,
    diff: Option<&Path>,
    steps: Option<u64>,
) -> Result<Plan> {
    let info = ModelInfo::from_checkpoint(start);
    if uses_file(spec, strategy_override) {
        let f = spec.plan.file.as_ref().expect("checked");
        let plan = Plan::read(f)?;
        plan.check(f, info.names_shapes())?;
        return Ok(plan);
    }
    let name = strategy_name(spec, strategy_override);
    let strategy = parse_strategy(&name)?;
    let mut o = SelectOptions::new(
        strategy,
        spec.plan.ratio.unwrap_or(defaults::RATIO),
        spec.plan.seed.unwrap_or(default_seed),
    );
    o.stage = if spec.plan.redraw.unwrap_or(true) {
        spec.index as u64
    } else {
        0
    };
    o.prefer = order(spec, &name)?;
    o.diff = diff
        .map(Path::to_path_buf)
        .or_else(|| spec.plan.diff.clone());
    if strategy == select::Strategy::Lisa {
        o.lisa.layers = spec.plan.layers.unwrap_or(defaults::LISA_LAYERS);
        o.lisa.interval = spec.plan.every.unwrap_or(defaults::LISA_INTERVAL);
        if o.lisa.interval > 0 {
            o.lisa.periods = steps.map_or(1, |n| n.div_ceil(o.lisa.interval).max(1) as usize);
        }
    }
    let mut plan = select::build(&info, &o, Some(start))?;
    if name == PROTECT {
        plan.strategy = PROTECT.into();
    }
    Ok(plan)
}

/// The switches a `lisa` plan makes during its stage (None for every other plan): per period
/// of the schedule, a tensor inside a layer trains iff its layer is drawn; tensors outside
/// the layers keep their entry and their optimizer state.
pub fn switches(plan: &Plan, layout: &Layout) -> Option<Switches> {
    let s = plan.schedule.as_ref()?;
    let outside: HashSet<String> = plan
        .tensors
        .iter()
        .filter(|(n, e)| layout.role(n).layer.is_none() && **e == Entry::TRAIN)
        .map(|(n, _)| n.clone())
        .collect();
    let trains = s
        .periods
        .iter()
        .map(|layers| {
            let mut t = outside.clone();
            t.extend(
                plan.tensors
                    .keys()
                    .filter(|n| layout.role(n).layer.is_some_and(|l| layers.contains(&l)))
                    .cloned(),
            );
            t
        })
        .collect();
    Some(Switches {
        every: s.interval,
        trains,
        keep: outside,
    })
}

/// The plan of what trained at any time in the stage: `plan` itself, or for a schedule the
/// union of its periods' switches. What it freezes must come out of the stage unchanged.
pub fn ever_trained(plan: &Plan, layout: &Layout) -> Plan {
    let mut p = plan.clone();
    if let Some(sw) = switches(plan, layout) {
        for n in sw.trains.iter().flatten() {
            p.tensors.insert(n.clone(), Entry::TRAIN);
        }
    }
    p
}
