//! Plans `hft run` derives from its own measurements: a `delta` stage without a diff file
//! ranks by the previous stage's change, a `protect` stage by the change of every earlier
//! stage together; each equals what `hft plan` makes from the same `hft diff`.
//! (Built with the `train` feature only.)

use hft::plan::Plan;

use crate::common::*;
use crate::run::{hft_serial, setup};

const DERIVED: &str = "\
model: model
output: out
seed: 3
defaults: {lr: 1.0e-2, steps: 3, seq_len: 32, log_every: 1}
eval:
  - {name: text, path: text.jsonl}
  - {name: pairs, path: pairs.jsonl}
stages:
  - name: a
    plan: {strategy: full}
    tasks: [text]
    data: [{path: text.jsonl, batch: 2}]
  - name: b
    plan: {strategy: delta, ratio: 0.5, seed: 9}
    tasks: [pairs]
    data: [{path: pairs.jsonl, batch: 2}]
  - name: c
    plan: {strategy: protect, ratio: 0.5, seed: 9}
    tasks: [text]
    data: [{path: text.jsonl, batch: 2}]
  - name: d
    plan: {strategy: magnitude, ratio: 0.5, seed: 9}
    tasks: [pairs]
    data: [{path: pairs.jsonl, batch: 2}]
";

/// The plan `hft plan` draws on `model` ranked by `diff` (what a derived stage must equal).
fn plan_from(dir: &std::path::Path, model: &str, diff: &str, prefer: &str, stage: &str) -> Plan {
    let out = dir.join(format!("expected-{stage}.yaml"));
    run_ok(
        hft_serial(),
        &[
            "plan",
            dir.join(model).to_str().unwrap(),
            "--strategy",
            "delta",
            "--ratio",
            "0.5",
            "--seed",
            "9",
            "--stage",
            stage,
            "--prefer",
            prefer,
            "--diff",
            dir.join(diff).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-q",
        ],
    );
    Plan::read(&out).unwrap()
}

#[test]
fn delta_and_protect_stages_rank_by_what_the_run_measured() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    std::fs::write(d.path().join("r.yaml"), DERIVED).unwrap();
    let mut cmd = hft_serial();
    cmd.current_dir(d.path());
    run_ok(cmd, &["run", "r.yaml", "-q"]);
    let state = read_json(&d.path().join("out/run.json"));
    let stages = state["stages"].as_array().unwrap();
    assert_eq!(stages[1]["plan"]["strategy"], "delta");
    assert!(stages[1]["plan"]["derived_from"]
        .as_str()
        .unwrap()
        .contains("stage `a`"));
    assert_eq!(stages[2]["plan"]["strategy"], "protect");
    assert!(stages[2]["plan"]["derived_from"]
        .as_str()
        .unwrap()
        .contains("stages a, b together"));
    for s in stages {
        assert!(s["change"]["frozen_changed"].as_array().unwrap().is_empty());
    }
    // Stage b: `hft plan` on stage a's checkpoint, ranked by stage a's diff, least changed.
    let b = Plan::read(&d.path().join("out/01-b/plan.yaml")).unwrap();
    let want = plan_from(d.path(), "out/00-a", "out/diffs/00-a.json", "least", "1");
    assert_eq!(b.tensors, want.tensors);
    // Stage c: ranked by the change from the recipe's model to stage b's checkpoint.
    let c = Plan::read(&d.path().join("out/02-c/plan.yaml")).unwrap();
    let want = plan_from(
        d.path(),
        "out/01-b",
        "out/diffs/02-c-protect.json",
        "least",
        "2",
    );
    assert_eq!(c.tensors, want.tensors);
    let diff = read_json(&d.path().join("out/diffs/02-c-protect.json"));
    assert!(
        diff["a"].as_str().unwrap().ends_with("model"),
        "{}",
        diff["a"]
    );
    assert!(
        diff["b"].as_str().unwrap().ends_with("01-b"),
        "{}",
        diff["b"]
    );
    // Stage d: `hft plan --strategy magnitude` on stage c's checkpoint (its weights).
    let dp = Plan::read(&d.path().join("out/03-d/plan.yaml")).unwrap();
    let want = d.path().join("expected-d.yaml");
    let start = d.path().join("out/02-c");
    let args = [
        "plan",
        start.to_str().unwrap(),
        "--strategy",
        "magnitude",
        "--ratio",
        "0.5",
        "--seed",
        "9",
        "--stage",
        "3",
        "-o",
        want.to_str().unwrap(),
        "-q",
    ];
    run_ok(hft_serial(), &args);
    assert_eq!(dp.tensors, Plan::read(&want).unwrap().tensors);
    assert_eq!(dp.strategy, "magnitude");
    assert!(std::fs::read_to_string(d.path().join("out/report.md"))
        .unwrap()
        .contains("Plans derived from the run's own measurements"));

    // A derived strategy in the first stage has nothing to rank by: refused before anything runs.
    let first = DERIVED.replace("plan: {strategy: full}", "plan: {strategy: protect}");
    std::fs::write(
        d.path().join("r2.yaml"),
        first.replace("output: out", "output: out2"),
    )
    .unwrap();
    let res = hft_serial()
        .current_dir(d.path())
        .args(["run", "r2.yaml"])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("the first stage has none"));
    assert!(!d.path().join("out2").exists());
}

const LISA: &str = "\
model: model
output: out
seed: 3
defaults: {lr: 1.0e-2, steps: 5, seq_len: 32, log_every: 1}
eval:
  - {name: text, path: text.jsonl}
stages:
  - name: a
    plan: {strategy: lisa, layers: 1, every: 2, seed: 4}
    tasks: [text]
    data: [{path: text.jsonl, batch: 2}]
";

/// A `lisa` stage draws its layers again every `every` steps: the plan lists one draw per
/// period, exactly the drawn layers change (whatever period drew them), the others stay
/// bit-identical, and embeddings, head and final norm train throughout. Five steps make three
/// periods (here layer 1, 1, then 0: layer 0 trains in the last period only); two steps one
/// period, which leaves a layer undrawn.
#[test]
fn lisa_stages_train_each_periods_layers() {
    use hft::arch::Layout;
    use hft::io::Checkpoint;
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), "lr: 1.0e-2");
    for (steps, periods, out) in [(5, 3, "out"), (2, 1, "out2")] {
        let recipe = LISA
            .replace("steps: 5", &format!("steps: {steps}"))
            .replace("output: out", &format!("output: {out}"));
        std::fs::write(d.path().join("r.yaml"), recipe).unwrap();
        let mut cmd = hft_serial();
        cmd.current_dir(d.path());
        run_ok(cmd, &["run", "r.yaml", "-q"]);
        let stage = d.path().join(out).join("00-a");
        let plan = Plan::read(&stage.join("plan.yaml")).unwrap();
        let s = plan
            .schedule
            .as_ref()
            .expect("a lisa plan lists its periods");
        assert_eq!((s.interval, s.layers, s.periods.len()), (2, 1, periods));
        let drawn: std::collections::BTreeSet<usize> =
            s.periods.iter().flatten().copied().collect();
        if periods == 1 {
            assert_eq!(drawn.len(), 1);
        }
        let before = Checkpoint::open(d.path().join("model")).unwrap();
        let after = Checkpoint::open(&stage).unwrap();
        let layout = Layout::for_checkpoint(&before);
        for t in before.tensors() {
            let same = before.bytes(t) == after.bytes(after.get(&t.name).unwrap());
            let trains = match layout.role(&t.name).layer {
                Some(l) => drawn.contains(&l),
                None => true,
            };
            assert_eq!(same, !trains, "{}: drawn layers {drawn:?}", t.name);
        }
        let state = read_json(&d.path().join(out).join("run.json"));
        assert_eq!(state["stages"][0]["plan"]["strategy"], "lisa");
        let said = state["stages"][0]["plan"]["schedule"].as_str().unwrap();
        assert!(said.starts_with("layers drawn every 2 steps: ["), "{said}");
        let report = std::fs::read_to_string(d.path().join(out).join("report.md")).unwrap();
        assert!(report.contains(said), "{report}");
        // The run's plan is `hft plan`'s LISA draw, and `--from` hands it on unchanged.
        let model = d.path().join("model");
        let (drawn_file, from_file) = (d.path().join("drawn.yaml"), d.path().join("from.yaml"));
        let periods = periods.to_string();
        let args = [
            "plan",
            model.to_str().unwrap(),
            "--strategy",
            "lisa",
            "--lisa-layers",
            "1",
            "--lisa-interval",
            "2",
            "--lisa-periods",
            &periods,
            "--seed",
            "4",
            "--stage",
            "0",
            "-o",
            drawn_file.to_str().unwrap(),
            "--force",
            "-q",
        ];
        run_ok(hft_serial(), &args);
        let from = stage.join("plan.yaml");
        let args = [
            "plan",
            model.to_str().unwrap(),
            "--from",
            from.to_str().unwrap(),
            "-o",
            from_file.to_str().unwrap(),
            "--force",
            "-q",
        ];
        run_ok(hft_serial(), &args);
        let (drawn_plan, from_plan) = (
            Plan::read(&drawn_file).unwrap(),
            Plan::read(&from_file).unwrap(),
        );
        assert_eq!(drawn_plan.tensors, plan.tensors);
        assert_eq!(drawn_plan.schedule, plan.schedule);
        assert_eq!(from_plan, plan);
        // A drawing flag beside --from would be ignored: refused instead.
        let res = hft_serial()
            .args([
                "plan",
                model.to_str().unwrap(),
                "--from",
                from.to_str().unwrap(),
            ])
            .args(["--strategy", "layer"])
            .output()
            .unwrap();
        assert_eq!(res.status.code(), Some(2));
    }
}
