//! The trainer exports checked as their consumers read them: Axolotl's and ms-swift's own
//! matching rules replayed over the parameter names of real model configs, and the torch
//! export run in Python (with torch when `HFT_PYTHON` or `python3` has it: masks, PEFT-wrapped
//! names, and AdamW parameter groups that keep masked elements in place).

use std::path::Path;
use std::process::Command as Std;

use hft::plan::{Entry, Plan};
use hft::select::ModelInfo;

use crate::common::*;
use crate::plan::trains_any;

/// Axolotl's own selection (src/axolotl/utils/freeze.py, `freeze_layers_except` and
/// `LayerNamePattern`), replayed: every parameter frozen, then unfrozen if a pattern matches.
/// A pattern ending in `[a:b]` is an index range (hft never emits one); every `.` not followed
/// by `+` is rewritten to `\.`; Python's `re.match` anchors at the start only. An empty or
/// missing list means "not set" to Axolotl: everything trains.
pub(crate) struct Axolotl(Option<Vec<regex::Regex>>);

impl Axolotl {
    pub(crate) fn new(yaml: &str) -> Self {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        let list: Vec<String> = v["unfrozen_parameters"]
            .as_array()
            .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        if list.is_empty() {
            return Axolotl(None);
        }
        let range = regex::Regex::new(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$").unwrap();
        let res = list
            .iter()
            .map(|p| {
                assert!(!range.is_match(p), "`{p}` reads as an index range");
                let chars: Vec<char> = p.chars().collect();
                let mut t = String::new();
                for (i, c) in chars.iter().enumerate() {
                    if *c == '.' && chars.get(i + 1) != Some(&'+') {
                        t.push_str("\\.");
                    } else {
                        t.push(*c);
                    }
                }
                regex::Regex::new(&format!("^(?:{t})")).unwrap()
            })
            .collect();
        Axolotl(Some(res))
    }

    pub(crate) fn trains(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|res| res.iter().any(|r| r.is_match(name)))
    }
}

/// ms-swift's own selection in full fine-tuning (swift/pipelines/train/tuner.py and
/// swift/utils/transformers_utils.py), replayed from its YAML config: everything trainable;
/// `freeze_parameters_ratio` r freezes the leading parameters up to r of the count (1: all);
/// then every name that `re.search`es `trainable_parameters_regex` trains.
pub(crate) struct Swift {
    freeze_all: bool,
    re: Option<regex::Regex>,
}

impl Swift {
    pub(crate) fn new(yaml: &str) -> Self {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(v["tuner_type"], "full", "{yaml}");
        Swift {
            freeze_all: v["freeze_parameters_ratio"].as_f64() == Some(1.0),
            re: v["trainable_parameters_regex"]
                .as_str()
                .map(|r| regex::Regex::new(r).unwrap()),
        }
    }

    pub(crate) fn trains(&self, name: &str) -> bool {
        let frozen = self.freeze_all;
        !frozen || self.re.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// The exports over the parameter names of real models (shapes from their config.json alone):
/// each tool's own selection trains exactly the plan, for a half plan, a full plan and an
/// empty one.
#[test]
fn trainer_exports_select_exactly_the_plan_on_real_model_configs() {
    let dir = tempfile::tempdir().unwrap();
    let configs = [
        (
            "llama3-8b",
            r#"{"model_type":"llama","architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,"tie_word_embeddings":false}"#,
        ),
        (
            "qwen2.5-0.5b",
            r#"{"model_type":"qwen2","architectures":["Qwen2ForCausalLM"],"hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,"tie_word_embeddings":true}"#,
        ),
        (
            "qwen3-0.6b",
            r#"{"model_type":"qwen3","architectures":["Qwen3ForCausalLM"],"hidden_size":1024,"intermediate_size":3072,"num_hidden_layers":28,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,"vocab_size":151936,"tie_word_embeddings":true}"#,
        ),
        (
            "phi3-mini",
            r#"{"model_type":"phi3","architectures":["Phi3ForCausalLM"],"hidden_size":3072,"intermediate_size":8192,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32064,"tie_word_embeddings":false}"#,
        ),
    ];
    for (name, json) in configs {
        let cfg = dir.path().join(format!("{name}.json"));
        std::fs::write(&cfg, json).unwrap();
        let info = ModelInfo::open(&cfg).unwrap();
        for strategy in ["category", "layer", "full", "none"] {
            let args = [
                "plan",
                cfg.to_str().unwrap(),
                "--strategy",
                strategy,
                "--seed",
                "4",
            ];
            let emit = |how: &str| run_ok(hft_bin(), &[&args[..], &["--emit", how, "-q"]].concat());
            let plan: Plan = serde_json::from_str(&emit("json")).unwrap();
            let ax = Axolotl::new(&emit("axolotl"));
            let sw = Swift::new(&emit("swift"));
            let mut trained = 0;
            for (n, _) in &info.tensors {
                let want = plan.entry(n).is_some_and(trains_any);
                trained += usize::from(want);
                assert_eq!(ax.trains(n), want, "{name} {strategy} axolotl {n}");
                assert_eq!(sw.trains(n), want, "{name} {strategy} ms-swift {n}");
            }
            match strategy {
                "full" => assert_eq!(trained, info.tensors.len()),
                "none" => assert_eq!(trained, 0),
                _ => assert!(trained > 0 && trained < info.tensors.len()),
            }
        }
    }
}

/// `HFT_PYTHON` (a Python with torch, say `bench/.venv/bin/python`), else `python3`.
pub(crate) fn python() -> Option<&'static str> {
    let py: &'static str = match std::env::var("HFT_PYTHON") {
        Ok(p) => Box::leak(p.into_boxed_str()),
        Err(_) => "python3",
    };
    Std::new(py)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| py)
}

fn has_torch() -> bool {
    python().is_some_and(|p| {
        Std::new(p)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The torch export compiles; its pure-Python mask rebuild (another process, another
/// language) selects exactly the elements Rust selects; with torch present, it also runs on a
/// module of the model's shapes and the gradients follow the plan element by element.
pub(crate) fn python_checks(torch_src: &str, plan: &Plan, info: &ModelInfo, dir: &Path) {
    let Some(py) = python() else {
        eprintln!("python3 not found: torch export not checked");
        return;
    };
    let file = dir.join("hft_plan.py");
    std::fs::write(&file, torch_src).unwrap();
    let out = Std::new(py)
        .args(["-m", "py_compile", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Element masks: the smallest masked tensors, rebuilt in Python.
    let mut masked: Vec<(&String, &Entry, &Vec<usize>)> = plan
        .tensors
        .iter()
        .filter(|(_, e)| matches!(e, Entry::Mask { .. }))
        .map(|(n, e)| (n, e, &info.tensors.iter().find(|(m, _)| m == n).unwrap().1))
        .collect();
    masked.sort_by_key(|(_, _, s)| s.iter().product::<usize>());
    for (name, e, shape) in masked.into_iter().take(3) {
        let Entry::Mask { mask, seed } = e else {
            unreachable!()
        };
        let numel: usize = shape.iter().product();
        let script = format!(
            "exec(open({f:?}).read())\nk = hft_key({seed}, {name:?})\nc = hft_mask_count({mask:?}, {numel})\n\
             print(' '.join(str(i) for i in range({numel}) if hft_permute(k, {numel}, i) < c))\n",
            f = file.to_str().unwrap()
        );
        let out = Std::new(py).args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<usize> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        let f = e.element_fn(name, shape);
        let want: Vec<usize> = (0..numel).filter(|&i| f.trains(i)).collect();
        assert_eq!(got, want, "Python mask of {name}");
    }

    if !has_torch() {
        eprintln!("torch not installed: torch export compiled, not run");
        return;
    }
    let shapes: Vec<String> = info
        .tensors
        .iter()
        .map(|(n, s)| format!("({n:?}, {s:?})"))
        .collect();
    let script = format!(
        r#"
import torch
exec(open({f:?}).read())
root = torch.nn.Module()
for name, shape in [{shapes}]:
    mod = root
    parts = ["transformer"] + name.split(".")
    for p in parts[:-1]:
        if p not in mod._modules:
            mod.add_module(p, torch.nn.Module())
        mod = mod._modules[p]
    mod.register_parameter(parts[-1], torch.nn.Parameter(torch.randn(shape)))
partial = apply_hft_plan(root)
loss = sum((p.float() ** 2).sum() for p in root.parameters() if p.requires_grad)
loss.backward()
for pname, p in root.named_parameters():
    name = pname[len("transformer."):]
    keep = hft_trainable_mask(name, tuple(p.shape), PLAN[name])
    if not p.requires_grad:
        assert not keep.any(), name
        continue
    assert torch.equal(p.grad != 0, keep), name

# The same model as PEFT wraps it: a `base_model.model.` prefix, matrices behind `base_layer`
# with LoRA adapters beside them. Strict mode must find every wrapped weight; the adapters are
# left as PEFT set them.
peft = torch.nn.Module()
for name, shape in [{shapes}]:
    mod = peft
    parts = ["base_model", "model"] + name.split(".")
    if len(shape) == 2:
        parts = parts[:-1] + ["base_layer", parts[-1]]
    for p in parts[:-1]:
        if p not in mod._modules:
            mod.add_module(p, torch.nn.Module())
        mod = mod._modules[p]
    mod.register_parameter(parts[-1], torch.nn.Parameter(torch.randn(shape)))
    if len(shape) == 2:
        owner = peft.get_submodule(".".join(parts[:-2]))
        for ab in ("lora_A", "lora_B"):
            owner.add_module(ab, torch.nn.Module())
            owner._modules[ab].register_parameter("weight", torch.nn.Parameter(torch.randn(2, 2)))
partial = apply_hft_plan(peft)
for pname, p in peft.named_parameters():
    if ".lora_" in pname:
        assert p.requires_grad, pname
        continue
    name = pname[len("base_model.model."):].replace(".base_layer", "")
    entry = PLAN[name]
    assert p.requires_grad == (entry != "freeze"), pname

# Under AdamW with weight decay, the groups keep every masked element exactly where it was.
before = {{n: p.detach().clone() for n, p in root.named_parameters()}}
partial = apply_hft_plan(root)
opt = torch.optim.AdamW(hft_param_groups(root, partial, 0.1), lr=1e-2)
for _ in range(3):
    opt.zero_grad()
    sum((p.float() ** 2).sum() for p in root.parameters() if p.requires_grad).backward()
    opt.step()
for pname, p in root.named_parameters():
    name = pname[len("transformer."):]
    keep = hft_trainable_mask(name, tuple(p.shape), PLAN[name])
    moved = p.detach() != before[pname]
    assert not (moved & ~keep).any(), pname
    assert bool(moved[keep].all()), pname
print("ok", len(partial))
"#,
        f = file.to_str().unwrap(),
        shapes = shapes.join(", ")
    );
    let out = Std::new(py).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
