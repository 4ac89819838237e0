//! Mixture-of-experts checkpoints end to end: `diff` with expert indices and `--by expert`,
//! and a category reset that follows its plan tensor by tensor (fixtures with the published
//! Mixtral, Qwen2-MoE, Qwen3-MoE and DeepSeek-V3 names).

use hft::plan::{Entry, Plan, State};

use crate::common::*;
use crate::surgery::{bytes, fxs, names, open, p};

#[test]
fn diff_reports_experts_in_json_csv_and_by_expert() {
    let json: serde_json::Value = serde_json::from_str(&run_ok(
        hft(1),
        &[
            "diff",
            "--format",
            "json",
            fxs("deepseek-v3-base"),
            fxs("deepseek-v3-tuned"),
        ],
    ))
    .unwrap();
    let tensors = json["tensors"].as_array().unwrap();
    let t = tensors
        .iter()
        .find(|t| t["name"] == "model.layers.2.mlp.experts.3.down_proj.weight")
        .unwrap();
    assert_eq!(
        (t["layer"].as_u64(), t["category"].as_str()),
        (Some(2), Some("ffn_down"))
    );
    assert_eq!(t["expert"].as_u64(), Some(3));
    let dense = tensors
        .iter()
        .find(|t| t["name"] == "model.layers.0.mlp.down_proj.weight")
        .unwrap();
    assert!(dense["expert"].is_null());
    // Layers 1 and 2 are sparse: 4 routed experts and the shared expert each.
    let experts = json["experts"].as_array().unwrap();
    assert_eq!(experts.len(), 10);
    let e3 = experts
        .iter()
        .find(|e| e["layer"] == 2 && e["expert"] == "3")
        .unwrap();
    let numel: u64 = tensors
        .iter()
        .filter(|t| t["layer"] == 2 && t["expert"] == 3)
        .map(|t| t["numel"].as_u64().unwrap())
        .sum();
    assert_eq!(e3["numel"].as_u64(), Some(numel));
    assert!(experts.iter().any(|e| e["expert"] == "shared"));
    let cats: Vec<&str> = json["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["category"].as_str().unwrap())
        .collect();
    for c in ["router", "shared_ffn_gate", "attn_kv", "buffer"] {
        assert!(cats.contains(&c), "{c} in {cats:?}");
    }

    let csv = run_ok(
        hft(1),
        &[
            "diff",
            "--by",
            "expert",
            "--format",
            "csv",
            fxs("mixtral-base"),
            fxs("mixtral-tuned"),
        ],
    );
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("layer,expert,numel,"));
    assert_eq!(lines.count(), 12, "3 layers x 4 experts, no shared expert");
    let table = run_ok(
        hft(1),
        &[
            "diff",
            "--by",
            "expert",
            fxs("qwen3-moe-base"),
            fxs("qwen3-moe-tuned"),
        ],
    );
    assert!(table.contains("layer expert"), "{table}");
    let header = run_ok(
        hft(1),
        &[
            "diff",
            "--format",
            "csv",
            fxs("qwen2-moe-base"),
            fxs("qwen2-moe-tuned"),
        ],
    );
    assert!(
        header.starts_with("name,layer,category,expert,dtype,shape,"),
        "{header}"
    );

    let out = hft(1)
        .args([
            "diff",
            "--by",
            "expert",
            fxs("llama-base"),
            fxs("llama-tuned"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no mixture-of-experts layers") && err.lines().count() == 1,
        "{err}"
    );
}

/// Every tensor of a category reset is BASE where the plan freezes it and TUNED where it
/// trains; DeepSeek's `kv_b_proj` is reset row by row (its key rows with k, value rows with v).
#[test]
fn category_reset_of_moe_models_follows_the_plan() {
    let d = tempfile::tempdir().unwrap();
    for fx in ["mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3"] {
        let (b, t) = (format!("{fx}-base"), format!("{fx}-tuned"));
        let plan_file = d.path().join(format!("{fx}.yaml"));
        run_ok(
            hft(1),
            &["plan", fxs(&t), "--seed", "9", "-o", p(&plan_file)],
        );
        let plan = Plan::read(&plan_file).unwrap();
        let out = d.path().join(fx);
        run_ok(
            hft(1),
            &[
                "reset",
                "--base",
                fxs(&b),
                "--tuned",
                fxs(&t),
                "--plan",
                p(&plan_file),
                "-o",
                p(&out),
            ],
        );
        let (base, tuned, o) = (open(&fixture(&b)), open(&fixture(&t)), open(&out));
        let mut rows_seen = 0;
        for n in names(&o) {
            match plan.entry(&n).unwrap() {
                Entry::Whole(State::Train) => {
                    assert!(bytes(&o, &n) == bytes(&tuned, &n), "{fx} {n}")
                }
                Entry::Whole(State::Freeze) => {
                    assert!(bytes(&o, &n) == bytes(&base, &n), "{fx} {n}")
                }
                Entry::Rows { axis: 0, rows } => {
                    let shape = &o.get(&n).unwrap().shape;
                    let row = shape[1..].iter().product::<usize>() * 2;
                    for r in 0..shape[0] {
                        let trains = rows.iter().any(|[a, z]| (*a..*z).contains(&r));
                        let want = if trains { &tuned } else { &base };
                        let span = r * row..(r + 1) * row;
                        assert!(
                            bytes(&o, &n)[span.clone()] == bytes(want, &n)[span],
                            "{fx} {n} row {r}"
                        );
                    }
                    rows_seen += 1;
                }
                other => panic!("{fx} {n}: unexpected entry {other:?}"),
            }
        }
        if fx == "deepseek-v3" {
            assert!(
                rows_seen > 0,
                "seed 9 splits some layer's kv_b_proj between k and v"
            );
        }
    }
}

/// `average --config` rules address the MoE categories: routers kept from the first model,
/// shared experts from the second, everything else averaged.
#[test]
fn average_rules_address_routers_and_shared_experts() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("w.yaml");
    std::fs::write(
        &cfg,
        "default: [0.5, 0.5]\nrules:\n  - categories: [router]\n    weights: [1, 0]\n  \
         - categories: [shared_ffn_gate, shared_ffn_up, shared_ffn_down]\n    weights: [0, 1]\n",
    )
    .unwrap();
    let out = d.path().join("avg");
    run_ok(
        hft(1),
        &[
            "average",
            fxs("qwen2-moe-base"),
            fxs("qwen2-moe-tuned"),
            "--config",
            p(&cfg),
            "-o",
            p(&out),
        ],
    );
    let (a, b, o) = (
        open(&fixture("qwen2-moe-base")),
        open(&fixture("qwen2-moe-tuned")),
        open(&out),
    );
    let layout = hft::arch::Layout::for_checkpoint(&a);
    let (mut routers, mut shared, mut averaged) = (0, 0, 0);
    for n in names(&o) {
        let c = layout.role(&n).category;
        if c == hft::arch::Category::Router {
            assert!(bytes(&o, &n) == bytes(&a, &n), "{n}");
            routers += 1;
        } else if c.is_shared_ffn() {
            assert!(bytes(&o, &n) == bytes(&b, &n), "{n}");
            shared += 1;
        } else if bytes(&a, &n) != bytes(&b, &n) {
            assert!(
                bytes(&o, &n) != bytes(&a, &n) && bytes(&o, &n) != bytes(&b, &n),
                "{n}"
            );
            averaged += 1;
        }
    }
    // Layers 1 and 2 are sparse: a router and a shared-expert gate each, three shared matrices.
    assert_eq!((routers, shared), (4, 6));
    assert!(averaged > 40, "{averaged}");
}
