//! Post baselines in grids: made after the strategies a recipe names, and the scores before
//! training computed once per grid. (Built with the `train` feature only.)

use predicates::prelude::*;

use crate::common::*;
use crate::run::{hft_serial, setup, RECIPE};

/// `after: [full]` makes a baseline after full fine-tuning only; cells that share no stage
/// still score the model before training once (the first cell's scores are read back).
#[test]
fn baselines_after_one_strategy_and_before_scored_once() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    let r = RECIPE
        .replace("LR_LINE", "lr: 1.0e-2")
        .replace("    plan: {strategy: full}\n", "")
        .replace("seed: 1}", "seed: 1, after: [full]}")
        .replace("base: a}", "base: a, after: [full]}");
    assert_eq!(r.matches("after: [full]").count(), 2, "{r}");
    std::fs::write(d.path().join("r.yaml"), r).unwrap();
    hft_serial()
        .current_dir(d.path())
        .args(["run", "r.yaml", "--compare", "full,category"])
        .assert()
        .success()
        .stderr(predicate::str::contains("category: learned"))
        .stderr(predicate::str::contains(
            "scores before training read from full",
        ));
    let out = d.path().join("out");
    let full = read_json(&out.join("full/report.json"));
    let cat = read_json(&out.join("category/report.json"));
    assert_eq!(full["post"].as_array().unwrap().len(), 2);
    assert_eq!(cat["post"].as_array().unwrap().len(), 0);
    assert!(!out.join("category/post").exists());
    assert_eq!(full["before"], cat["before"]);
    assert_eq!(cat["stages"][0]["shared_from"], serde_json::Value::Null);
    let c = read_json(&out.join("report.json"));
    assert_eq!(
        c["strategies"].as_array().unwrap().len(),
        4,
        "{}",
        c["strategies"]
    );
    // A strategy name that does not exist is the recipe's error, naming the field.
    let bad = std::fs::read_to_string(d.path().join("r.yaml"))
        .unwrap()
        .replacen("after: [full]", "after: [fulll]", 1);
    std::fs::write(d.path().join("bad.yaml"), bad).unwrap();
    hft_serial()
        .current_dir(d.path())
        .args(["run", "bad.yaml", "-o", "o2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.yaml").and(predicate::str::contains("post after")));
}
