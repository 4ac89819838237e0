//! Freeze plans: for one training stage, which tensors (or which elements, or which rows of a
//! fused tensor) train and which stay frozen.
//!
//! A plan is the hinge of the toolkit: `hft plan` writes it, `hft run` trains with it,
//! `hft reset --plan` puts back to base what it freezes, and the exports hand it to PyTorch
//! trainers. It lists every tensor of the model, so it can be checked against a model by name
//! and shape (the fingerprint), and it is a pure function of its inputs: the same model,
//! strategy, ratio, seed and stage always give the same file.

mod element;
pub mod export;

pub use element::ElementFn;

use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::arch::Layout;
use crate::error::{Error, Result};
use crate::io::checkpoint::natural_cmp;
use crate::rng;

/// Version of the plan file format; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Train,
    Freeze,
}

/// What happens to one tensor in a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Entry {
    /// `train` or `freeze`: the whole tensor.
    Whole(State),
    /// `{mask: r, seed: s}`: exactly `round(r * numel)` elements train, those whose index `i`
    /// has `rng::permute(rng::key(s, name), numel, i) < round(r * numel)`.
    Mask { mask: f64, seed: u64 },
    /// `{axis: a, rows: [[start, end], ...]}`: the index ranges along `axis` that train (parts of
    /// a fused tensor such as `qkv_proj`); everything else is frozen.
    Rows { axis: usize, rows: Vec<[usize; 2]> },
}

impl Entry {
    pub const TRAIN: Entry = Entry::Whole(State::Train);
    pub const FREEZE: Entry = Entry::Whole(State::Freeze);

    /// How many of the tensor's `numel` elements train.
    pub fn trainable(&self, shape: &[usize]) -> u64 {
        let numel: usize = shape.iter().product();
        match self {
            Entry::Whole(State::Train) => numel as u64,
            Entry::Whole(State::Freeze) => 0,
            Entry::Mask { mask, .. } => mask_count(*mask, numel as u64),
            Entry::Rows { axis, rows } => {
                let along = shape.get(*axis).copied().unwrap_or(1).max(1);
                let covered: usize = rows.iter().map(|[a, b]| b.saturating_sub(*a)).sum();
                (numel / along * covered) as u64
            }
        }
    }

    /// A per-element predicate for this entry of tensor `name` with `shape`: true where the
    /// element (flat row-major index) trains. Cheap to call per element.
    pub fn element_fn(&self, name: &str, shape: &[usize]) -> ElementFn {
        let numel: u64 = shape.iter().product::<usize>() as u64;
        match self {
            Entry::Whole(s) => ElementFn::Const(*s == State::Train),
            Entry::Mask { mask, seed } => ElementFn::mask(
                rng::Permutation::new(rng::key(*seed, name), numel),
                mask_count(*mask, numel),
            ),
            Entry::Rows { axis, rows } => {
                let along = shape.get(*axis).copied().unwrap_or(1).max(1);
                let inner: usize = shape.iter().skip(axis + 1).product();
                let mut hit = vec![false; along];
                for [a, b] in rows {
                    for h in hit.iter_mut().take((*b).min(along)).skip(*a) {
                        *h = true;
                    }
                }
                ElementFn::Rows {
                    inner: inner.max(1),
                    along,
                    hit,
                }
            }
        }
    }
}

/// The exact number of elements an element mask of ratio `r` selects (round half away from 0).
pub fn mask_count(r: f64, numel: u64) -> u64 {
    ((r.clamp(0.0, 1.0) * numel as f64).round() as u64).min(numel)
}

/// Identifies the model a plan was made for: its tensor names and shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    pub family: String,
    pub tensors: usize,
    pub params: u64,
    /// FNV-1a 64 (hex) over `name:dim,dim,...;` of every tensor in natural name order. A
    /// hand-written plan may leave it empty: it is then checked by tensor names only.
    pub hash: String,
}

impl Fingerprint {
    /// The fingerprint of a model's tensors, in any order: names are sorted (naturally, as
    /// [`crate::io::Checkpoint`] lists them) before hashing, so a plan made from a config.json
    /// and one made from the checkpoint itself agree.
    pub fn of<'a>(
        layout: &Layout,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Self {
        let mut list: Vec<(&str, &[usize])> = tensors.into_iter().collect();
        list.sort_by(|a, b| natural_cmp(a.0, b.0));
        let mut text = String::new();
        let mut params = 0u64;
        for (name, shape) in &list {
            params += shape.iter().product::<usize>() as u64;
            text.push_str(name);
            text.push(':');
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            text.push_str(&dims.join(","));
            text.push(';');
        }
        Fingerprint {
            family: layout.family_name().to_string(),
            tensors: list.len(),
            params,
            hash: format!("{:016x}", rng::fnv1a64(&text)),
        }
    }
}

/// A layer schedule (LISA): the trainable layers change every `interval` optimizer steps. The
/// plan's `tensors` section is the state during period `period`; `periods[p]` lists the layers
/// that train in period `p` (steps `p*interval .. (p+1)*interval`). In every period, a tensor
/// inside a layer trains whole iff its layer is listed; tensors outside the layers keep their
/// entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub kind: String,
    pub interval: u64,
    pub layers: usize,
    pub period: u64,
    pub periods: Vec<Vec<usize>>,
}

/// Trainable and total parameters of a group (the whole model, a layer, a category).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Count {
    pub trainable: u64,
    pub total: u64,
    pub fraction: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    #[serde(flatten)]
    pub all: Count,
    /// Per layer index (tensors outside layers are under `global`).
    pub layers: IndexMap<String, Count>,
    pub categories: IndexMap<String, Count>,
}

/// A freeze plan for one stage. Serialised as YAML (the default) or JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format: u32,
    pub strategy: String,
    pub ratio: f64,
    pub seed: u64,
    pub stage: u64,
    pub model: Fingerprint,
    /// How the strategy rounded or adjusted (e.g. per-category counts at ratios other than 0.5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Selection settings beyond strategy/ratio/seed/stage that shaped the draw (balance,
    /// include/exclude regexes, embedding/head/norm overrides, the diff a `delta` plan came
    /// from), so a plan file says how to make it again.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub options: IndexMap<String, serde_json::Value>,
    /// Present for schedules (`lisa`): the trainable set changes during the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    pub summary: Summary,
    pub tensors: IndexMap<String, Entry>,
}

impl Plan {
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.tensors.get(name)
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("plans serialise")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans serialise") + "\n"
    }

    /// Reads a plan file (YAML or JSON, which is YAML too), checking its format version.
    pub fn read(path: &Path) -> Result<Plan> {
        let text = crate::io::input::read_text(path, crate::io::input::SMALL)?;
        let plan: Plan = serde_saphyr::from_str(&text)
            .map_err(|e| Error::yaml(path, "not a valid plan file: ", &e))?;
        if plan.format != FORMAT_VERSION {
            return Err(Error::input(
                path,
                format!(
                    "plan format {} is not supported (this hft reads format {FORMAT_VERSION})",
                    plan.format
                ),
            ));
        }
        // The header's numbers are shown and copied into run reports: they must be real.
        if !(plan.ratio.is_finite() && (0.0..=1.0).contains(&plan.ratio)) {
            return Err(Error::input(
                path,
                format!("ratio {} is not a fraction in [0, 1]", plan.ratio),
            ));
        }
        const MAX: u64 = 10_000_000_000_000;
        if plan.model.tensors as u64 > MAX || plan.model.params > MAX {
            return Err(Error::input(
                path,
                format!(
                    "model.tensors {} / model.params {} are beyond any model (at most {MAX})",
                    plan.model.tensors, plan.model.params
                ),
            ));
        }
        if let Some((name, _)) = plan.tensors.iter().find(|(_, e)| {
            matches!(e, Entry::Mask { mask, .. } if !(mask.is_finite() && (0.0..=1.0).contains(mask)))
        }) {
            return Err(Error::input(
                path,
                format!("`{name}`: mask is not a fraction in [0, 1]"),
            ));
        }
        Ok(plan)
    }

    /// Checks that this plan fits a model: same tensor names and shapes. The error names the
    /// first few tensors that differ.
    pub fn check<'a>(
        &self,
        source: &Path,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<()> {
        let mut problems = Vec::new();
        let list: Vec<(&str, &[usize])> = tensors.into_iter().collect();
        let seen = list.len();
        let names: std::collections::HashSet<&str> = list.iter().map(|(n, _)| *n).collect();
        for &(name, shape) in &list {
            match self.tensors.get(name) {
                None => problems.push(format!("`{name}` is not in the plan")),
                Some(Entry::Rows { axis, rows }) => {
                    let along = shape.get(*axis).copied();
                    if along.is_none() || rows.iter().any(|[a, b]| a > b || Some(*b) > along) {
                        problems.push(format!("`{name}` rows {rows:?} do not fit shape {shape:?}"));
                    }
                }
                Some(Entry::Mask { mask, .. }) if !(0.0..=1.0).contains(mask) => {
                    problems.push(format!("`{name}` mask ratio {mask} is outside [0, 1]"))
                }
                Some(_) => {}
            }
        }
        for name in self.tensors.keys() {
            if !names.contains(name.as_str()) {
                problems.push(format!("`{name}` is in the plan but not in the model"));
            }
        }
        if problems.is_empty() && !self.model.hash.is_empty() {
            // Names agree; shapes are only in the fingerprint. The family name does not enter
            // the hash, so any layout will do here.
            let layout = Layout {
                family: None,
                dims: Default::default(),
            };
            let fp = Fingerprint::of(&layout, list.iter().copied());
            if fp.hash != self.model.hash {
                problems.push(format!(
                    "tensor shapes differ from the model the plan was made for \
                     (fingerprint {} in the plan, {} here; {seen} tensors, {} parameters here)",
                    self.model.hash, fp.hash, fp.params
                ));
            }
        }
        if problems.is_empty() {
            // The summary is what reports and exports show: it must say what the entries do
            // (a hand-edited entry leaves it stale).
            // Buffers (rotary tables, DeepSeek's router bias) are no parameters: the summary
            // leaves them out.
            let layout = Layout {
                family: crate::arch::FAMILIES
                    .iter()
                    .copied()
                    .find(|f| f.name == self.model.family),
                dims: Default::default(),
            };
            let (mut trainable, mut total) = (0u64, 0u64);
            for &(name, shape) in &list {
                if layout.role(name).category == crate::arch::Category::Buffer {
                    continue;
                }
                total += shape.iter().product::<usize>() as u64;
                trainable += self.tensors.get(name).map_or(0, |e| e.trainable(shape));
            }
            let said = &self.summary.all;
            if (said.trainable, said.total) != (trainable, total) {
                problems.push(format!(
                    "its summary says {} of {} parameters train, its tensors train {trainable} \
                     of {total}: the summary is out of date (make the plan again, or correct \
                     `trainable` and `total`)",
                    said.trainable, said.total
                ));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let more = if problems.len() > 3 {
            format!(" (and {} more)", problems.len() - 3)
        } else {
            String::new()
        };
        problems.truncate(3);
        Err(Error::input(
            source,
            format!(
                "plan does not fit this model: {}{more}",
                problems.join("; ")
            ),
        ))
    }
}

/// The first few of a list of names, for notes.
pub fn abbreviate(names: &[String]) -> String {
    let mut s = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 3 {
        s.push_str(&format!(" and {} more", names.len() - 3));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_selects_exactly_round_ratio_times_numel() {
        for (numel, ratio) in [
            (1000usize, 0.5),
            (1001, 0.5),
            (7, 0.3),
            (64, 0.0),
            (64, 1.0),
        ] {
            let e = Entry::Mask {
                mask: ratio,
                seed: 3,
            };
            let f = e.element_fn("w", &[numel]);
            let n = (0..numel).filter(|&i| f.trains(i)).count() as u64;
            assert_eq!(n, mask_count(ratio, numel as u64), "{numel} {ratio}");
            assert_eq!(n, e.trainable(&[numel]));
        }
    }

    #[test]
    fn rows_entry_counts_and_selects_rows() {
        let e = Entry::Rows {
            axis: 0,
            rows: vec![[0, 2], [5, 6]],
        };
        assert_eq!(e.trainable(&[8, 4]), 12);
        let f = e.element_fn("w", &[8, 4]);
        let rows: Vec<bool> = (0..8).map(|r| f.trains(r * 4 + 1)).collect();
        assert_eq!(rows, [true, true, false, false, false, true, false, false]);
        // Axis 1 of a [4, 6] (GPT-2 Conv1D columns).
        let c = Entry::Rows {
            axis: 1,
            rows: vec![[2, 4]],
        };
        let f = c.element_fn("w", &[4, 6]);
        assert!(f.trains(2) && f.trains(3) && !f.trains(4) && f.trains(6 + 2));
        assert_eq!(c.trainable(&[4, 6]), 8);
    }

    #[test]
    fn entries_round_trip_through_yaml() {
        let mut tensors = IndexMap::new();
        tensors.insert("a".to_string(), Entry::TRAIN);
        tensors.insert("b".to_string(), Entry::FREEZE);
        tensors.insert("c".to_string(), Entry::Mask { mask: 0.5, seed: 9 });
        tensors.insert(
            "d".to_string(),
            Entry::Rows {
                axis: 1,
                rows: vec![[0, 4]],
            },
        );
        let plan = Plan {
            format: FORMAT_VERSION,
            strategy: "test".into(),
            ratio: 0.5,
            seed: 1,
            stage: 0,
            model: Fingerprint {
                family: "llama".into(),
                tensors: 4,
                params: 10,
                hash: "00".into(),
            },
            notes: vec![],
            options: IndexMap::new(),
            schedule: None,
            summary: Summary::default(),
            tensors,
        };
        let yaml = plan.to_yaml();
        let back: Plan = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, plan, "{yaml}");
        let json: Plan = serde_json::from_str(&plan.to_json()).unwrap();
        assert_eq!(json, plan);
    }
}
