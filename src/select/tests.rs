use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::units::{unit_states, units, Kind};
use super::*;
use crate::plan::State;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn model(name: &str) -> ModelInfo {
    ModelInfo::open(&fixture(name)).unwrap()
}

fn plan(m: &ModelInfo, strategy: Strategy, ratio: f64, seed: u64, stage: u64) -> Plan {
    let mut o = SelectOptions::new(strategy, ratio, seed);
    o.stage = stage;
    build(m, &o, None).unwrap()
}

/// Per layer and kind: how many units train fully (and none trains in part).
fn counts(m: &ModelInfo, p: &Plan) -> BTreeMap<(usize, Kind), (usize, usize)> {
    let us = units(m);
    let mut c: BTreeMap<(usize, Kind), (usize, usize)> = BTreeMap::new();
    for s in unit_states(m, &us, &p.tensors) {
        let u = &us.units[s.unit];
        assert!(
            s.trainable == 0 || s.trainable == s.total,
            "{:?} {:?} trains in part",
            u.layer,
            u.category
        );
        if let Some(l) = u.layer {
            let e = c.entry((l, u.kind)).or_default();
            e.0 += (s.trainable > 0) as usize;
            e.1 += 1;
        }
    }
    c
}

/// The paper's rule: 2 of 4 attention, FFN 2 of 3 in exactly half the layers and 1 of 3 in
/// the others (1 of 2 for GPT-2's two FFN matrices), 1 of 2 norms; embeddings/head train;
/// biases go with their matrices; buffers never train.
fn assert_category_rule(m: &ModelInfo, p: &Plan) {
    let c = counts(m, p);
    let layers: Vec<usize> = c
        .keys()
        .map(|k| k.0)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut ffn_hi = 0;
    for &l in &layers {
        let (a, an) = c[&(l, Kind::Attention)];
        assert_eq!((a, an), (2, 4), "layer {l} attention");
        let (n, nn) = c[&(l, Kind::Norm)];
        assert_eq!((n, nn), (1, 2), "layer {l} norms");
        let (f, fnn) = c[&(l, Kind::Ffn)];
        if fnn == 3 {
            assert!(f == 1 || f == 2, "layer {l} ffn {f}");
            ffn_hi += (f == 2) as usize;
        } else {
            assert_eq!((f, fnn), (1, 2), "layer {l} ffn");
        }
    }
    if c[&(layers[0], Kind::Ffn)].1 == 3 {
        assert_eq!(
            ffn_hi * 2,
            layers.len(),
            "FFN 2-of-3 layers are exactly half"
        );
    }
    for (name, e) in &p.tensors {
        let role = m.layout.role(name);
        match role.unit_category() {
            crate::arch::Category::Embed
            | crate::arch::Category::PosEmbed
            | crate::arch::Category::LmHead
            | crate::arch::Category::FinalNorm => assert_eq!(e, &Entry::TRAIN, "{name}"),
            crate::arch::Category::Buffer => assert_eq!(e, &Entry::FREEZE, "{name}"),
            _ => {}
        }
        // A bias has the entry of its weight (same rows for a fused c_attn, whose weight
        // splits columns and whose bias splits its only axis).
        if let Some(w) = name.strip_suffix(".bias").map(|s| format!("{s}.weight")) {
            if role.category == crate::arch::Category::Bias {
                let we = &p.tensors[&w];
                match (we, e) {
                    (Entry::Rows { rows: a, .. }, Entry::Rows { rows: b, axis }) => {
                        assert_eq!((a, *axis), (b, 0), "{name}")
                    }
                    _ => assert_eq!(we, e, "{name}"),
                }
            }
        }
    }
}

#[test]
fn category_rule_holds_on_llama_qwen2_gpt2_for_many_seeds() {
    for fx in ["llama-base", "qwen2-base", "gpt2-base"] {
        let m = model(fx);
        for seed in 0..25 {
            for stage in [0, 3] {
                let p = plan(&m, Strategy::Category, 0.5, seed, stage);
                assert_category_rule(&m, &p);
            }
        }
    }
}

#[test]
fn gpt2_c_attn_is_split_by_columns() {
    let m = model("gpt2-base");
    let p = plan(&m, Strategy::Category, 0.5, 1, 0);
    let mut rows = 0;
    for (name, e) in &p.tensors {
        if name.ends_with("attn.c_attn.weight") {
            match e {
                Entry::Rows { axis, rows: r } => {
                    assert_eq!(*axis, 1);
                    // Each part is 32 columns of 96; 2 of q/k/v/o train, so 1 or 2 parts here.
                    let cols: usize = r.iter().map(|[a, b]| b - a).sum();
                    assert!(cols == 32 || cols == 64, "{r:?}");
                    rows += 1;
                }
                Entry::Whole(_) => {} // q, k, v all or none (with o the other one)
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(rows > 0);
    // The element predicate agrees with the summary's counts.
    let (name, shape) = m
        .tensors
        .iter()
        .find(|(n, _)| n == "h.0.attn.c_attn.weight")
        .unwrap();
    let e = &p.tensors[name];
    let f = e.element_fn(name, shape);
    let n = (0..shape.iter().product()).filter(|&i| f.trains(i)).count() as u64;
    assert_eq!(n, e.trainable(shape));
}

#[test]
fn same_inputs_same_file_and_stages_redraw() {
    let m = model("llama-base");
    let a = plan(&m, Strategy::Category, 0.5, 7, 2);
    let b = plan(&m, Strategy::Category, 0.5, 7, 2);
    assert_eq!(a.to_yaml(), b.to_yaml());
    let others: Vec<Plan> = (0..4)
        .map(|s| plan(&m, Strategy::Category, 0.5, 7, s))
        .collect();
    for (i, o) in others.iter().enumerate() {
        if i != 2 {
            assert_ne!(o.tensors, a.tensors, "stage {i} drew like stage 2");
        }
    }
    assert_ne!(plan(&m, Strategy::Category, 0.5, 8, 2).tensors, a.tensors);
}

#[test]
fn element_masks_hit_the_ratio_exactly_per_tensor() {
    let m = model("qwen2-base");
    for ratio in [0.5, 0.3, 1.0 / 3.0] {
        let p = plan(&m, Strategy::Element, ratio, 5, 1);
        let mut masked = 0;
        for (name, shape) in &m.tensors {
            let e = &p.tensors[name];
            let numel: usize = shape.iter().product();
            match e {
                Entry::Mask { mask, seed } => {
                    assert_eq!(*seed, stage_seed(5, 1));
                    let f = e.element_fn(name, shape);
                    let n = (0..numel).filter(|&i| f.trains(i)).count() as u64;
                    assert_eq!(n, crate::plan::mask_count(*mask, numel as u64), "{name}");
                    masked += 1;
                }
                Entry::Whole(State::Train) => {
                    let c = m.layout.role(name).category;
                    assert!(
                        matches!(
                            c,
                            crate::arch::Category::Embed
                                | crate::arch::Category::LmHead
                                | crate::arch::Category::FinalNorm
                        ),
                        "{name}"
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(masked > 20);
    }
}

#[test]
fn balance_params_evens_out_gqa_attention() {
    let m = model("llama-base");
    for seed in 0..10 {
        let mut o = SelectOptions::new(Strategy::Category, 0.5, seed);
        o.balance = Balance::Params;
        let p = build(&m, &o, None).unwrap();
        assert_category_rule(&m, &p);
        // q and o are 64x64, k and v 32x64: only {q|o} + {k|v} is exactly half.
        for l in 0..4 {
            let pre = format!("model.layers.{l}.self_attn.");
            let t = |x: &str| p.tensors[&format!("{pre}{x}_proj.weight")] == Entry::TRAIN;
            assert!(t("q") ^ t("o"), "layer {l}");
            assert!(t("k") ^ t("v"), "layer {l}");
        }
        assert_eq!(
            p.summary.categories["attn_q"].trainable + p.summary.categories["attn_o"].trainable,
            4 * 4096
        );
    }
}

#[test]
fn other_ratios_scale_the_counts_and_say_how() {
    let m = model("llama-base");
    let p = plan(&m, Strategy::Category, 0.25, 3, 0);
    let c = counts(&m, &p);
    let ffn: Vec<usize> = (0..4).map(|l| c[&(l, Kind::Ffn)].0).collect();
    assert_eq!(
        ffn.iter().sum::<usize>(),
        3,
        "0.25 x 3 x 4 layers = 3 FFN matrices"
    );
    assert!((0..4).all(|l| c[&(l, Kind::Attention)].0 == 1));
    assert_eq!((0..4).map(|l| c[&(l, Kind::Norm)].0).sum::<usize>(), 2);
    assert!(
        p.notes.iter().any(|n| n.contains("0.25 x 3 = 0.75")),
        "{:?}",
        p.notes
    );
}

#[test]
fn layer_model_full_none() {
    let m = model("llama-base");
    let p = plan(&m, Strategy::Layer, 0.5, 1, 0);
    let c = counts(&m, &p);
    let whole: Vec<bool> = (0..4)
        .map(|l| {
            let a = c[&(l, Kind::Attention)].0 + c[&(l, Kind::Ffn)].0 + c[&(l, Kind::Norm)].0;
            assert!(a == 0 || a == 9, "layer {l} is all or nothing");
            a == 9
        })
        .collect();
    assert_eq!(whole.iter().filter(|&&w| w).count(), 2);

    let p = plan(&m, Strategy::Model, 0.5, 1, 0);
    let c = counts(&m, &p);
    let mats: usize = c
        .iter()
        .filter(|(k, _)| k.1 != Kind::Norm)
        .map(|(_, v)| v.0)
        .sum();
    assert_eq!(mats, 14, "half of 28 matrices");

    let full = plan(&m, Strategy::Full, 0.5, 1, 0);
    assert!(full.tensors.values().all(|e| *e == Entry::TRAIN));
    assert_eq!(full.summary.all.fraction, 1.0);
    let none = plan(&m, Strategy::None, 0.5, 1, 0);
    assert!(none.tensors.values().all(|e| *e == Entry::FREEZE));
}

#[test]
fn flags_and_include_exclude_override() {
    let m = model("llama-base");
    let mut o = SelectOptions::new(Strategy::Category, 0.5, 1);
    o.embeddings = Some(false);
    o.final_norm = Some(false);
    o.norms = Some(true);
    o.include = vec![r"layers\.0\.mlp\.".into()];
    o.exclude = vec![r"layers\.0\.mlp\.down".into()];
    let p = build(&m, &o, None).unwrap();
    assert_eq!(p.tensors["model.embed_tokens.weight"], Entry::FREEZE);
    assert_eq!(p.tensors["lm_head.weight"], Entry::TRAIN);
    assert_eq!(p.tensors["model.norm.weight"], Entry::FREEZE);
    assert_eq!(
        p.tensors["model.layers.2.input_layernorm.weight"],
        Entry::TRAIN
    );
    assert_eq!(
        p.tensors["model.layers.0.mlp.gate_proj.weight"],
        Entry::TRAIN
    );
    assert_eq!(
        p.tensors["model.layers.0.mlp.down_proj.weight"],
        Entry::FREEZE
    );
    assert_eq!(
        p.options["exclude"],
        serde_json::json!([r"layers\.0\.mlp\.down"])
    );
}

#[test]
fn bad_options_are_usage_errors() {
    let m = model("llama-base");
    for r in [1.5, -0.1, f64::NAN] {
        let e = build(&m, &SelectOptions::new(Strategy::Category, r, 1), None).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }
    let mut o = SelectOptions::new(Strategy::Layer, 0.5, 1);
    o.balance = Balance::Params;
    assert!(build(&m, &o, None).is_err());
    let mut o = SelectOptions::new(Strategy::Category, 0.5, 1);
    o.include = vec!["(".into()];
    let e = build(&m, &o, None).unwrap_err();
    assert!(
        matches!(&e, crate::Error::Field { field, .. } if field == "include"),
        "{e}"
    );
    let e = build(&m, &SelectOptions::new(Strategy::Magnitude, 0.5, 1), None).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let e = build(&m, &SelectOptions::new(Strategy::Delta, 0.5, 1), None).unwrap_err();
    assert!(
        matches!(&e, crate::Error::Field { field, .. } if field == "diff"),
        "{e}"
    );
}

#[test]
fn config_json_alone_gives_the_checkpoint_fingerprint() {
    for fx in ["llama-base", "qwen2-base", "llama-tied-resized"] {
        let from_ck = model(fx);
        let from_cfg = ModelInfo::open(&fixture(fx).join("config.json")).unwrap();
        assert_eq!(from_cfg.tensors, from_ck.tensors, "{fx}");
        assert_eq!(from_cfg.fingerprint(), from_ck.fingerprint(), "{fx}");
        let a = plan(&from_ck, Strategy::Category, 0.5, 4, 1);
        let b = plan(&from_cfg, Strategy::Category, 0.5, 4, 1);
        assert_eq!(a, b);
    }
    let e = ModelInfo::open(&fixture("gpt2-base").join("config.json")).unwrap_err();
    assert!(e.to_string().contains("give the checkpoint"), "{e}");
}

#[test]
fn a_fused_phi3_config_splits_into_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({
        "model_type": "phi3", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 100
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let m = ModelInfo::open(&path).unwrap();
    let p = plan(&m, Strategy::Category, 0.5, 2, 0);
    let c = counts(&m, &p);
    for l in 0..4 {
        assert_eq!(c[&(l, Kind::Attention)], (2, 4));
        assert_eq!(c[&(l, Kind::Norm)], (1, 2));
    }
    let ffn_hi = (0..4).filter(|&l| c[&(l, Kind::Ffn)].0 == 2).count();
    assert_eq!(ffn_hi, 2);
    assert!(p
        .tensors
        .values()
        .any(|e| matches!(e, Entry::Rows { axis: 0, .. })));
}

#[test]
fn lisa_lists_every_period_and_shows_the_asked_one() {
    let m = model("llama-base");
    let mut o = SelectOptions::new(Strategy::Lisa, 0.5, 9);
    o.lisa.period = 3;
    let p = build(&m, &o, None).unwrap();
    let s = p.schedule.as_ref().unwrap();
    assert_eq!(s.periods.len(), 50);
    assert!(s.periods.iter().all(|l| l.len() == 2));
    assert!(
        s.periods.iter().any(|l| l != &s.periods[0]),
        "periods redraw"
    );
    for l in 0..4 {
        let e = &p.tensors[&format!("model.layers.{l}.self_attn.q_proj.weight")];
        assert_eq!(*e == Entry::TRAIN, s.periods[3].contains(&l));
    }
    assert_eq!(p.tensors["lm_head.weight"], Entry::TRAIN);
    assert_eq!(p.ratio, 0.5);
    o.lisa.layers = 5;
    assert!(build(&m, &o, None).is_err());
}

#[test]
fn magnitude_reads_weights_and_delta_reads_a_diff() {
    let ck = Checkpoint::open(fixture("llama-tuned")).unwrap();
    let m = ModelInfo::from_checkpoint(&ck);
    let p = build(
        &m,
        &SelectOptions::new(Strategy::Magnitude, 0.5, 1),
        Some(&ck),
    )
    .unwrap();
    let mat = |c: &str| p.summary.categories[c].clone();
    let (t, n) = [
        "attn_q", "attn_k", "attn_v", "attn_o", "ffn_gate", "ffn_up", "ffn_down",
    ]
    .iter()
    .map(|c| mat(c))
    .fold((0, 0), |a, c| (a.0 + c.trainable, a.1 + c.total));
    assert!((t as f64 / n as f64 - 0.5).abs() < 0.1, "{t}/{n}");

    // The synthetic tuned model leaves layer 0's k_proj untouched: `delta` (least moved)
    // trains it first, `--prefer most` never.
    let a = Checkpoint::open(fixture("llama-base")).unwrap();
    let r = crate::analysis::diff::diff(&a, &ck, &crate::progress::Progress::hidden()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dpath = dir.path().join("d.json");
    std::fs::write(&dpath, crate::report::json(&r)).unwrap();
    let mut o = SelectOptions::new(Strategy::Delta, 0.5, 1);
    o.diff = Some(dpath.clone());
    let p = build(&m, &o, None).unwrap();
    assert_eq!(
        p.tensors["model.layers.0.self_attn.k_proj.weight"],
        Entry::TRAIN
    );
    o.prefer = Some(Prefer::Most);
    let p = build(&m, &o, None).unwrap();
    assert_eq!(
        p.tensors["model.layers.0.self_attn.k_proj.weight"],
        Entry::FREEZE
    );

    let q = model("qwen2-base");
    let e = build(&q, &o, None).unwrap_err();
    assert!(e.to_string().contains("another model"), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn check_catches_other_models_and_changed_shapes() {
    let m = model("llama-base");
    let p = plan(&m, Strategy::Category, 0.5, 1, 0);
    p.check(&m.source, m.names_shapes()).unwrap();
    let q = model("qwen2-base");
    let e = p
        .check(&q.source, q.names_shapes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not in the plan"), "{e}");
    let t = model("llama-tied-resized");
    let e = p
        .check(&t.source, t.names_shapes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("lm_head.weight"), "{e}");
    // Same names, other shapes.
    let mut shapes = m.tensors.clone();
    shapes[0].1[0] += 1;
    let e = p
        .check(
            &m.source,
            shapes.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("shapes differ"), "{e}");
    // A hand-edited entry leaves the summary stale: refused, naming the counts.
    let mut edited = p.clone();
    let (name, _) = m
        .tensors
        .iter()
        .find(|(n, _)| p.tensors[n.as_str()] == Entry::TRAIN)
        .unwrap();
    edited.tensors.insert(name.clone(), Entry::FREEZE);
    let e = edited.check(&m.source, m.names_shapes()).unwrap_err();
    assert!(e.to_string().contains("summary is out of date"), "{e}");
    assert_eq!(e.exit_code(), 2);
}
