//! The category rule on mixture-of-experts layouts (fixtures with the real tensor names).

use std::collections::BTreeMap;
use std::path::Path;

use super::units::{unit_states, units, Kind};
use super::*;
use crate::arch::Category;
use crate::plan::State;

fn model(name: &str) -> ModelInfo {
    ModelInfo::open(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    )
    .unwrap()
}

/// Per layer: 2 of 4 attention units (DeepSeek's latent attention mapped onto q, k, v, o),
/// 1 of 2 norms; per feed-forward block (a dense layer, each routed expert, the shared
/// expert): 1 or 2 of its 3 matrices, 2 in round(blocks / 2) of them; routers: round(layers /
/// 2) of them; every unit trains whole or not at all.
#[test]
fn category_rule_holds_per_expert() {
    for fx in [
        "mixtral-base",
        "qwen2-moe-base",
        "qwen3-moe-base",
        "deepseek-v3-base",
    ] {
        let m = model(fx);
        let us = units(&m);
        for seed in 0..16 {
            let p = build(&m, &SelectOptions::new(Strategy::Category, 0.5, seed), None).unwrap();
            let mut per_layer: BTreeMap<(usize, Kind), (usize, usize)> = BTreeMap::new();
            let mut blocks: BTreeMap<(usize, Option<usize>, bool), (usize, usize)> =
                BTreeMap::new();
            for s in unit_states(&m, &us, &p.tensors) {
                let u = &us.units[s.unit];
                assert!(
                    s.trainable == 0 || s.trainable == s.total,
                    "{fx}: {:?} trains in part",
                    u
                );
                let Some(l) = u.layer else { continue };
                let on = (s.trainable > 0) as usize;
                let c = if u.kind == Kind::Ffn {
                    let key = (l, u.expert, u.category.is_shared_ffn());
                    blocks.entry(key).or_default()
                } else {
                    per_layer.entry((l, u.kind)).or_default()
                };
                c.0 += on;
                c.1 += 1;
            }
            let layers: Vec<usize> = per_layer.keys().map(|k| k.0).collect();
            for l in layers {
                assert_eq!(per_layer[&(l, Kind::Attention)], (2, 4), "{fx} layer {l}");
                assert_eq!(per_layer[&(l, Kind::Norm)], (1, 2), "{fx} layer {l}");
            }
            let hi = blocks.values().filter(|c| c.0 == 2).count();
            assert!(blocks.values().all(|c| c.1 == 3 && (c.0 == 1 || c.0 == 2)));
            assert_eq!(hi, (blocks.len() as f64 / 2.0).round() as usize, "{fx}");
            let routers: Vec<(usize, usize)> = per_layer
                .iter()
                .filter(|(k, _)| k.1 == Kind::Router)
                .map(|(_, c)| *c)
                .collect();
            assert!(
                !routers.is_empty() && routers.iter().all(|c| c.1 == 1),
                "{fx}"
            );
            let on: usize = routers.iter().map(|c| c.0).sum();
            assert_eq!(on, (routers.len() as f64 / 2.0).round() as usize, "{fx}");
            // The summary reports the realised fractions of the new categories.
            for c in [Category::FfnGate, Category::Router] {
                let f = &p.summary.categories[c.as_str()];
                assert!(f.total > 0 && f.trainable <= f.total, "{fx} {c}");
            }
        }
    }
}

/// DeepSeek's plan notes say how the blocks were drawn, and the latent attention's k unit is
/// `kv_a_proj_with_mqa` with the key rows of `kv_b_proj` (its value rows are v).
#[test]
fn latent_attention_keys_go_with_k_and_values_with_v() {
    let m = model("deepseek-v3-base");
    let p = build(&m, &SelectOptions::new(Strategy::Category, 0.5, 3), None).unwrap();
    let notes = p.notes.join("\n");
    assert!(notes.contains("per block"), "{notes}");
    assert!(notes.contains("routers:"), "{notes}");
    let kv_b = &p.tensors["model.layers.1.self_attn.kv_b_proj.weight"];
    let kv_a = &p.tensors["model.layers.1.self_attn.kv_a_proj_with_mqa.weight"];
    match (kv_a, kv_b) {
        (Entry::Whole(State::Train), Entry::Rows { rows, .. }) => {
            // Key rows of each of the 4 heads (qk_nope_head_dim 8, v_head_dim 8).
            assert_eq!(rows, &vec![[0, 8], [16, 24], [32, 40], [48, 56]]);
        }
        (Entry::Whole(State::Freeze), Entry::Rows { rows, .. }) => {
            assert_eq!(rows, &vec![[8, 16], [24, 32], [40, 48], [56, 64]]);
        }
        (Entry::Whole(State::Freeze), Entry::Whole(State::Freeze)) => {}
        (Entry::Whole(State::Train), Entry::Whole(State::Train)) => {}
        other => panic!("k and v of the latent attention disagree: {other:?}"),
    }
}
