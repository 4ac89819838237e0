//! The informed strategies: units ranked by a score (weight RMS for `magnitude`, relative
//! change in the previous stage for `delta`), the best-ranked training.
//!
//! Matrices are taken in rank order while each one brings the trainable parameter count
//! closer to `ratio` of all matrix parameters (a prefix of the ranking, so what trains is
//! exactly "the top"); norms, all about the same size, by count (`round(ratio * norms)`).
//! Embeddings, head and final norm follow the defaults (train).

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;

use super::units::{Kind, Member, Units};
use super::{Drawn, ModelInfo, Pick, Prefer};
use crate::error::{Error, Result};
use crate::io::dtype::{self, CHUNK};
use crate::io::Checkpoint;
use crate::rng;

fn scored(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Attention | Kind::Ffn | Kind::Norm | Kind::Router
    )
}

/// RMS of each matrix and norm unit (over the elements of its members: a part of a fused
/// tensor counts its own rows only), streamed tensor by tensor from `weights`.
pub(crate) fn magnitude_scores(
    model: &ModelInfo,
    us: &Units,
    weights: &Checkpoint,
) -> Result<Vec<Option<f64>>> {
    let jobs: Vec<(usize, &Member)> = us
        .units
        .iter()
        .enumerate()
        .filter(|(_, u)| scored(u.kind))
        .flat_map(|(i, u)| u.members.iter().map(move |m| (i, m)))
        .collect();
    let sums: Vec<(usize, f64, u64)> = jobs
        .par_iter()
        .map(|&(ui, m)| {
            let (name, shape) = &model.tensors[m.tensor];
            let info = weights
                .get(name)
                .filter(|t| &t.shape == shape)
                .ok_or_else(|| {
                    Error::input(
                        &weights.source,
                        format!("`{name}` with shape {shape:?} is not in the weights"),
                    )
                })?;
            if !dtype::is_float(info.dtype) {
                return Err(Error::input(
                    &weights.source,
                    format!("`{name}` is {}; magnitude needs float weights", info.dtype),
                ));
            }
            let (s, n) = sum_squares(weights, info, m);
            weights.release(info);
            Ok((ui, s, n))
        })
        .collect::<Result<_>>()?;
    let mut acc = vec![(0f64, 0u64); us.units.len()];
    for (ui, s, n) in sums {
        acc[ui].0 += s;
        acc[ui].1 += n;
    }
    Ok(us
        .units
        .iter()
        .zip(acc)
        .map(|(u, (s, n))| (scored(u.kind) && n > 0).then(|| (s / n as f64).sqrt()))
        .collect())
}

fn sum_squares(ck: &Checkpoint, info: &crate::io::TensorInfo, m: &Member) -> (f64, u64) {
    let bytes = ck.bytes(info);
    let eb = info.dtype.bitsize() / 8;
    let numel = info.numel();
    let hit: Option<(usize, Vec<bool>)> = m.part.as_ref().map(|(axis, ranges)| {
        let along = info.shape.get(*axis).copied().unwrap_or(1).max(1);
        let inner: usize = info.shape.iter().skip(axis + 1).product();
        let mut hit = vec![false; along];
        for &(a, b) in ranges {
            for h in &mut hit[a.min(along)..b.min(along)] {
                *h = true;
            }
        }
        (inner.max(1), hit)
    });
    let mut buf = vec![0f64; CHUNK.min(numel.max(1))];
    let (mut s, mut n) = (0f64, 0u64);
    for start in (0..numel).step_by(CHUNK) {
        let end = (start + CHUNK).min(numel);
        let out = &mut buf[..end - start];
        dtype::decode_f64(info.dtype, &bytes[start * eb..end * eb], out);
        for (k, &x) in out.iter().enumerate() {
            let take = match &hit {
                None => true,
                Some((inner, hit)) => hit[((start + k) / inner) % hit.len()],
            };
            if take && x.is_finite() {
                s += x * x;
                n += 1;
            }
        }
    }
    (s, n)
}

/// Each matrix and norm unit's `rel_delta` in a `hft diff --format json` report: that of its
/// largest tensor (a bias moves with its matrix; the parts of a fused tensor share the
/// tensor's figure, since a diff reports whole tensors). The diff must be of this model.
pub(crate) fn delta_scores(model: &ModelInfo, us: &Units, path: &Path) -> Result<Vec<Option<f64>>> {
    let text = crate::io::input::read_text(path, crate::io::input::SMALL)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        Error::input(
            path,
            format!("not valid JSON ({e}); expected the JSON output of hft diff"),
        )
    })?;
    let list = v.get("tensors").and_then(Value::as_array).ok_or_else(|| {
        Error::input(
            path,
            "has no `tensors` list; expected the JSON output of hft diff",
        )
    })?;
    let mut diff: HashMap<String, (Option<Vec<usize>>, Option<f64>)> = HashMap::new();
    for (i, t) in list.iter().enumerate() {
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::input(path, format!("tensors[{i}] has no `name`")))?;
        let rel = match t.get("rel_delta") {
            Some(Value::Number(x)) => x.as_f64(),
            // null: the previous weights were all zero, so any change is infinitely large.
            Some(Value::Null) => Some(f64::INFINITY),
            _ => {
                return Err(Error::input(path, format!("`{name}` has no `rel_delta`")));
            }
        };
        let shape = t.get("shape").and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|d| d.as_u64().unwrap_or(u64::MAX) as usize)
                .collect::<Vec<usize>>()
        });
        diff.insert(name.to_string(), (shape, rel));
    }
    let mut problems = Vec::new();
    for (name, shape) in &model.tensors {
        match diff.get(name) {
            None => problems.push(format!("`{name}` is missing")),
            Some((Some(s), _)) if s != shape => {
                problems.push(format!("`{name}` has shape {s:?} there, {shape:?} here"))
            }
            _ => {}
        }
    }
    let names: std::collections::HashSet<&str> =
        model.tensors.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&String> = diff
        .keys()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    extra.sort();
    problems.extend(extra.iter().map(|n| format!("`{n}` is not in the model")));
    if !problems.is_empty() {
        let more = problems.len().saturating_sub(3);
        problems.truncate(3);
        return Err(Error::input(
            path,
            format!(
                "this diff is of another model than {}: {}{}",
                model.source.display(),
                problems.join("; "),
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(us
        .units
        .iter()
        .map(|u| {
            if !scored(u.kind) {
                return None;
            }
            let main = u
                .members
                .iter()
                .max_by_key(|m| model.tensors[m.tensor].1.iter().product::<usize>())?;
            diff.get(&model.tensors[main.tensor].0).and_then(|d| d.1)
        })
        .collect())
}

/// Picks by score: see the module documentation. Ties and missing scores are ordered by a
/// seeded draw, so the result is still a pure function of the inputs.
pub(crate) fn by_score(
    us: &Units,
    scores: &[Option<f64>],
    r: f64,
    prefer: Prefer,
    seed: u64,
    what: &str,
) -> Drawn {
    let mut picks: Vec<Pick> = us
        .units
        .iter()
        .map(|u| {
            if scored(u.kind) {
                Pick::Freeze
            } else {
                Pick::Train
            }
        })
        .collect();
    let key = rng::key(seed, "informed/ties");
    let rank = |pool: &[usize]| -> Vec<usize> {
        let mut v = pool.to_vec();
        v.sort_by(|&a, &b| {
            let (sa, sb) = (scores[a].unwrap_or(f64::NAN), scores[b].unwrap_or(f64::NAN));
            let ord = match prefer {
                Prefer::Most => sb.total_cmp(&sa),
                Prefer::Least => sa.total_cmp(&sb),
            };
            ord.then_with(|| rng::draw(key, a as u64).cmp(&rng::draw(key, b as u64)))
        });
        v
    };
    let matrices: Vec<usize> = (0..us.units.len())
        .filter(|&i| matches!(us.units[i].kind, Kind::Attention | Kind::Ffn | Kind::Router))
        .collect();
    let total: u64 = matrices.iter().map(|&i| us.units[i].params).sum();
    let target = r * total as f64;
    let mut taken = 0u64;
    let mut n_taken = 0;
    for i in rank(&matrices) {
        let p = us.units[i].params;
        if (taken + p) as f64 - target > target - taken as f64 {
            break;
        }
        picks[i] = Pick::Train;
        taken += p;
        n_taken += 1;
    }
    let norms: Vec<usize> = (0..us.units.len())
        .filter(|&i| us.units[i].kind == Kind::Norm)
        .collect();
    let k = (r * norms.len() as f64).round() as usize;
    for i in rank(&norms).into_iter().take(k) {
        picks[i] = Pick::Train;
    }
    let side = match prefer {
        Prefer::Most => "highest",
        Prefer::Least => "lowest",
    };
    let notes = vec![format!(
        "{n_taken} of {} matrices with the {side} {what} train ({:.1}% of matrix parameters, \
         the ranked prefix closest to {r}); {k} of {} norms likewise",
        matrices.len(),
        100.0 * taken as f64 / total.max(1) as f64,
        norms.len()
    )];
    Drawn {
        picks,
        notes,
        schedule: None,
        ratio: r,
    }
}
