//! The random strategies: category (the paper's rule), layer, model, element/full/none, LISA.

use std::collections::BTreeMap;

use super::units::{Kind, Units};
use super::{Balance, Drawn, LisaOptions, Pick, SelectOptions};
use crate::arch::Block;
use crate::error::{Error, Result};
use crate::plan::Schedule;
use crate::rng;

/// The pick of a unit no strategy draws: embeddings, head and final norm train (the paper);
/// unrecognised tensors train too (we cannot say what half of them would mean; a note says so
/// and `--exclude` freezes them).
fn default_pick(kind: Kind) -> Pick {
    match kind {
        Kind::Embed | Kind::Head | Kind::FinalNorm | Kind::Other => Pick::Train,
        _ => Pick::Freeze,
    }
}

fn note_other(us: &Units, notes: &mut Vec<String>) {
    let other: Vec<String> = us
        .units
        .iter()
        .filter(|u| u.kind == Kind::Other)
        .map(|u| u.module.clone())
        .collect();
    if !other.is_empty() {
        notes.push(format!(
            "{} tensor group(s) of unknown role train whole (option `exclude` freezes them): {}",
            other.len(),
            crate::plan::abbreviate(&other)
        ));
    }
}

/// Per-layer counts for a group with `ns[l]` units in layer `l` at ratio `r`: every layer gets
/// `floor(r * n)`, and `round(sum of the fractional parts)` layers, taken in a shuffled order,
/// get one more. At r = 0.5 and 3 FFN matrices this is the paper's "2 of 3 in a random half of
/// the layers, 1 of 3 in the other half"; at 4 attention matrices, 2 in every layer.
fn split_counts(r: f64, ns: &[usize], key: u64) -> Vec<usize> {
    let t: Vec<f64> = ns.iter().map(|&n| r * n as f64).collect();
    let base: Vec<usize> = t.iter().map(|&x| (x + 1e-9).floor() as usize).collect();
    let frac: Vec<f64> = t
        .iter()
        .zip(&base)
        .map(|(&x, &b)| (x - b as f64).max(0.0))
        .collect();
    let extra = frac.iter().sum::<f64>().round() as usize;
    let mut counts = base;
    let mut given = 0;
    for i in rng::permutation(key, ns.len()) {
        if given == extra {
            break;
        }
        if frac[i] > 1e-9 && counts[i] < ns[i] {
            counts[i] += 1;
            given += 1;
        }
    }
    counts
}

/// `k` of the units `idx` (all in one layer and group). Plain: the first `k` of a seeded
/// shuffle. Balanced: among all subsets of size `k`, the one whose parameters are closest to
/// `k / n` of the group's, ties broken by a seeded draw per subset.
fn choose(us: &Units, idx: &[usize], k: usize, key: u64, balance: Balance) -> Vec<usize> {
    let n = idx.len();
    if balance == Balance::None || k == 0 || k >= n || n > 16 {
        return rng::permutation(key, n)
            .into_iter()
            .take(k)
            .map(|i| idx[i])
            .collect();
    }
    let params: Vec<u64> = idx.iter().map(|&i| us.units[i].params).collect();
    let total: u64 = params.iter().sum();
    let target = total as f64 * k as f64 / n as f64;
    let mut best: Option<(f64, u64, u32)> = None;
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize != k {
            continue;
        }
        let sum: u64 = (0..n)
            .filter(|b| mask >> b & 1 == 1)
            .map(|b| params[b])
            .sum();
        let cand = (
            (sum as f64 - target).abs(),
            rng::draw(key, mask as u64),
            mask,
        );
        if best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
            best = Some(cand);
        }
    }
    let mask = best.expect("n >= 1 and 0 < k < n").2;
    (0..n)
        .filter(|b| mask >> b & 1 == 1)
        .map(|b| idx[b])
        .collect()
}

/// The paper's category-level rule, generalised to any ratio: in each layer, `ratio` of each
/// group (attention matrices, FFN matrices, norms, routers) trains, with fractional counts
/// spread over the layers by [`split_counts`]. In a mixture-of-experts layer the FFN rule
/// holds per feed-forward block: each routed expert's and the shared expert's gate, up and
/// down are a group of their own, and fractions spread over all blocks of the model.
pub(crate) fn category(us: &Units, opts: &SelectOptions, seed: u64) -> Drawn {
    let r = opts.ratio;
    let mut picks: Vec<Pick> = us.units.iter().map(|u| default_pick(u.kind)).collect();
    let mut notes = Vec::new();
    for kind in [Kind::Attention, Kind::Ffn, Kind::Norm, Kind::Router] {
        let mut groups: BTreeMap<(usize, Block), Vec<usize>> = BTreeMap::new();
        for (i, u) in us.units.iter().enumerate() {
            if u.kind == kind {
                if let Some(l) = u.layer {
                    let block = Block::of(u.category, u.expert);
                    groups.entry((l, block)).or_default().push(i);
                }
            }
        }
        if groups.is_empty() {
            continue;
        }
        let name = kind.as_str();
        let ns: Vec<usize> = groups.values().map(Vec::len).collect();
        let counts = split_counts(r, &ns, rng::key(seed, &format!("category/{name}/layers")));
        for (((layer, block), idx), &k) in groups.iter().zip(&counts) {
            // Dense layers keep the keys they had before experts existed (same plans).
            let key = match block {
                Block::Dense => format!("category/{name}/layer/{layer}"),
                Block::Shared => format!("category/{name}/layer/{layer}/shared"),
                Block::Expert(e) => format!("category/{name}/layer/{layer}/expert/{e}"),
            };
            for i in choose(us, idx, k, rng::key(seed, &key), opts.balance) {
                picks[i] = Pick::Train;
            }
        }
        let per_block = groups.keys().any(|(_, b)| *b != Block::Dense);
        notes.push(count_note(name, r, &ns, &counts, per_block));
    }
    if opts.balance == Balance::Params {
        notes.push(
            "balance params: in each layer, of the subsets the count rule allows, the one whose \
             parameter count is closest to count/n of the group's parameters (ties drawn)"
                .into(),
        );
    }
    note_other(us, &mut notes);
    Drawn {
        picks,
        notes,
        schedule: None,
        ratio: r,
    }
}

/// How a group's per-layer counts came out, for the plan's notes.
fn count_note(name: &str, r: f64, ns: &[usize], counts: &[usize], per_block: bool) -> String {
    let layers = ns.len();
    let n = ns[0];
    let (layer, every) = if per_block {
        ("block", "every block")
    } else {
        ("layer", "every layer")
    };
    let blocks = if per_block {
        "; a block is a dense layer's feed-forward, one routed expert or a layer's shared expert"
    } else {
        ""
    };
    if ns.iter().all(|&x| x == n) {
        let t = r * n as f64;
        let lo = counts.iter().min().copied().unwrap_or(0);
        let hi = counts.iter().max().copied().unwrap_or(0);
        if lo == hi {
            let exact = if (t - lo as f64).abs() < 1e-9 {
                String::new()
            } else {
                format!(" ({r} x {n} = {} rounded)", fmt_num(t))
            };
            format!("{name}: {lo} of {n} in {every}{exact}{blocks}")
        } else {
            let n_hi = counts.iter().filter(|&&c| c == hi).count();
            format!(
                "{name}: {r} x {n} = {} per {layer}, so {hi} of {n} in {n_hi} of {layers} {layer}s \
                 (drawn) and {lo} of {n} in the other {}{blocks}",
                fmt_num(t),
                layers - n_hi
            )
        }
    } else {
        let total: usize = ns.iter().sum();
        let k: usize = counts.iter().sum();
        format!(
            "{name}: {layer}s hold different numbers of units; {r} of each, rounded per {layer} \
             (fractions spread over drawn {layer}s): {k} of {total} in all{blocks}"
        )
    }
}

fn fmt_num(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `k = round(ratio * n)` of `n` (round half away from zero), with a note when it rounded.
fn rounded(what: &str, r: f64, n: usize, notes: &mut Vec<String>) -> usize {
    let t = r * n as f64;
    let k = (t.round() as usize).min(n);
    if (t - k as f64).abs() > 1e-9 {
        notes.push(format!("{what}: {r} x {n} = {} rounded to {k}", fmt_num(t)));
    }
    k
}

/// Whole layers: `round(ratio * layers)` drawn layers train every tensor they hold.
pub(crate) fn layer(us: &Units, r: f64, seed: u64) -> Drawn {
    let layers = us.layers();
    let mut notes = Vec::new();
    let k = rounded("layers", r, layers.len(), &mut notes);
    let chosen: Vec<usize> = rng::permutation(rng::key(seed, "layer/layers"), layers.len())
        .into_iter()
        .take(k)
        .map(|i| layers[i])
        .collect();
    let picks = us
        .units
        .iter()
        .map(|u| match u.layer {
            Some(l) if chosen.contains(&l) => Pick::Train,
            Some(_) => Pick::Freeze,
            None => default_pick(u.kind),
        })
        .collect();
    let mut sorted = chosen;
    sorted.sort_unstable();
    notes.insert(
        0,
        format!("{k} of {} layers train whole: {sorted:?}", layers.len()),
    );
    Drawn {
        picks,
        notes,
        schedule: None,
        ratio: r,
    }
}

/// `round(ratio * n)` of all `n` weight matrices of the model (parts of fused tensors count as
/// matrices), and likewise of all layer norms, drawn over the whole model.
pub(crate) fn model(us: &Units, r: f64, seed: u64) -> Drawn {
    let mut picks: Vec<Pick> = us.units.iter().map(|u| default_pick(u.kind)).collect();
    let mut notes = Vec::new();
    for (label, kinds) in [
        ("matrices", &[Kind::Attention, Kind::Ffn, Kind::Router][..]),
        ("norms", &[Kind::Norm][..]),
    ] {
        let pool: Vec<usize> = (0..us.units.len())
            .filter(|&i| kinds.contains(&us.units[i].kind))
            .collect();
        if pool.is_empty() {
            continue;
        }
        let k = rounded(label, r, pool.len(), &mut notes);
        for i in rng::permutation(rng::key(seed, &format!("model/{label}")), pool.len())
            .into_iter()
            .take(k)
        {
            picks[pool[i]] = Pick::Train;
        }
        notes.push(format!(
            "{k} of {} {label} train, drawn over the whole model",
            pool.len()
        ));
    }
    note_other(us, &mut notes);
    Drawn {
        picks,
        notes,
        schedule: None,
        ratio: r,
    }
}

/// `element` (`Pick::Mask`: every parameter tensor at exactly the ratio, embeddings, head and
/// final norm excepted unless flags say otherwise), `full` and `none`.
pub(crate) fn uniform(us: &Units, pick: Pick, r: f64) -> Drawn {
    let picks = us
        .units
        .iter()
        .map(|u| match (pick, u.kind) {
            (Pick::Mask, Kind::Embed | Kind::Head | Kind::FinalNorm) => Pick::Train,
            (p, _) => p,
        })
        .collect();
    let mut notes = Vec::new();
    match pick {
        Pick::Mask => notes.push(format!(
            "element: each matrix, bias and norm trains exactly round({r} x numel) elements, drawn \
             by rng::permute(rng::key(mask seed, name), numel, i) < count; embeddings, head and \
             final norm train whole unless flags say otherwise"
        )),
        Pick::Train => notes.push("full: every parameter trains".into()),
        Pick::Freeze => notes.push("none: every parameter is frozen".into()),
    }
    Drawn {
        picks,
        notes,
        schedule: None,
        ratio: match pick {
            Pick::Mask => r,
            Pick::Train => 1.0,
            Pick::Freeze => 0.0,
        },
    }
}

/// LISA: in period `p`, the `gamma` layers first in the shuffle keyed `lisa/period/p` train
/// whole; embeddings, head and final norm always train. The plan's tensors are period
/// `opts.period`; the schedule lists every period's layers.
pub(crate) fn lisa(us: &Units, opts: &LisaOptions, seed: u64) -> Result<Drawn> {
    let layers = us.layers();
    let n = layers.len();
    if opts.layers == 0 || opts.layers > n {
        return Err(Error::field(
            "lisa_layers",
            format!(
                "{} must be between 1 and the model's {n} layers",
                opts.layers
            ),
        ));
    }
    if opts.interval == 0 {
        return Err(Error::field("lisa_interval", "must be at least 1 step"));
    }
    if opts.period >= opts.periods as u64 {
        return Err(Error::field(
            "period",
            format!(
                "{} is past the {} periods the schedule lists (raise option `lisa-periods`)",
                opts.period, opts.periods
            ),
        ));
    }
    let periods: Vec<Vec<usize>> = (0..opts.periods)
        .map(|p| {
            let mut l: Vec<usize> =
                rng::permutation(rng::key(seed, &format!("lisa/period/{p}")), n)
                    .into_iter()
                    .take(opts.layers)
                    .map(|i| layers[i])
                    .collect();
            l.sort_unstable();
            l
        })
        .collect();
    let now = &periods[opts.period as usize];
    let picks = us
        .units
        .iter()
        .map(|u| match u.layer {
            Some(l) if now.contains(&l) => Pick::Train,
            Some(_) => Pick::Freeze,
            None => default_pick(u.kind),
        })
        .collect();
    let start = opts.period * opts.interval;
    let notes = vec![format!(
        "lisa: {} of {n} layers train per period of {} steps; the tensors below are period {} \
         (steps {start}..{}), layers {now:?}; `schedule.periods` lists every period",
        opts.layers,
        opts.interval,
        opts.period,
        start + opts.interval
    )];
    Ok(Drawn {
        picks,
        notes,
        schedule: Some(Schedule {
            kind: "lisa".into(),
            interval: opts.interval,
            layers: opts.layers,
            period: opts.period,
            periods,
        }),
        ratio: opts.layers as f64 / n as f64,
    })
}
