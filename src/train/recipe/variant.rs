//! Variants of a recipe: its `quick` block laid over it, another seed, and one numeric stage
//! field set (a sweep's cell).

use crate::defaults;
use crate::error::{Error, Result};

use super::{PlanSpec, Post, Recipe, StageKind};

/// A sweep error, on the grid's `sweep` field.
fn bad(msg: String) -> Error {
    Error::field("sweep", msg)
}

/// Lays `over` onto `base` (see [`Recipe::quick`]); `at` names the place for errors.
pub fn merge(base: &mut serde_json::Value, over: &serde_json::Value, at: &str) -> Result<()> {
    use serde_json::Value;
    let named = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) => merge(bv, v, &format!("{at}.{k}"))?,
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o))
            if !b.is_empty() && b.iter().all(|x| named(x).is_some()) =>
        {
            for item in o {
                let name = named(item).ok_or_else(|| {
                    Error::field(at, "every item needs the `name` of the item it changes")
                })?;
                let target = b
                    .iter_mut()
                    .find(|x| named(x).as_deref() == Some(name.as_str()))
                    .ok_or_else(|| {
                        Error::field(at, format!("the recipe has no item named `{name}`"))
                    })?;
                merge(target, item, &format!("{at}.{name}"))?;
            }
        }
        (b, o) => *b = o.clone(),
    }
    Ok(())
}

/// The numeric stage fields a sweep can vary.
pub const SWEEP_KEYS: &[&str] = &[
    "lr",
    "steps",
    "warmup",
    "min_lr",
    "weight_decay",
    "clip",
    "accumulate",
    "seq_len",
    "beta",
    "ratio",
];

impl Recipe {
    /// The same recipe under another seed. Explicit plan and reset seeds move by the same
    /// offset, so `seed` equal to the recipe's own reproduces it exactly and every other seed
    /// changes every draw (data order, plans, post-hoc resets) together.
    pub fn with_seed(&self, seed: u64) -> Recipe {
        let d = seed.wrapping_sub(self.seed);
        let mut r = self.clone();
        r.seed = seed;
        let shift = |p: &mut PlanSpec| p.seed = p.seed.map(|s| s.wrapping_add(d));
        shift(&mut r.plan);
        for s in &mut r.stages {
            if let Some(p) = s.plan.as_mut() {
                shift(p);
            }
        }
        for p in &mut r.post {
            if let Post::Reset { seed, .. } = p {
                *seed = seed.wrapping_add(d);
            }
        }
        r
    }

    /// Sets a numeric stage field, as a sweep does: `KEY` sets it on every stage that does
    /// not pin its own plan (the stages a comparison varies), `STAGE.KEY` on the named stage.
    /// With `scale`, `value` multiplies each stage's current value instead.
    pub fn set_field(&mut self, key: &str, value: f64, scale: bool) -> Result<()> {
        let (stage, field) = match key.split_once('.') {
            Some((s, f)) => (Some(s), f),
            None => (None, key),
        };
        if !SWEEP_KEYS.contains(&field) {
            return Err(bad(format!(
                "`{field}` is not a numeric stage field (one of {})",
                SWEEP_KEYS.join(", ")
            )));
        }
        let targets: Vec<usize> = match stage {
            Some(name) => {
                let i = self
                    .stages
                    .iter()
                    .position(|s| s.name == name)
                    .ok_or_else(|| bad(format!("`{key}`: the recipe has no stage `{name}`")))?;
                if field == "beta" && self.stages[i].kind != StageKind::Dpo {
                    return Err(bad(format!("`{key}`: stage `{name}` is not a dpo stage")));
                }
                vec![i]
            }
            None => (0..self.stages.len())
                .filter(|&i| self.stages[i].plan.is_none())
                .filter(|&i| field != "beta" || self.stages[i].kind == StageKind::Dpo)
                .collect(),
        };
        if targets.is_empty() {
            return Err(bad(format!(
                "`{key}`: no stage to set (it applies to the stages without a plan of their own{}); \
                 name one as STAGE.{field}",
                if field == "beta" { " that are dpo stages" } else { "" }
            )));
        }
        for i in targets {
            let cur = self.stage(i);
            let st = &cur.settings;
            let old = match field {
                "lr" => Some(st.lr),
                "steps" => st.steps.map(|v| v as f64),
                "warmup" => Some(st.warmup),
                "min_lr" => Some(st.min_lr),
                "weight_decay" => Some(st.weight_decay),
                "clip" => Some(st.clip),
                "accumulate" => Some(st.accumulate as f64),
                "seq_len" => Some(st.seq_len as f64),
                "beta" => Some(cur.beta),
                _ => Some(cur.plan.ratio.unwrap_or(defaults::RATIO)),
            };
            let v = if scale {
                old.ok_or_else(|| {
                    bad(format!(
                        "`{key}`: stage `{}` has no {field} to scale",
                        cur.name
                    ))
                })? * value
            } else {
                value
            };
            let name = &cur.name;
            let int = |v: f64| -> Result<u64> {
                let r = if scale { v.round().max(1.0) } else { v };
                if r.fract() != 0.0 || r < 1.0 {
                    return Err(bad(format!(
                        "`{key}` = {v} for stage `{name}`: needs a whole number >= 1"
                    )));
                }
                Ok(r as u64)
            };
            let within = |lo: f64, hi: f64| -> Result<f64> {
                if (lo..=hi).contains(&v) {
                    Ok(v)
                } else {
                    Err(bad(format!(
                        "`{key}` = {v} for stage `{name}`: must lie in [{lo}, {hi}]"
                    )))
                }
            };
            let positive = || -> Result<f64> {
                if v > 0.0 && v.is_finite() {
                    Ok(v)
                } else {
                    Err(bad(format!(
                        "`{key}` = {v} for stage `{name}`: must be positive"
                    )))
                }
            };
            let s = &mut self.stages[i];
            match field {
                "lr" => s.lr = Some(positive()?),
                "steps" => s.steps = Some(int(v)?),
                "warmup" => s.warmup = Some(within(0.0, 1.0)?),
                "min_lr" => s.min_lr = Some(within(0.0, 1.0)?),
                "weight_decay" => s.weight_decay = Some(within(0.0, f64::MAX)?),
                "clip" => s.clip = Some(within(0.0, f64::MAX)?),
                "accumulate" => s.accumulate = Some(int(v)?),
                "seq_len" => s.seq_len = Some(int(v)? as usize),
                "beta" => s.beta = Some(positive()?),
                _ => {
                    let r = within(0.0, 1.0)?;
                    match s.plan.as_mut() {
                        Some(p) => p.ratio = Some(r),
                        None => s.ratio = Some(r),
                    }
                }
            }
        }
        Ok(())
    }
}
