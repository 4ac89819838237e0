//! Tests of the training mechanics on tiny models (one thread, a few steps).

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::fixtures::synth::{write_model, Arch, ModelSpec};
use crate::io::dtype::DType as FileDType;
use crate::io::writer::WriterOptions;
use crate::io::Checkpoint;
use crate::select::{self, ModelInfo, SelectOptions, Strategy};
use crate::train::data::{Batch, Example, BYTE_BOS, BYTE_EOS, BYTE_PAD};
use crate::train::eval;
use crate::train::model::Llama;

fn tiny(dir: &Path, arch: Arch, tied: bool) -> Checkpoint {
    let spec = ModelSpec {
        arch,
        tied,
        dtype: FileDType::F32,
        ..ModelSpec::llama(16, 2, 4, 2, 24)
    };
    write_model(&spec, dir, 3, None, &WriterOptions::default()).unwrap();
    Checkpoint::open(dir).unwrap()
}

fn batch() -> Batch {
    let a = Example {
        tokens: vec![BYTE_BOS, 104, 105, 33, BYTE_EOS],
        weights: vec![1.0; 4],
        completion: false,
    };
    let b = Example {
        tokens: vec![BYTE_BOS, 120, 61, 121, BYTE_EOS],
        weights: vec![0.0, 0.0, 1.0, 1.0],
        completion: true,
    };
    Batch::new(&[&a, &b], BYTE_PAD)
}

fn loss_value(m: &Llama, b: &Batch) -> f64 {
    eval::loss(m, std::slice::from_ref(b), true)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn set_elem(v: &Var, i: usize, x: f64) {
    let shape = v.dims().to_vec();
    let mut vals = v.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    vals[i] = x;
    v.set(&Tensor::from_vec(vals, shape, &Device::Cpu).unwrap())
        .unwrap();
}

/// Central finite differences in f64 against backprop, on a few elements of every tensor, for
/// Llama (untied, GQA), Qwen2 (q/k/v biases), Qwen3 (q/k norms) and a tied-embedding model.
#[test]
fn gradients_match_finite_differences_in_f64() {
    for (arch, tied) in [
        (Arch::Llama, false),
        (Arch::Qwen2, false),
        (Arch::Qwen3, false),
        (Arch::Llama, true),
    ] {
        let d = tempfile::tempdir().unwrap();
        let ck = tiny(d.path(), arch, tied);
        let m = Llama::load(&ck, None, DType::F64, &Device::Cpu).unwrap();
        let b = batch();
        let grads = eval::loss(&m, std::slice::from_ref(&b), true)
            .unwrap()
            .backward()
            .unwrap();
        let h = 1e-5;
        let all = m.gradients(&grads).unwrap();
        for ((name, var), (_, g)) in m.vars().into_iter().zip(all) {
            let g = g
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let n = g.len();
            for i in [0, n / 3, n - 1] {
                let x0 = var.flatten_all().unwrap().to_vec1::<f64>().unwrap()[i];
                set_elem(&var, i, x0 + h);
                let up = loss_value(&m, &b);
                set_elem(&var, i, x0 - h);
                let down = loss_value(&m, &b);
                set_elem(&var, i, x0);
                let fd = (up - down) / (2.0 * h);
                let err = (fd - g[i]).abs() / (fd.abs() + g[i].abs()).max(1e-6);
                assert!(
                    err < 1e-4,
                    "{arch:?} tied={tied} {name}[{i}]: fd {fd} vs backprop {}",
                    g[i]
                );
            }
        }
    }
}

fn plan(ck: &Checkpoint, s: Strategy, stage: u64) -> crate::plan::Plan {
    let mut o = SelectOptions::new(s, 0.5, 7);
    o.stage = stage;
    select::build(&ModelInfo::from_checkpoint(ck), &o, None).unwrap()
}

/// Every trainable tensor gets a gradient; frozen tensors are plain tensors, and the frozen
/// linear op gives the same input gradients as a trainable matmul would.
#[test]
fn every_trainable_tensor_receives_a_gradient_under_each_strategy() {
    let d = tempfile::tempdir().unwrap();
    let ck = tiny(d.path(), Arch::Llama, false);
    let b = batch();
    let full = Llama::load(&ck, None, DType::F64, &Device::Cpu).unwrap();
    let gfull = eval::loss(&full, std::slice::from_ref(&b), true)
        .unwrap()
        .backward()
        .unwrap();
    let gfull = full.gradients(&gfull).unwrap();
    for s in [
        Strategy::Category,
        Strategy::Layer,
        Strategy::Element,
        Strategy::Model,
    ] {
        let p = plan(&ck, s, 1);
        let m = Llama::load(&ck, Some(&p), DType::F64, &Device::Cpu).unwrap();
        let vars = m.vars();
        assert!(!vars.is_empty() && vars.len() <= m.params.len());
        let g = eval::loss(&m, std::slice::from_ref(&b), true)
            .unwrap()
            .backward()
            .unwrap();
        let g = m.gradients(&g).unwrap();
        for (name, gv) in &g {
            let gv = gv
                .as_ref()
                .unwrap_or_else(|| panic!("{s:?}: {name} has no gradient"));
            // Same model values, so the gradient equals full fine-tuning's.
            let gf = gfull
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .as_ref()
                .unwrap();
            let diff = (gv - gf)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(diff < 1e-10, "{s:?} {name}: {diff}");
        }
        if s == Strategy::Category {
            assert!(vars.len() < m.params.len(), "category freezes something");
        }
    }
}

/// A trained stage leaves frozen tensors and masked elements bit-identical to the stage start.
#[test]
fn frozen_tensors_and_masked_elements_are_bit_identical_after_training() {
    use crate::train::optim::{AdamW, AdamWConfig};
    let d = tempfile::tempdir().unwrap();
    let ck = tiny(d.path(), Arch::Llama, false);
    let b = batch();
    for s in [Strategy::Category, Strategy::Element] {
        let p = plan(&ck, s, 2);
        let m = Llama::load(&ck, Some(&p), DType::F32, &Device::Cpu).unwrap();
        let start: Vec<Vec<f32>> = m
            .params
            .iter()
            .map(|(_, p)| p.tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        let vars = m.vars();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(
            vars.iter()
                .map(|(n, v)| (v.clone(), m.masks.get(n).cloned()))
                .collect(),
            cfg,
        )
        .unwrap();
        for _ in 0..3 {
            let g = eval::loss(&m, std::slice::from_ref(&b), true)
                .unwrap()
                .backward()
                .unwrap();
            let mut grads: Vec<_> = m
                .gradients(&g)
                .unwrap()
                .into_iter()
                .map(|(_, g)| g)
                .collect();
            opt.mask_and_norm(&mut grads).unwrap();
            opt.step(&grads, 1e-2, 1.0).unwrap();
        }
        let mut moved = 0;
        for ((name, param), before) in m.params.iter().zip(&start) {
            let after = param
                .tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let f = p
                .entry(name)
                .unwrap()
                .element_fn(name, param.tensor().dims());
            for (i, (x, y)) in before.iter().zip(&after).enumerate() {
                if f.trains(i) {
                    moved += (x != y) as usize;
                } else {
                    assert_eq!(x.to_bits(), y.to_bits(), "{s:?} {name}[{i}] moved");
                }
            }
        }
        assert!(moved > 0, "{s:?}: nothing trained");
    }
}

/// The frozen-linear op must not change what the model computes: logits under a half-frozen
/// plan equal those of the fully trainable model.
#[test]
fn frozen_and_trainable_models_compute_the_same_logits() {
    let d = tempfile::tempdir().unwrap();
    let ck = tiny(d.path(), Arch::Qwen2, false);
    let b = batch();
    let x = Tensor::from_vec(b.inputs.clone(), (b.b, b.t), &Device::Cpu).unwrap();
    let full = Llama::load(&ck, None, DType::F32, &Device::Cpu).unwrap();
    let half = Llama::load(
        &ck,
        Some(&plan(&ck, Strategy::Category, 0)),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let a = full.forward(&x, true).unwrap();
    let c = half.forward(&x, true).unwrap();
    let e = half.forward(&x, false).unwrap();
    let d1 = (&a - &c)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d2 = (&a - &e)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d1, 0.0);
    assert_eq!(d2, 0.0);
    assert_eq!(a.dims(), &[2, 4, 264]);
    let _ = BYTE_EOS;
}

#[test]
fn unsupported_families_and_missing_tensors_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let spec = ModelSpec {
        arch: Arch::Gpt2,
        positions: 16,
        tied: true,
        dtype: FileDType::F32,
        ..ModelSpec::llama(16, 1, 4, 4, 24)
    };
    write_model(&spec, d.path(), 1, None, &WriterOptions::default()).unwrap();
    let ck = Checkpoint::open(d.path()).unwrap();
    let e = Llama::load(&ck, None, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not supported"), "{e}");
}

/// Full fine-tuning learns a task to >= 0.8 exact match, then forgets it (<= 0.05) when the
/// next stage teaches other answers to the same prompts: the mechanics the report measures.
#[test]
fn full_fine_tuning_learns_a_task_then_forgets_it() {
    use crate::train::recipe::Recipe;
    use crate::train::stage::Log;
    use crate::train::stages::{run_stages as run, RunOptions};
    let d = tempfile::tempdir().unwrap();
    let spec = ModelSpec {
        dtype: FileDType::F32,
        ..ModelSpec::llama(32, 2, 4, 2, 64)
    };
    write_model(
        &spec,
        &d.path().join("m"),
        9,
        None,
        &WriterOptions::default(),
    )
    .unwrap();
    let facts = |shift: u64| -> String {
        (0..8u64)
            .map(|i| {
                let key: String = [b'a' + i as u8, b'p' + i as u8]
                    .iter()
                    .map(|&c| c as char)
                    .collect();
                format!(
                    "{{\"prompt\":\"k:{key}=\",\"completion\":\"{}\"}}\n",
                    (i * 37 + shift) % 90 + 10
                )
            })
            .collect()
    };
    std::fs::write(d.path().join("a.jsonl"), facts(0)).unwrap();
    std::fs::write(d.path().join("b.jsonl"), facts(50)).unwrap();
    let recipe =
        "model: m\noutput: out\ndefaults: {lr: 1.0e-2, steps: 120, seq_len: 16, log_every: 1000}\n\
        plan: {strategy: full}\neval: [{name: a, path: a.jsonl}, {name: b, path: b.jsonl}]\n\
        stages:\n  - {name: a, tasks: [a], data: [{path: a.jsonl, batch: 8}]}\n  \
        - {name: b, tasks: [b], data: [{path: b.jsonl, batch: 8}]}\n";
    let path = d.path().join("r.yaml");
    std::fs::write(&path, recipe).unwrap();
    let r = Recipe::read(&path).unwrap();
    let opts = RunOptions {
        device: Device::Cpu,
        strategy: None,
        output: d.path().join("out"),
        resume: false,
        force: false,
        log: Log::Quiet,
        command: "test".into(),
        sink: std::sync::Arc::new(crate::progress::Silent),
    };
    let rep = run(&r, &path, &opts).unwrap();
    let em = |stage: usize, set: &str| rep.stages[stage].scores[set].exact_match.unwrap();
    assert!(em(0, "a") >= 0.8, "learned a: {}", em(0, "a"));
    assert!(em(1, "b") >= 0.8, "learned b: {}", em(1, "b"));
    assert!(em(1, "a") <= 0.05, "a after b: {}", em(1, "a"));
    assert!(rep.metrics.exact_match.bwt.unwrap() <= -0.75);
}

/// Autocast: with BF16 products the loss and the gradients (which reach the f32 master
/// variables in f32) stay close to the all-f32 ones, under a half-frozen plan too.
#[test]
fn bf16_products_give_f32_gradients_close_to_the_f32_ones() {
    let d = tempfile::tempdir().unwrap();
    let ck = tiny(d.path(), Arch::Qwen2, false);
    let b = batch();
    let p = plan(&ck, Strategy::Category, 0);
    let load = |compute: DType| {
        Llama::load(&ck, Some(&p), DType::F32, &Device::Cpu)
            .unwrap()
            .with_compute(compute)
    };
    let (f32m, bf16m) = (load(DType::F32), load(DType::BF16));
    let (lf, lb) = (loss_value(&f32m, &b), loss_value(&bf16m, &b));
    assert!((lf - lb).abs() < 0.02 * lf, "loss f32 {lf}, bf16 {lb}");
    let gf = eval::loss(&f32m, std::slice::from_ref(&b), true)
        .unwrap()
        .backward()
        .unwrap();
    let gb = eval::loss(&bf16m, std::slice::from_ref(&b), true)
        .unwrap()
        .backward()
        .unwrap();
    let vars = f32m.vars();
    assert!(!vars.is_empty() && vars.len() < f32m.params.len());
    let (gf, gb) = (f32m.gradients(&gf).unwrap(), bf16m.gradients(&gb).unwrap());
    for ((name, a), (_, c)) in gf.iter().zip(&gb) {
        let a = a.as_ref().expect("f32 gradient");
        let c = c.as_ref().expect("bf16 gradient");
        assert_eq!(c.dtype(), DType::F32, "{name}");
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
        };
        let rel = norm(&(a - c).unwrap()) / norm(a).max(1e-12);
        assert!(rel < 0.05, "{name}: relative gradient difference {rel}");
    }
}
