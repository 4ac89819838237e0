//! Prior knowledge in `hft run`'s reports: what the model knew before the first stage and
//! lost by the last, per run, per strategy and plotted. (Built with the `train` feature only.)

use crate::common::*;
use crate::run::{hft_serial, setup, RECIPE};

/// Prior knowledge: the eval sets no stage trains are read after the last stage against the
/// scores before the first, per run and per strategy, because BWT cannot see them.
#[test]
fn prior_knowledge_lost_is_reported_per_run_and_per_strategy() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 5.0e-2");
    std::fs::write(
        d.path().join("facts.jsonl"),
        "{\"prompt\":\"q:zz=\",\"completion\":\"99\"}\n{\"prompt\":\"q:yy=\",\"completion\":\"88\"}\n",
    )
    .unwrap();
    let r = RECIPE.replace("LR_LINE", "lr: 5.0e-2").replace(
        "  - {name: pairs, path: pairs.jsonl}\n",
        "  - {name: pairs, path: pairs.jsonl}\n  - {name: facts, path: facts.jsonl, kind: retention}\n",
    );
    std::fs::write(d.path().join("r.yaml"), r).unwrap();
    let mut c = hft_serial();
    c.current_dir(d.path());
    run_ok(c, &["run", "r.yaml", "--compare", "full,category", "-q"]);
    for s in ["full", "category"] {
        let run = d.path().join("out").join(s);
        let state = read_json(&run.join("run.json"));
        let prior = &state["metrics"]["prior"];
        let before = &state["before"]["facts"];
        let after = &state["stages"].as_array().unwrap().last().unwrap()["scores"]["facts"];
        let set = &prior["sets"]["facts"];
        assert_eq!(set["before_loss"], before["loss"]);
        assert_eq!(set["after_loss"], after["loss"]);
        let rise = after["loss"].as_f64().unwrap() - before["loss"].as_f64().unwrap();
        assert!(
            (prior["loss_rise"].as_f64().unwrap() - rise).abs() < 1e-12,
            "{prior}"
        );
        assert!(
            prior["sets"].get("text").is_none(),
            "a task is not prior knowledge"
        );
        let em = before["exact_match"].as_f64().unwrap() - after["exact_match"].as_f64().unwrap();
        assert!((prior["em_lost"].as_f64().unwrap() - em).abs() < 1e-12);
        let md = std::fs::read_to_string(run.join("report.md")).unwrap();
        assert!(md.contains("## Prior knowledge"), "{md}");
    }
    let grid = read_json(&d.path().join("out/report.json"));
    for cell in grid["cells"].as_array().unwrap() {
        assert!(cell["prior_loss_rise"]["mean"].is_f64(), "{cell}");
        // Split by set: the facts' exact match and answer loss, the text set's loss alone.
        let facts = &cell["prior_sets"]["facts"];
        assert!(facts["em_lost"]["mean"].is_f64() && facts["loss_rise"]["mean"].is_f64());
        assert!(
            cell["prior_sets"]["text"].is_null(),
            "a task is not prior knowledge"
        );
    }
    // One seed: each set's mean is that run's own change.
    let full = &grid["runs"][0];
    assert_eq!(
        grid["cells"][0]["prior_sets"]["facts"]["loss_rise"]["mean"],
        full["prior_sets"]["facts"]["loss_rise"]
    );
    let md = std::fs::read_to_string(d.path().join("out/report.md")).unwrap();
    assert!(
        md.contains("prior lost (EM)") && md.contains("prior loss rise"),
        "{md}"
    );
    assert!(
        md.contains("## Prior knowledge per eval set")
            && md.contains("| facts: EM lost | facts: loss rise |"),
        "{md}"
    );
    for plot in ["learn-forget-prior-em.svg", "learn-forget-prior-loss.svg"] {
        let svg = std::fs::read_to_string(d.path().join("out").join(plot)).unwrap();
        assert!(svg.contains("prior knowledge"), "{plot}");
    }
    // The grid is hft's whole: --force replaces it.
    let mut c = hft_serial();
    c.current_dir(d.path());
    run_ok(
        c,
        &[
            "run",
            "r.yaml",
            "--compare",
            "full,category",
            "-q",
            "--force",
        ],
    );
}
