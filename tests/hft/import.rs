//! End-to-end tests of `hft import` (and the hidden `hft logits`) on tiny synthetic GGUF files
//! written the way llama.cpp writes a Llama, and on deliberately unsupported ones.
//! (Built with the `train` feature only: see `mod import` in `main.rs`.)

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use hft::fixtures::gguf::TinyGguf;
use predicates::prelude::*;
use serde_json::Value;

use crate::common::*;

fn tiny(dir: &Path, spec: &TinyGguf) -> PathBuf {
    let g = dir.join("tiny.gguf");
    spec.write(&g).unwrap();
    g
}

/// Asserts a failure with exit 2 and a single-line message naming `file`.
fn bad_input(mut c: Command, file: &str, says: &str) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(file) && err.contains(says), "{err}");
}

#[test]
fn import_writes_a_hugging_face_directory() {
    let d = tempfile::tempdir().unwrap();
    let g = tiny(d.path(), &TinyGguf::default());
    let out = d.path().join("hf");
    hft(1)
        .arg("import")
        .arg(&g)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("tied embeddings").and(predicate::str::contains("Q8_0")));
    for f in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["hidden_size"], 64);
    assert_eq!(c["num_hidden_layers"], 2);
    assert_eq!(c["num_attention_heads"], 4);
    assert_eq!(c["num_key_value_heads"], 2);
    assert_eq!(c["intermediate_size"], 96);
    assert_eq!(c["vocab_size"], 269);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(c["rope_theta"], 10000.0);
    // The checkpoint is one `hft diff` reads: identical to itself, no lm_head (tied).
    let out_json = hft(1)
        .args(["diff", "--format", "json"])
        .arg(&out)
        .arg(&out)
        .output()
        .unwrap();
    assert!(out_json.status.success());
    let diff: Value = serde_json::from_slice(&out_json.stdout).unwrap();
    let text = diff.to_string();
    assert!(text.contains("model.layers.1.self_attn.q_proj.weight"));
    assert!(!text.contains("lm_head"));
    // Refuses to overwrite without --force, replaces with it.
    bad_input(
        {
            let mut c = hft(1);
            c.arg("import").arg(&g).arg("-o").arg(&out);
            c
        },
        "hf",
        "--force",
    );
    hft(1)
        .arg("import")
        .arg(&g)
        .arg("-o")
        .arg(&out)
        .args(["--force", "--dtype", "bf16"])
        .assert()
        .success();
    let raw = std::fs::read(out.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    assert_eq!(header["model.norm.weight"]["dtype"], "BF16");
    assert_eq!(
        read_json(&out.join("config.json"))["torch_dtype"],
        "bfloat16"
    );
}

#[test]
fn logits_dump_has_tokens_and_every_position() {
    let d = tempfile::tempdir().unwrap();
    let g = tiny(d.path(), &TinyGguf::default());
    let out = d.path().join("hf");
    hft(1)
        .arg("import")
        .arg(&g)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let f = d.path().join("l.safetensors");
    let o = hft(1)
        .arg("logits")
        .arg(&out)
        .args(["--prompt", "the cat", "--prompt", " the"])
        .arg("-o")
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["prompts"][0]["tokens"],
        serde_json::json!([119, 260, 267, 268])
    );
    let raw = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    assert_eq!(header["logits.0"]["shape"], serde_json::json!([4, 269]));
    assert_eq!(header["tokens.1"]["shape"], serde_json::json!([1]));
}

#[test]
fn unsupported_architecture_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let g = tiny(
        d.path(),
        &TinyGguf {
            arch: "qwen3moe".into(),
            ..TinyGguf::default()
        },
    );
    let mut c = hft(1);
    c.arg("import").arg(&g).arg("-o").arg(d.path().join("o"));
    bad_input(c, "tiny.gguf", "architecture `qwen3moe` is not supported");
    assert!(!d.path().join("o").exists());
}

/// A GGUF header whose one tensor is stored as GGML type 16 (IQ2_XXS), which candle cannot
/// dequantise.
fn iq_gguf(path: &Path) {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, t: &str| {
        b.extend((t.len() as u64).to_le_bytes());
        b.extend(t.as_bytes());
    };
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // string
    s(&mut b, "llama");
    s(&mut b, "token_embd.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(256u64.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(16u32.to_le_bytes()); // IQ2_XXS
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + 1024, 0);
    std::fs::write(path, b).unwrap();
}

#[test]
fn unsupported_quantisation_and_non_gguf_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let g = d.path().join("iq.gguf");
    iq_gguf(&g);
    let mut c = hft(1);
    c.arg("import").arg(&g).arg("-o").arg(d.path().join("o"));
    bad_input(c, "iq.gguf", "GGML type 16");

    let junk = d.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a gguf file, just text").unwrap();
    let mut c = hft(1);
    c.arg("import").arg(&junk).arg("-o").arg(d.path().join("o"));
    bad_input(c, "junk.gguf", "not a GGUF file");

    let mut c = hft(1);
    c.arg("import")
        .arg(d.path().join("missing.gguf"))
        .arg("-o")
        .arg(d.path().join("o"));
    bad_input(c, "missing.gguf", "No such file");
    assert!(!d.path().join("o").exists());
}

/// The SmolLM2 recipe's `--quick` variant end to end: SFT then DPO on the real model, every eval set
/// (retention included) after every stage, and the post baselines. Needs the model from
/// `scripts/fetch-smollm2.sh`; skips, saying so, without it. A few minutes on 2 cores.
#[test]
fn smollm2_quick_recipe_runs_sft_then_dpo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("models/smollm2-135m/model.safetensors").is_file() {
        eprintln!("skipping: models/smollm2-135m absent (run scripts/fetch-smollm2.sh)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let mut c = hft_bin();
    c.args(["--threads", "2", "-q", "run"])
        .arg(root.join("recipes/smollm2-sft-dpo.yaml"))
        .arg("--quick")
        .arg("-o")
        .arg(&out);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_json(&out.join("report.json"));
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(
        (stages[0]["name"].as_str(), stages[1]["name"].as_str()),
        (Some("sft"), Some("dpo"))
    );
    // SFT starts learning the invented facts: their loss falls far below the base model's.
    let before = r["before"]["people"]["loss"].as_f64().unwrap();
    let after_sft = stages[0]["scores"]["people"]["loss"].as_f64().unwrap();
    assert!(
        after_sft < before - 0.5,
        "people loss {before} -> {after_sft}"
    );
    // DPO's first step is at the reference: ln 2.
    let dpo_first = stages[1]["curve"][0][1].as_f64().unwrap();
    assert!(
        (dpo_first - 2f64.ln()).abs() < 1e-4,
        "first DPO loss {dpo_first}"
    );
    // Retention is scored with exact match and answer loss, before and after every stage.
    for row in [&r["before"], &stages[0]["scores"], &stages[1]["scores"]] {
        let f = &row["facts"];
        let em = f["exact_match"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&em) && f["loss"].as_f64().unwrap() > 0.0,
            "{f}"
        );
    }
    // The retention set holds only facts the base model knows (checked with transformers when
    // the data was made), and hft agrees.
    assert!(r["before"]["facts"]["exact_match"].as_f64().unwrap() > 0.97);
    assert_eq!(r["post"].as_array().unwrap().len(), 2);
    assert!(out.join("report.md").is_file() && out.join("01-dpo/model.safetensors").is_file());
}

/// A Qwen3 GGUF (q/k norms, rows not permuted) imports to a `Qwen3ForCausalLM` directory that
/// `hft run` trains, with its q/k norms going with their projections in the stage plan.
#[test]
fn qwen3_gguf_imports_and_trains() {
    let d = tempfile::tempdir().unwrap();
    let g = tiny(
        d.path(),
        &TinyGguf {
            arch: "qwen3".into(),
            pre: "qwen2".into(),
            ..TinyGguf::default()
        },
    );
    let model = d.path().join("model");
    hft(1)
        .arg("import")
        .arg(&g)
        .arg("-o")
        .arg(&model)
        .assert()
        .success();
    let c = read_json(&model.join("config.json"));
    assert_eq!(c["model_type"], "qwen3");
    assert_eq!(c["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(c["head_dim"], 16);
    crate::run::setup(d.path(), "lr: 1.0e-2");
    crate::run::hft_serial()
        .current_dir(d.path())
        .args(["run", "r.yaml"])
        .assert()
        .success();
    // Stage b's category plan: each q/k norm has its projection's entry.
    let plan = std::fs::read_to_string(d.path().join("out/01-b/plan.yaml")).unwrap();
    let entry = |name: &str| {
        plan.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name}:")))
            .map(|l| l.split(':').nth(1).unwrap().trim().to_string())
            .unwrap_or_else(|| panic!("{name} not in {plan}"))
    };
    for l in 0..2 {
        for (norm, proj) in [("q_norm", "q_proj"), ("k_norm", "k_proj")] {
            let p = format!("model.layers.{l}.self_attn");
            assert_eq!(
                entry(&format!("{p}.{norm}.weight")),
                entry(&format!("{p}.{proj}.weight")),
                "layer {l} {norm}"
            );
        }
    }
}
