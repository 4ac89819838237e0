//! Synthetic checkpoints with real model layouts and deterministic contents: the committed
//! fixtures, the benchmark inputs and many tests are made here, so anyone can rebuild them
//! (`cargo run --release --example synth -- fixtures fixtures/`).
//!
//! A "tuned" variant is the base plus a change whose size depends on the layer and category,
//! so diffs and heatmaps of fixtures show structure rather than noise.

use std::path::Path;

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::io::dtype::{self, DType, CHUNK};
use crate::io::writer::{CheckpointWriter, TensorSpec, WriterOptions};
use crate::layout::{Category, Layout};
use crate::rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Gpt2,
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub tied: bool,
    pub dtype: DType,
    /// GPT-2 only: context length (position embeddings).
    pub positions: usize,
}

impl ModelSpec {
    /// A Llama-shaped model (grouped-query attention when `kv_heads < heads`).
    pub fn llama(hidden: usize, layers: usize, heads: usize, kv_heads: usize, ffn: usize) -> Self {
        ModelSpec {
            arch: Arch::Llama,
            hidden,
            layers,
            heads,
            kv_heads,
            intermediate: ffn,
            vocab: 264,
            tied: false,
            dtype: DType::BF16,
            positions: 0,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Tensor names and shapes in Hugging Face naming.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, f, v) = (self.hidden, self.intermediate, self.vocab);
        let kv = self.kv_heads * self.head_dim();
        let mut t: Vec<(String, Vec<usize>)> = Vec::new();
        match self.arch {
            Arch::Llama | Arch::Qwen2 => {
                t.push(("model.embed_tokens.weight".into(), vec![v, h]));
                for l in 0..self.layers {
                    let p = format!("model.layers.{l}.");
                    let mut add = |n: &str, s: Vec<usize>| t.push((format!("{p}{n}"), s));
                    add("input_layernorm.weight", vec![h]);
                    add("self_attn.q_proj.weight", vec![h, h]);
                    add("self_attn.k_proj.weight", vec![kv, h]);
                    add("self_attn.v_proj.weight", vec![kv, h]);
                    if self.arch == Arch::Qwen2 {
                        add("self_attn.q_proj.bias", vec![h]);
                        add("self_attn.k_proj.bias", vec![kv]);
                        add("self_attn.v_proj.bias", vec![kv]);
                    }
                    add("self_attn.o_proj.weight", vec![h, h]);
                    add("post_attention_layernorm.weight", vec![h]);
                    add("mlp.gate_proj.weight", vec![f, h]);
                    add("mlp.up_proj.weight", vec![f, h]);
                    add("mlp.down_proj.weight", vec![h, f]);
                }
                t.push(("model.norm.weight".into(), vec![h]));
                if !self.tied {
                    t.push(("lm_head.weight".into(), vec![v, h]));
                }
            }
            Arch::Gpt2 => {
                t.push(("wte.weight".into(), vec![v, h]));
                t.push(("wpe.weight".into(), vec![self.positions, h]));
                for l in 0..self.layers {
                    let p = format!("h.{l}.");
                    let mut add = |n: &str, s: Vec<usize>| t.push((format!("{p}{n}"), s));
                    add("ln_1.weight", vec![h]);
                    add("ln_1.bias", vec![h]);
                    add("attn.c_attn.weight", vec![h, 3 * h]);
                    add("attn.c_attn.bias", vec![3 * h]);
                    add("attn.c_proj.weight", vec![h, h]);
                    add("attn.c_proj.bias", vec![h]);
                    add("ln_2.weight", vec![h]);
                    add("ln_2.bias", vec![h]);
                    add("mlp.c_fc.weight", vec![h, f]);
                    add("mlp.c_fc.bias", vec![f]);
                    add("mlp.c_proj.weight", vec![f, h]);
                    add("mlp.c_proj.bias", vec![h]);
                }
                t.push(("ln_f.weight".into(), vec![h]));
                t.push(("ln_f.bias".into(), vec![h]));
            }
        }
        t
    }

    /// A config.json that `transformers` accepts for this shape.
    pub fn config(&self) -> Value {
        match self.arch {
            Arch::Llama | Arch::Qwen2 => {
                let (arch, mt) = if self.arch == Arch::Qwen2 {
                    ("Qwen2ForCausalLM", "qwen2")
                } else {
                    ("LlamaForCausalLM", "llama")
                };
                json!({
                    "architectures": [arch],
                    "model_type": mt,
                    "hidden_size": self.hidden,
                    "intermediate_size": self.intermediate,
                    "num_hidden_layers": self.layers,
                    "num_attention_heads": self.heads,
                    "num_key_value_heads": self.kv_heads,
                    "head_dim": self.head_dim(),
                    "vocab_size": self.vocab,
                    "max_position_embeddings": 256,
                    "rms_norm_eps": 1e-5,
                    "rope_theta": 10000.0,
                    "hidden_act": "silu",
                    "tie_word_embeddings": self.tied,
                    "bos_token_id": 256,
                    "eos_token_id": 257,
                    "torch_dtype": dtype_torch(self.dtype),
                })
            }
            Arch::Gpt2 => json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "n_embd": self.hidden,
                "n_layer": self.layers,
                "n_head": self.heads,
                "n_inner": self.intermediate,
                "n_positions": self.positions,
                "vocab_size": self.vocab,
                "tie_word_embeddings": true,
                "torch_dtype": dtype_torch(self.dtype),
            }),
        }
    }
}

fn dtype_torch(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// How far a tensor of the tuned variant moves from the base, relative to its init scale:
/// attention more in later layers, FFN moderately, norms a little, `k_proj` of layer 0 and
/// the final norm not at all (so diffs show exact zeros too).
fn tune_scale(layout: &Layout, name: &str, layers: usize) -> f64 {
    let role = layout.role(name);
    let depth = role
        .layer
        .map_or(0.5, |l| (l + 1) as f64 / layers.max(1) as f64);
    match role.unit_category() {
        Category::AttnK if role.layer == Some(0) => 0.0,
        Category::FinalNorm => 0.0,
        c if c.is_attention() => 0.02 + 0.08 * depth,
        c if c.is_ffn() => 0.05,
        Category::Norm | Category::AttnNorm => 0.01,
        Category::Embed | Category::LmHead | Category::PosEmbed => 0.005,
        _ => 0.02,
    }
}

/// Writes a checkpoint of `spec` to `out` (a directory, or a `.safetensors` file). `tune_seed`
/// `Some(s)` writes the tuned variant of the base with seed `seed`. Values are keyed by element
/// index, so a model with more vocabulary rows shares its first rows with a smaller base.
pub fn write_model(
    spec: &ModelSpec,
    out: &Path,
    seed: u64,
    tune_seed: Option<u64>,
    opts: &WriterOptions,
) -> Result<()> {
    let names = spec.tensors();
    let layout = Layout::detect(Some(&spec.config()), names.iter().map(|(n, _)| n.as_str()));
    let specs: Vec<TensorSpec> = names
        .iter()
        .map(|(n, s)| TensorSpec {
            name: n.clone(),
            dtype: spec.dtype,
            shape: s.clone(),
        })
        .collect();
    let writer = CheckpointWriter::create(out, specs, opts)?;
    let eb = dtype::elem_bytes(spec.dtype).expect("float dtype");
    names
        .par_iter()
        .enumerate()
        .try_for_each(|(ti, (name, shape))| -> Result<()> {
            let n: usize = shape.iter().product();
            let role = layout.role(name);
            let is_norm_weight = matches!(
                role.category,
                Category::Norm | Category::FinalNorm | Category::AttnNorm
            ) && name.ends_with(".weight");
            let is_bias = name.ends_with(".bias");
            let base_key = rng::key(seed, name);
            let init = if is_bias { 0.01 } else { 0.02 };
            let scale = tune_scale(&layout, name, spec.layers);
            let tune_key = tune_seed.map(|s| rng::key(s, name));
            (0..n.div_ceil(CHUNK))
                .into_par_iter()
                .try_for_each(|c| -> Result<()> {
                    let s = c * CHUNK;
                    let e = (s + CHUNK).min(n);
                    let mut vals = vec![0f32; e - s];
                    for (k, v) in vals.iter_mut().enumerate() {
                        let i = (s + k) as u64;
                        let mut x = if is_norm_weight {
                            1.0 + 0.05 * rng::normal(base_key, i)
                        } else {
                            init * rng::normal(base_key, i)
                        };
                        if let Some(tk) = tune_key {
                            let unit = if is_norm_weight { 1.0 } else { init };
                            x += scale * unit * rng::normal(tk, i);
                        }
                        *v = x as f32;
                    }
                    let mut bytes = vec![0u8; vals.len() * eb];
                    dtype::encode_f32(spec.dtype, &vals, &mut bytes);
                    writer.write(ti, s * eb, &bytes)
                })
        })?;
    let cfg = serde_json::to_string_pretty(&spec.config()).expect("JSON") + "\n";
    writer.add_file("config.json", cfg.as_bytes())?;
    writer.finish()?;
    Ok(())
}

/// The committed fixtures (see `fixtures/README.md`): small Llama (GQA, BF16) base and tuned
/// pair, the same pair sharded, a tied-embedding model with a resized vocabulary, a Qwen2 with
/// biases and a GPT-2-named pair.
pub fn write_fixtures(dir: &Path, force: bool) -> Result<()> {
    let opts = WriterOptions {
        force,
        ..WriterOptions::default()
    };
    let sharded = WriterOptions {
        max_shard_bytes: 160_000,
        force,
        ..WriterOptions::default()
    };
    let llama = ModelSpec::llama(64, 4, 4, 2, 128);
    write_model(&llama, &dir.join("llama-base"), 1, None, &opts)?;
    write_model(&llama, &dir.join("llama-tuned"), 1, Some(2), &opts)?;
    write_model(&llama, &dir.join("llama-base-sharded"), 1, None, &sharded)?;
    write_model(
        &llama,
        &dir.join("llama-tuned-sharded"),
        1,
        Some(2),
        &sharded,
    )?;
    let tied = ModelSpec {
        tied: true,
        vocab: 272,
        ..llama.clone()
    };
    write_model(&tied, &dir.join("llama-tied-resized"), 1, Some(3), &opts)?;
    let qwen = ModelSpec {
        arch: Arch::Qwen2,
        ..ModelSpec::llama(32, 2, 4, 2, 64)
    };
    write_model(&qwen, &dir.join("qwen2-base"), 4, None, &opts)?;
    write_model(&qwen, &dir.join("qwen2-tuned"), 4, Some(5), &opts)?;
    let gpt2 = ModelSpec {
        arch: Arch::Gpt2,
        positions: 32,
        tied: true,
        vocab: 96,
        ..ModelSpec::llama(32, 2, 4, 4, 128)
    };
    write_model(&gpt2, &dir.join("gpt2-base"), 6, None, &opts)?;
    write_model(&gpt2, &dir.join("gpt2-tuned"), 6, Some(7), &opts)?;
    Ok(())
}

/// Parses `"64,4,4,2,128"`-style shapes for the synth example; kept here so the example is thin.
pub fn parse_dims(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| Error::usage(format!("bad number `{x}` in `{s}`")))
        })
        .collect()
}
