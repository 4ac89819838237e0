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
        Swift = "swift",
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
        Emit::Names | Emit::Regex | Emit::Axolotl | Emit::Swift | Emit::Llamafactory
    ) {
        partial_note(plan, &mut notes);
        experts_note(plan, layout, &mut notes);
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
        Emit::Swift => swift(plan),
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

/// Routed experts are one tensor per expert and matrix in checkpoints and in transformers 4,
/// but two fused parameters per layer in transformers 5 (`mlp.experts.gate_up_proj`,
/// `mlp.experts.down_proj`), which names and regexes cannot pick experts in.
fn experts_note(plan: &Plan, layout: &Layout, notes: &mut Vec<String>) {
    if plan.tensors.keys().any(|n| layout.role(n).expert.is_some()) {
        notes.push(
            "routed experts are listed by their checkpoint names, which are transformers 4's \
             parameters; transformers 5 fuses each layer's experts into `experts.gate_up_proj` \
             and `experts.down_proj` (and calls Mixtral's `block_sparse_moe` `mlp`), which \
             these names do not match: there, option `emit` torch applies the plan exactly"
                .into(),
        );
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

/// Axolotl's `unfrozen_parameters`: Axolotl freezes every parameter, then unfreezes those
/// whose name `re.match`es a pattern (anchored at the start only) after it has rewritten every
/// `.` not followed by `+` into `\.`. So the dots here stay bare (an escaped `\.` would become
/// a literal backslash and match nothing), each pattern ends in `$`, and none ends in `]` (that
/// would read as an index range). An empty list means "not set" to Axolotl (everything
/// trains), so a plan that trains nothing gets `^$`, which matches no name.
fn axolotl(plan: &Plan) -> String {
    let mut out = header(plan, "#");
    let names = trainable(plan);
    out.push_str("unfrozen_parameters:\n");
    if names.is_empty() {
        out.push_str("  # this plan trains nothing: the pattern below matches no parameter\n");
        out.push_str("  - '^$'\n");
        return out;
    }
    for p in patterns(&names) {
        let bare = p.replace("\\.", ".");
        let _ = writeln!(out, "  - '^{}$'", bare.replace('\'', "''"));
    }
    out
}

/// An ms-swift config (`swift sft plan.swift.yaml --model ...`): in full fine-tuning ms-swift
/// makes every parameter trainable, applies its freeze settings, then makes trainable every
/// parameter whose name `re.search`es `trainable_parameters_regex`. The regex alone therefore
/// trains everything; with `freeze_parameters_ratio: 1` (freeze all first) it trains exactly
/// the plan.
fn swift(plan: &Plan) -> String {
    let mut out = header(plan, "#");
    out.push_str(
        "# ms-swift full fine-tuning of exactly this plan: every parameter frozen first, then\n\
         # the regex's matches trained. Use: swift sft THIS_FILE --model ... (other flags after).\n\
         # ms-swift 3.x names the first key train_type.\n",
    );
    out.push_str("tuner_type: full\nfreeze_parameters_ratio: 1\n");
    let re = regex(&trainable(plan));
    let _ = writeln!(
        out,
        "trainable_parameters_regex: '{}'",
        re.replace('\'', "''")
    );
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
# names are returned. Build the optimizer with hft_param_groups(model, partial, weight_decay):
# those parameters get weight_decay=0, since decoupled weight decay would still move their
# frozen elements (the cost: their trainable elements are not decayed either).
# Parameter names may carry a prefix the checkpoint lacks (`transformer.`,
# `base_model.model.`): a name is looked up whole, then by its dotted suffixes. PEFT-wrapped
# models work too: `base_layer`, `original_module` and `modules_to_save.<adapter>` are looked
# through, and the adapters' own parameters (`lora_A`, ...) are left as PEFT set them.
# Masks are rebuilt exactly as hft does (see `hft_permute`); nothing here needs hft installed.

"#;

/// The Python half of the torch export (mask rebuilding and `apply_hft_plan`), kept as a
/// Python file so that it reads, and lints, as one.
const TORCH_CODE: &str = include_str!("torch_plan.py");

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
