//! `hft merge --config` reads mergekit's YAML: each method hft has gives exactly what the
//! equivalent `hft merge` / `hft average` command gives, and what hft does not do is refused.

use crate::common::*;
use crate::surgery::{fxs, open, p, same_tensors};

#[test]
fn mergekit_configs_give_what_the_equivalent_commands_give() {
    let d = tempfile::tempdir().unwrap();
    let (base, a) = (fxs("llama-base"), fxs("llama-tuned"));
    let cases = [
        (
            format!(
                "merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {a}\n    parameters: {{weight: 0.7}}\n  - model: {a}\n    parameters: {{weight: 0.3}}\nparameters: {{density: 0.4}}\ndtype: float32\n"
            ),
            vec!["merge", "--method", "ties", "--base", base, a, a, "--weights", "0.7,0.3", "--density", "0.4", "--dtype", "f32"],
        ),
        (
            format!(
                "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\nparameters: {{lambda: 0.8}}\n"
            ),
            vec!["merge", "--method", "task-arithmetic", "--base", base, a, "--weights", "0.5", "--lambda", "0.8"],
        ),
        (
            format!(
                "merge_method: dare_linear\nbase_model: {base}\nmodels:\n  - model: {a}\n    parameters: {{weight: 1, density: 0.3}}\n"
            ),
            vec!["merge", "--method", "dare", "--base", base, a, "--drop", "0.7"],
        ),
        (
            format!(
                "merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: 1}}\n  - model: {a}\n    parameters: {{weight: 3}}\n"
            ),
            vec!["average", base, a, "--weights", "1,3"],
        ),
    ];
    for (i, (yaml, cmd)) in cases.iter().enumerate() {
        let cfg = d.path().join(format!("mk{i}.yml"));
        std::fs::write(&cfg, yaml).unwrap();
        let from_cfg = d.path().join(format!("cfg{i}.safetensors"));
        let direct = d.path().join(format!("cmd{i}.safetensors"));
        run_ok(
            hft(2),
            &["merge", "--config", p(&cfg), "-o", p(&from_cfg), "-q"],
        );
        run_ok(hft(2), &[&cmd[..], &["-o", p(&direct), "-q"]].concat());
        same_tensors(&open(&from_cfg), &open(&direct));
    }
    // What hft does not do is refused by name; an average config is not a mergekit one.
    let cfg = d.path().join("dt.yml");
    std::fs::write(
        &cfg,
        format!("merge_method: dare_ties\nbase_model: {base}\nmodels: [{{model: {a}, parameters: {{weight: 1}}}}]\n"),
    )
    .unwrap();
    let res = hft(2)
        .args(["merge", "--config", p(&cfg), "-o", p(&d.path().join("x"))])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("dare_ties"));
    let res = hft(2)
        .args([
            "average",
            base,
            a,
            "--config",
            p(&cfg),
            "-o",
            p(&d.path().join("x")),
        ])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("reads it with --config"));
}
