//! `hft plan` end to end over the committed fixtures: every export agrees with the YAML plan,
//! --check, bad input, and element masks rebuilt in other processes (the binary again, and
//! Python from the torch export).

use std::path::{Path, PathBuf};
use std::process::Command as Std;

use hft::plan::{Entry, Plan};
use hft::select::ModelInfo;

use crate::common::*;
use crate::exports::{python, python_checks, Axolotl, Swift};

/// Exit code and stderr of a run that must fail.
fn run_err(args: &[&str]) -> (i32, String) {
    let out = hft_bin().args(args).output().unwrap();
    assert!(!out.status.success(), "hft {args:?} succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn plan_file(dir: &Path, model: &str, extra: &[&str]) -> (PathBuf, Plan) {
    let path = dir.join(format!("{model}.plan.yaml"));
    let m = fixture(model);
    let mut args = vec![
        "plan",
        m.to_str().unwrap(),
        "-o",
        path.to_str().unwrap(),
        "-q",
        "--force",
    ];
    args.extend_from_slice(extra);
    assert_eq!(run_ok(hft_bin(), &args), "", "-o leaves stdout empty");
    let plan = Plan::read(&path).unwrap();
    (path, plan)
}

pub(crate) fn trains_any(e: &Entry) -> bool {
    match e {
        Entry::Whole(s) => *s == hft::plan::State::Train,
        Entry::Mask { mask, .. } => *mask > 0.0,
        Entry::Rows { rows, .. } => !rows.is_empty(),
    }
}

#[test]
fn every_export_matches_the_yaml_plan() {
    let dir = tempfile::tempdir().unwrap();
    for (model, extra) in [
        ("llama-base", vec!["--seed", "3", "--stage", "1"]),
        ("qwen2-base", vec!["--strategy", "model", "--seed", "5"]),
        ("gpt2-base", vec!["--seed", "2"]),
        (
            "llama-base",
            vec!["--strategy", "element", "--ratio", "0.3"],
        ),
    ] {
        let (_, plan) = plan_file(dir.path(), model, &extra);
        let m = fixture(model);
        let base = |emit: &str| {
            let mut a = vec!["plan", m.to_str().unwrap(), "--emit", emit];
            a.extend_from_slice(&extra);
            run_ok(hft_bin(), &a)
        };
        let want: Vec<String> = plan
            .tensors
            .iter()
            .filter(|(_, e)| trains_any(e))
            .map(|(n, _)| n.clone())
            .collect();
        assert!(!want.is_empty());

        assert_eq!(base("yaml"), plan.to_yaml(), "{model} yaml");
        let json: Plan = serde_json::from_str(&base("json")).unwrap();
        assert_eq!(json, plan, "{model} json");

        let names: Vec<String> = base("names").lines().map(String::from).collect();
        assert_eq!(names, want, "{model} names");

        let info = ModelInfo::open(&m).unwrap();
        let re = regex::Regex::new(base("regex").trim_end()).unwrap();
        let ax = Axolotl::new(&base("axolotl"));
        let sw = Swift::new(&base("swift"));
        for (name, _) in &info.tensors {
            let t = want.contains(name);
            assert_eq!(re.is_match(name), t, "{model} regex on {name}");
            assert_eq!(ax.trains(name), t, "{model} axolotl on {name}");
            assert_eq!(sw.trains(name), t, "{model} ms-swift on {name}");
        }

        let torch = base("torch");
        for (name, e) in &plan.tensors {
            assert!(
                torch.contains(&format!("\"{name}\": ")),
                "{name} in torch export"
            );
            if let Entry::Mask { mask, seed } = e {
                assert!(torch.contains(&format!("(\"mask\", {mask:?}, {seed})")));
            }
        }
        python_checks(&torch, &plan, &info, dir.path());
    }
}

#[test]
fn element_masks_rebuild_identically_in_another_process() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let args = [
        "--strategy",
        "element",
        "--ratio",
        "0.4",
        "--seed",
        "11",
        "--stage",
        "3",
    ];
    let (pa, plan) = plan_file(a.path(), "qwen2-base", &args);
    let (pb, _) = plan_file(b.path(), "qwen2-base", &args);
    assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
    let info = ModelInfo::open(&fixture("qwen2-base")).unwrap();
    // Masks read back from the file select what the in-process strategy selects.
    let mut o = hft::select::SelectOptions::new(hft::select::Strategy::Element, 0.4, 11);
    o.stage = 3;
    let here = hft::select::build(&info, &o, None).unwrap();
    for (name, shape) in &info.tensors {
        let (x, y) = (&plan.tensors[name], &here.tensors[name]);
        let (fx, fy) = (x.element_fn(name, shape), y.element_fn(name, shape));
        let n: usize = shape.iter().product();
        assert!((0..n).all(|i| fx.trains(i) == fy.trains(i)), "{name}");
    }
}

#[test]
fn map_on_stdout_and_file_with_map_on_stderr() {
    let m = fixture("llama-base");
    let out = run_ok(hft_bin(), &["plan", m.to_str().unwrap(), "--seed", "7"]);
    assert!(out.contains("layer  attention"), "{out}");
    assert!(out.lines().filter(|l| l.contains('|')).count() >= 5);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let o = hft_bin()
        .args(["plan", m.to_str().unwrap(), "-o", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("layer  attention"));
    assert!(Plan::read(&f).is_ok());
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_config_json_alone_gives_the_same_plan() {
    // Dense, and each mixture-of-experts layout (experts, shared experts, routers, dense first
    // layers, latent attention): the config's names and shapes are the checkpoint's.
    for fx in [
        "llama-base",
        "mixtral-base",
        "qwen2-moe-base",
        "qwen3-moe-base",
        "deepseek-v3-base",
    ] {
        let plan = |model: &Path| {
            run_ok(
                hft_bin(),
                &[
                    "plan",
                    model.to_str().unwrap(),
                    "--emit",
                    "yaml",
                    "--seed",
                    "4",
                ],
            )
        };
        let ck = plan(&fixture(fx));
        assert_eq!(ck, plan(&fixture(fx).join("config.json")), "{fx}");
    }
}

#[test]
fn check_accepts_a_fitting_plan_and_names_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = plan_file(dir.path(), "llama-base", &["--seed", "1"]);
    let out = run_ok(
        hft_bin(),
        &[
            "plan",
            "--check",
            p.to_str().unwrap(),
            fixture("llama-base-sharded").to_str().unwrap(),
        ],
    );
    assert!(out.starts_with("ok: "), "{out}");
    let (code, err) = run_err(&[
        "plan",
        "--check",
        p.to_str().unwrap(),
        fixture("qwen2-base").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("does not fit") && err.contains("self_attn"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn bad_input_is_a_one_line_error_with_exit_2() {
    let m = fixture("llama-base");
    let m = m.to_str().unwrap();
    let (code, err) = run_err(&["plan", m, "--strategy", "bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("bogus"), "{err}");

    let (code, err) = run_err(&["plan", m, "--ratio", "1.5"]);
    assert_eq!(code, 2);
    assert!(err.contains("--ratio: 1.5"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // A diff of the qwen2 pair given for the llama model.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("qwen.json");
    let json = run_ok(
        hft_bin(),
        &[
            "diff",
            fixture("qwen2-base").to_str().unwrap(),
            fixture("qwen2-tuned").to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    std::fs::write(&d, json).unwrap();
    let (code, err) = run_err(&[
        "plan",
        m,
        "--strategy",
        "delta",
        "--diff",
        d.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("another model") && err.contains("qwen.json"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let (code, err) = run_err(&["plan", m, "--strategy", "lisa", "--ratio", "0.5"]);
    assert_eq!(code, 2);
    assert!(err.contains("--lisa-layers"), "{err}");
    let (code, _) = run_err(&["plan", "/nonexistent/model"]);
    assert_eq!(code, 2);
}

#[test]
fn delta_from_a_real_diff_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("prev.json");
    let json = run_ok(
        hft_bin(),
        &[
            "diff",
            fixture("llama-base").to_str().unwrap(),
            fixture("llama-tuned").to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    std::fs::write(&d, json).unwrap();
    let (_, plan) = plan_file(
        dir.path(),
        "llama-base",
        &["--strategy", "delta", "--diff", d.to_str().unwrap()],
    );
    // Layer 0's k_proj did not move in the synthetic pair: the least-moved train.
    assert_eq!(
        plan.tensors["model.layers.0.self_attn.k_proj.weight"],
        Entry::TRAIN
    );
    assert_eq!(plan.options["diff"], serde_json::json!(d.to_str().unwrap()));
}

#[test]
fn llamafactory_only_where_expressible() {
    let m = fixture("llama-base");
    let m = m.to_str().unwrap();
    let (code, err) = run_err(&["plan", m, "--emit", "llamafactory"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot express") && err.contains("q_proj over k_proj"),
        "{err}"
    );
    let full = run_ok(
        hft_bin(),
        &["plan", m, "--strategy", "full", "--emit", "llamafactory"],
    );
    assert!(
        full.contains("freeze_trainable_layers: 4\nfreeze_trainable_modules: all\n"),
        "{full}"
    );
    let last2 = run_ok(
        hft_bin(),
        &[
            "plan",
            m,
            "--strategy",
            "none",
            "--include",
            r"layers\.[23]\.",
            "--train-embeddings",
            "--train-head",
            "--emit",
            "llamafactory",
        ],
    );
    assert!(last2.contains("freeze_trainable_layers: 2\n"), "{last2}");
    assert!(
        last2.contains("freeze_extra_modules: embed_tokens,lm_head\n")
            || last2.contains("freeze_extra_modules: lm_head,embed_tokens\n"),
        "{last2}"
    );
}

#[test]
fn lisa_torch_export_follows_the_schedule() {
    let m = fixture("llama-base");
    let src = run_ok(
        hft_bin(),
        &[
            "plan",
            m.to_str().unwrap(),
            "--strategy",
            "lisa",
            "--lisa-periods",
            "5",
            "--emit",
            "torch",
        ],
    );
    assert!(src.contains("SCHEDULE = {") && src.contains("\"interval\": 20"));
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("lisa.py");
    std::fs::write(&f, &src).unwrap();
    let script = format!(
        "exec(open({:?}).read())\nfor step in (0, 19, 20, 99):\n    e = _entries(step)\n    \
         print(sorted(l for l in range(4) if e['model.layers.%d.mlp.up_proj.weight' % l] == 'train'))\n",
        f.to_str().unwrap()
    );
    let out = Std::new(py).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = run_ok(
        hft_bin(),
        &[
            "plan",
            m.to_str().unwrap(),
            "--strategy",
            "lisa",
            "--lisa-periods",
            "5",
            "--emit",
            "json",
        ],
    );
    let plan: Plan = serde_json::from_str(&yaml).unwrap();
    let periods = &plan.schedule.unwrap().periods;
    let want = format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n",
        periods[0], periods[0], periods[1], periods[4]
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

#[test]
fn reset_accepts_plan_files() {
    let dir = tempfile::tempdir().unwrap();
    for (model, extra) in [
        ("gpt2", vec!["--seed", "7"]),
        ("qwen2", vec!["--strategy", "element", "--ratio", "0.5"]),
    ] {
        let (p, _) = plan_file(dir.path(), &format!("{model}-base"), &extra);
        let out = dir.path().join(format!("{model}-out"));
        run_ok(
            hft_bin(),
            &[
                "reset",
                "--base",
                fixture(&format!("{model}-base")).to_str().unwrap(),
                "--tuned",
                fixture(&format!("{model}-tuned")).to_str().unwrap(),
                "--plan",
                p.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "-q",
            ],
        );
        assert!(out.join("model.safetensors").is_file(), "{model}");
    }
}
