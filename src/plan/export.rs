//! Plans in the forms other trainers take: a name list, one anchored regex (ms-swift
//! `--trainable_parameters_regex`), an Axolotl `unfrozen_parameters` snippet, LLaMA-Factory
//! freeze-tuning settings (only where that scheme can say it), and a PyTorch function.
//!
//! Names and regexes select whole tensors. A plan whose tensors train in part (element masks,
//! rows of a fused tensor) cannot be said in them; those tensors are listed as trainable and
//! the returned notes say so. The torch export is exact: it rebuilds masks with the same
//! counter-based permutation as [`crate::rng::permute`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use indexmap::IndexMap;

use super::{Entry, Plan, State};
use crate::arch::Layout;
use crate::error::{Error, Result};

crate::choice! {
    pub enum Emit {
        Yaml = "yaml",
        Json = "json",
        Names = "names",
        Regex = "regex",
        Axolotl = "axolotl",
        Llamafactory = "llamafactory",
        Torch = "torch",
    }
}

/// An export and the notes that belong on stderr with it.
pub struct Exported {
    pub text: String,
    pub notes: Vec<String>,
}

pub fn emit(plan: &Plan, layout: &Layout, how: Emit) -> Result<Exported> {
    let mut notes = Vec::new();
    if matches!(
        how,
        Emit::Names | Emit::Regex | Emit::Axolotl | Emit::Llamafactory
    ) {
        partial_note(plan, &mut notes);
        if let Some(s) = &plan.schedule {
            notes.push(format!(
                "a {} plan changes its layers every {} steps; this export is period {} only \
                 (option `period` P exports another; option `emit` torch follows the whole \
                 schedule)",
                s.kind, s.interval, s.period
            ));
        }
    }
    let text = match how {
        Emit::Yaml => plan.to_yaml(),
        Emit::Json => plan.to_json(),
        Emit::Names => trainable(plan).iter().map(|n| format!("{n}\n")).collect(),
        Emit::Regex => regex(&trainable(plan)) + "\n",
        Emit::Axolotl => axolotl(plan),
        Emit::Llamafactory => llamafactory(plan)?,
        Emit::Torch => torch(plan, layout),
    };
    Ok(Exported { text, notes })
}

/// Whether any element of the tensor trains.
fn trains_any(e: &Entry) -> bool {
    match e {
        Entry::Whole(s) => *s == State::Train,
        Entry::Mask { mask, .. } => *mask > 0.0,
        Entry::Rows { rows, .. } => rows.iter().any(|[a, b]| b > a),
    }
}

fn is_partial(e: &Entry) -> bool {
    match e {
        Entry::Whole(_) => false,
        Entry::Mask { mask, .. } => *mask > 0.0 && *mask < 1.0,
        Entry::Rows { rows, .. } => rows.iter().any(|[a, b]| b > a),
    }
}

fn partial_note(plan: &Plan, notes: &mut Vec<String>) {
    let partial: Vec<String> = plan
        .tensors
        .iter()
        .filter(|(_, e)| is_partial(e))
        .map(|(n, _)| n.clone())
        .collect();
    if !partial.is_empty() {
        notes.push(format!(
            "{} tensor(s) train only in part (element masks or rows of fused tensors), which \
             names and regexes cannot express: they are listed as trainable whole ({}); \
             option `emit` torch applies them exactly",
            partial.len(),
            super::abbreviate(&partial)
        ));
    }
}

/// Names of the tensors any element of which trains, in plan order.
pub fn trainable(plan: &Plan) -> Vec<String> {
    plan.tensors
        .iter()
        .filter(|(_, e)| trains_any(e))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Groups names that differ only in their first numeric component (the layer index) into one
/// pattern each: `model\.layers\.(?:0|3)\.mlp\.up_proj\.weight`. Exact: it matches those
/// names and no other name of the model.
fn patterns(names: &[String]) -> Vec<String> {
    let mut groups: IndexMap<(String, String), Vec<String>> = IndexMap::new();
    for n in names {
        let parts: Vec<&str> = n.split('.').collect();
        match parts
            .iter()
            .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(i) => {
                let pre = parts[..i]
                    .iter()
                    .map(|p| format!("{p}."))
                    .collect::<String>();
                let post = parts[i + 1..]
                    .iter()
                    .map(|p| format!(".{p}"))
                    .collect::<String>();
                groups
                    .entry((pre, post))
                    .or_default()
                    .push(parts[i].to_string());
            }
            None => {
                groups.entry((n.clone(), String::new())).or_default();
            }
        }
    }
    groups
        .into_iter()
        .map(|((pre, post), nums)| match nums.len() {
            0 => regex::escape(&pre),
            1 => regex::escape(&format!("{pre}{}{post}", nums[0])),
            _ => format!(
                "{}(?:{}){}",
                regex::escape(&pre),
                nums.join("|"),
                regex::escape(&post)
            ),
        })
        .collect()
}

/// One anchored regex matching exactly `names` (and, for an empty list, nothing).
pub fn regex(names: &[String]) -> String {
    if names.is_empty() {
        return r"^[^\s\S]$".into();
    }
    format!("^(?:{})$", patterns(names).join("|"))
}

fn header(plan: &Plan, comment: &str) -> String {
    format!(
        "{comment} hft plan: strategy {} ratio {} seed {} stage {} | {} model, fingerprint {}\n",
        plan.strategy, plan.ratio, plan.seed, plan.stage, plan.model.family, plan.model.hash
    )
}

fn axolotl(plan: &Plan) -> String {
    let mut out = header(plan, "#");
    let names = trainable(plan);
    if names.is_empty() {
        out.push_str("unfrozen_parameters: []\n");
        return out;
    }
    out.push_str("unfrozen_parameters:\n");
    for p in patterns(&names) {
        let _ = writeln!(out, "  - '^{}$'", p.replace('\'', "''"));
    }
    out
}

/// LLaMA-Factory freeze tuning trains the first-level modules listed in
/// `freeze_trainable_modules` (or `all`) of the last N (or, negative, first N) layers, plus the
/// modules outside the layers in `freeze_extra_modules`, matched as substrings of parameter
/// names. We derive those settings from the plan, replay LLaMA-Factory's matching over the
/// model's names, and refuse unless the result is exactly the plan.
fn llamafactory(plan: &Plan) -> Result<String> {
    let refuse = |why: String| {
        Error::usage(format!(
            "LLaMA-Factory freeze tuning cannot express this plan: {why}. It trains whole \
             first-level modules (self_attn, mlp, ...) of the first or last N layers, so it \
             cannot pick q_proj over k_proj or scattered layers; use option `emit` axolotl, \
             regex or torch"
        ))
    };
    if let Some((n, _)) = plan.tensors.iter().find(|(_, e)| is_partial(e)) {
        return Err(refuse(format!("`{n}` trains only in part")));
    }
    let want: BTreeSet<&str> = plan
        .tensors
        .iter()
        .filter(|(_, e)| trains_any(e))
        .map(|(n, _)| n.as_str())
        .collect();
    // layer -> module -> (trained, total)
    let mut layers: BTreeMap<usize, BTreeMap<String, (usize, usize)>> = BTreeMap::new();
    let mut extra: Vec<String> = Vec::new();
    for name in plan.tensors.keys() {
        let parts: Vec<&str> = name.split('.').collect();
        let pos = parts
            .iter()
            .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        match pos {
            Some(i) if i + 1 < parts.len() => {
                let layer: usize = parts[i].parse().unwrap_or(usize::MAX);
                let module = parts[i + 1].to_string();
                let c = layers.entry(layer).or_default().entry(module).or_default();
                c.0 += want.contains(name.as_str()) as usize;
                c.1 += 1;
            }
            _ => {
                if want.contains(name.as_str()) && parts.len() >= 2 {
                    let m = parts[parts.len() - 2].to_string();
                    if !extra.contains(&m) {
                        extra.push(m);
                    }
                }
            }
        }
    }
    let n_layers = layers.len();
    let trained: Vec<usize> = layers
        .iter()
        .filter(|(_, m)| m.values().any(|c| c.0 > 0))
        .map(|(l, _)| *l)
        .collect();
    if trained.is_empty() {
        return Err(refuse("no layer trains".into()));
    }
    let ids: Vec<usize> = layers.keys().copied().collect();
    let k = trained.len();
    let n_setting: i64 = if trained == ids[n_layers - k..] {
        k as i64
    } else if trained == ids[..k] {
        -(k as i64)
    } else {
        return Err(refuse(format!(
            "the training layers {trained:?} are not the first or last {k}"
        )));
    };
    let mut modules: Option<BTreeSet<String>> = None;
    for &l in &trained {
        let m = &layers[&l];
        if let Some((name, c)) = m.iter().find(|(_, c)| c.0 > 0 && c.0 < c.1) {
            return Err(refuse(format!(
                "layer {l} trains {} of the {} tensors of `{name}`",
                c.0, c.1
            )));
        }
        let set: BTreeSet<String> = m
            .iter()
            .filter(|(_, c)| c.0 > 0)
            .map(|(n, _)| n.clone())
            .collect();
        match &modules {
            None => modules = Some(set),
            Some(s) if *s != set => {
                return Err(refuse(format!(
                    "layers {} and {l} train different modules ({s:?} and {set:?})",
                    trained[0]
                )))
            }
            _ => {}
        }
    }
    let modules = modules.unwrap_or_default();
    let all_modules = trained.iter().all(|l| layers[l].len() == modules.len());
    let module_setting = if all_modules {
        "all".to_string()
    } else {
        modules.iter().cloned().collect::<Vec<_>>().join(",")
    };
    // Replay LLaMA-Factory's substring matching over every name.
    let layer_ids: Vec<usize> = if n_setting > 0 {
        ids[n_layers - k..].to_vec()
    } else {
        ids[..k].to_vec()
    };
    let mut needles: Vec<String> = Vec::new();
    for l in &layer_ids {
        if all_modules {
            needles.push(format!(".{l}."));
        } else {
            needles.extend(modules.iter().map(|m| format!(".{l}.{m}")));
        }
    }
    needles.extend(extra.iter().cloned());
    for name in plan.tensors.keys() {
        let lf = needles.iter().any(|n| name.contains(n.as_str()));
        if lf != want.contains(name.as_str()) {
            return Err(refuse(format!(
                "its name matching would {} `{name}`",
                if lf { "also train" } else { "not train" }
            )));
        }
    }
    let mut out = header(plan, "###");
    out.push_str("finetuning_type: freeze\n");
    let _ = writeln!(out, "freeze_trainable_layers: {n_setting}");
    let _ = writeln!(out, "freeze_trainable_modules: {module_setting}");
    if !extra.is_empty() {
        let _ = writeln!(out, "freeze_extra_modules: {}", extra.join(","));
    }
    Ok(out)
}

fn py_str(s: &str) -> String {
    // JSON string literals are Python string literals.
    serde_json::to_string(s).expect("strings serialise")
}

fn torch(plan: &Plan, layout: &Layout) -> String {
    let mut out = String::new();
    out.push_str(&header(plan, "#"));
    out.push_str(TORCH_DOC);
    out.push_str("PLAN = {\n");
    for (name, e) in &plan.tensors {
        let v = match e {
            Entry::Whole(State::Train) => "\"train\"".to_string(),
            Entry::Whole(State::Freeze) => "\"freeze\"".to_string(),
            Entry::Mask { mask, seed } => format!("(\"mask\", {mask:?}, {seed})"),
            Entry::Rows { axis, rows } => {
                let r: Vec<String> = rows.iter().map(|[a, b]| format!("({a}, {b})")).collect();
                format!("(\"rows\", {axis}, [{}])", r.join(", "))
            }
        };
        let _ = writeln!(out, "    {}: {v},", py_str(name));
    }
    out.push_str("}\n\n");
    match &plan.schedule {
        None => out.push_str("SCHEDULE = None\n"),
        Some(s) => {
            let periods: Vec<String> = s.periods.iter().map(|p| format!("{p:?}")).collect();
            let _ = writeln!(out, "SCHEDULE = {{");
            let _ = writeln!(out, "    \"interval\": {},", s.interval);
            let _ = writeln!(out, "    \"periods\": [{}],", periods.join(", "));
            let _ = writeln!(out, "    \"layer\": {{");
            for name in plan.tensors.keys() {
                if let Some(l) = layout.role(name).layer {
                    let _ = writeln!(out, "        {}: {l},", py_str(name));
                }
            }
            out.push_str("    },\n}\n");
        }
    }
    out.push_str(TORCH_CODE);
    out
}

const TORCH_DOC: &str = r#"#
# Usage (plain PyTorch, DDP, DeepSpeed ZeRO 1/2; FSDP with use_orig_params=True), before the
# model is wrapped and the optimizer is built:
#
#     partial = apply_hft_plan(model)        # LISA schedules: apply_hft_plan(model, step)
#
# Sets requires_grad per parameter. Tensors that train only in part (element masks, rows of a
# fused tensor) keep requires_grad and get a gradient hook zeroing their frozen elements; their
# names are returned: give them weight_decay=0, or decoupled weight decay still moves the
# frozen elements. Parameter names may carry a prefix the checkpoint lacks (`transformer.`,
# `base_model.model.`): a name is looked up whole, then by its dotted suffixes.
# Masks are rebuilt exactly as hft does (see `hft_permute`); nothing here needs hft installed.

"#;

const TORCH_CODE: &str = r#"
_M64 = (1 << 64) - 1
_C = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_C_SIGNED = tuple(c - (1 << 64) for c in _C)  # the same bits as torch.int64 scalars


def _wrap(v):
    return v & _M64


def _same(v):
    return v  # torch.int64 arithmetic wraps by itself


def _srl(x, s):
    # Logical right shift, also for two's-complement int64 tensors.
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(x, c=_C, wrap=_wrap):
    z = wrap(x + c[0])
    z = wrap((z ^ _srl(z, 30)) * c[1])
    z = wrap((z ^ _srl(z, 27)) * c[2])
    return z ^ _srl(z, 31)


def _fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h


def hft_key(seed, name):
    """rng::key: splitmix64(seed ^ fnv1a64(name))."""
    return _splitmix64((seed & _M64) ^ _fnv1a64(name))


def _half(n):
    bits = (max(n, 4) - 1).bit_length()
    bits = (bits + 1) // 2 * 2
    half = bits // 2
    return half, (1 << half) - 1


def _feistel(x, key, half, mask, c, wrap):
    l, r = x >> half, x & mask
    for rnd in range(4):
        f = _splitmix64(key ^ (rnd << 56) ^ r, c, wrap) & mask
        l, r = r, l ^ f
    return (l << half) | r


def hft_permute(key, n, i):
    """rng::permute: a keyed bijection of range(n), evaluated at i (4-round Feistel network
    with cycle walking). Element i of a mask trains iff hft_permute(key, n, i) < count."""
    half, mask = _half(n)
    x = i
    while True:
        x = _feistel(x, key, half, mask, _C, _wrap)
        if x < n:
            return x


def hft_mask_count(ratio, numel):
    """round(ratio * numel), halves away from zero, as hft rounds."""
    x = min(max(ratio, 0.0), 1.0) * numel
    k = int(x)
    if x - k >= 0.5:
        k += 1
    return min(k, numel)


def _element_mask(name, numel, ratio, seed, device, chunk=1 << 22):
    import torch

    k = hft_mask_count(ratio, numel)
    if k >= numel or k == 0:
        return torch.full((numel,), k > 0, dtype=torch.bool, device=device)
    key = hft_key(seed, name)
    key = key - (1 << 64) if key >= (1 << 63) else key
    half, mask = _half(numel)
    out = torch.empty(numel, dtype=torch.bool, device=device)
    for start in range(0, numel, chunk):
        end = min(start + chunk, numel)
        x = torch.arange(start, end, dtype=torch.int64, device=device)
        x = _feistel(x, key, half, mask, _C_SIGNED, _same)
        while True:
            out_of_range = x >= numel
            if not bool(out_of_range.any()):
                break
            x[out_of_range] = _feistel(x[out_of_range], key, half, mask, _C_SIGNED, _same)
        out[start:end] = x < k
    return out


def hft_trainable_mask(name, shape, entry, device=None):
    """A bool tensor of `shape`: True where the plan entry trains."""
    import torch

    numel = 1
    for d in shape:
        numel *= d
    if entry == "train" or entry == "freeze":
        return torch.full(tuple(shape), entry == "train", dtype=torch.bool, device=device)
    if entry[0] == "mask":
        return _element_mask(name, numel, entry[1], entry[2], device).reshape(tuple(shape))
    _, axis, rows = entry
    keep = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    for a, b in rows:
        index = [slice(None)] * len(shape)
        index[axis] = slice(a, b)
        keep[tuple(index)] = True
    return keep


def _entries(step):
    if SCHEDULE is None:
        return PLAN
    period = step // SCHEDULE["interval"]
    if period >= len(SCHEDULE["periods"]):
        raise ValueError(
            f"step {step} is in period {period}, past the {len(SCHEDULE['periods'])} periods "
            "this plan lists; regenerate it with a larger --lisa-periods"
        )
    layers = set(SCHEDULE["periods"][period])
    entries = dict(PLAN)
    for name, layer in SCHEDULE["layer"].items():
        entries[name] = "train" if layer in layers else "freeze"
    return entries


def _resolve(name, entries):
    parts = name.split(".")
    for i in range(len(parts)):
        cand = ".".join(parts[i:])
        if cand in entries:
            return cand
    return None


def apply_hft_plan(model, step=0, strict=True):
    """Freeze and unfreeze `model`'s parameters as the plan says (for a LISA schedule, as it
    says at optimizer step `step`). Returns the names of the parameters that train in part."""
    entries = _entries(step)
    partial = []
    for pname, p in model.named_parameters():
        name = _resolve(pname, entries)
        if name is None:
            if strict:
                raise KeyError(f"parameter {pname} is not in the plan (a plan for another model?)")
            continue
        entry = entries[name]
        old = getattr(p, "_hft_hook", None)
        if old is not None:
            old.remove()
            p._hft_hook = None
        if entry == "train" or entry == "freeze":
            p.requires_grad_(entry == "train")
            continue
        keep = hft_trainable_mask(name, tuple(p.shape), entry, device=p.device)
        p.requires_grad_(True)
        p._hft_hook = p.register_hook(lambda g, keep=keep: g * keep.to(g.dtype))
        partial.append(pname)
    return partial
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_groups_layers_and_matches_exactly() {
        let names: Vec<String> = [
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.10.mlp.up_proj.weight",
            "model.norm.weight",
            "h.1.attn.c_attn.bias",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = regex::Regex::new(&regex(&names)).unwrap();
        for n in &names {
            assert!(r.is_match(n), "{n}");
        }
        for n in [
            "model.layers.1.mlp.up_proj.weight",
            "model.layers.100.mlp.up_proj.weight",
            "xmodel.norm.weight",
            "model.norm.weights",
            "model.layers.0.mlp.up_proj.weight.x",
        ] {
            assert!(!r.is_match(n), "{n}");
        }
        let none = regex::Regex::new(&regex(&[])).unwrap();
        assert!(!none.is_match("") && !none.is_match("a"));
    }
}
