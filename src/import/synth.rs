//! Tiny synthetic GGUF files, written the way llama.cpp's converter writes a Llama: GGUF names,
//! Q and K rows permuted into the interleaved rotary layout, optional quantisation, and a
//! byte-level BPE vocabulary in the metadata.
//!
//! Why: the import must be tested in CI, where the real model is absent. Because the
//! Hugging Face-layout weights are generated first ([`TinyGguf::hf_weights`]) and permuted
//! on the way in, a test can check that the import restores them exactly (F32), and compare
//! forwards over quantised ones.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::rng;

/// The shape and storage of a tiny GGUF model.
#[derive(Debug, Clone)]
pub struct TinyGguf {
    /// `general.architecture` (anything but `llama` is refused by the import).
    pub arch: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    /// Storage of the matrices (norms stay F32, as llama.cpp keeps them).
    pub quant: GgmlDType,
    /// No `output.weight` (the head reuses the embeddings).
    pub tied: bool,
    pub seed: u64,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    pub add_bos: bool,
    pub rope_theta: f32,
}

impl Default for TinyGguf {
    fn default() -> Self {
        TinyGguf {
            arch: "llama".into(),
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 96,
            quant: GgmlDType::Q8_0,
            tied: true,
            seed: 1,
            pre: "smollm".into(),
            add_bos: false,
            rope_theta: 10000.0,
        }
    }
}

/// Merges of the tiny vocabulary (each adds the concatenation as a token).
const MERGES: [(&str, &str); 10] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("Ġ", "s"),
    ("o", "n"),
    ("Ġ", "c"),
    ("a", "t"),
];

/// The special tokens at the start of the vocabulary (SmolLM2's first three).
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// GPT-2's byte -> printable character table (`bytes_to_unicode`), the alphabet of every
/// byte-level BPE vocabulary.
pub fn byte_chars() -> Vec<char> {
    let mut out = vec!['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid char")
        };
    }
    out
}

/// The tiny vocabulary: specials, the 256 byte characters, then one token per merge.
pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    v.extend(byte_chars().into_iter().map(String::from));
    v.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    v
}

/// llama.cpp's `permute`: Hugging Face row `a * hd/2 + j` of each head goes to row `2j + a`.
pub fn permute_rows(vals: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = vals.len() / rows;
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; vals.len()];
    for h in 0..n_head {
        for j in 0..half {
            for a in 0..2 {
                let src = h * hd + a * half + j;
                let dst = h * hd + 2 * j + a;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&vals[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn cerr(path: &Path, e: candle_core::Error) -> Error {
    Error::Internal(format!("{}: writing GGUF: {e}", path.display()))
}

impl TinyGguf {
    pub fn vocab(&self) -> usize {
        vocabulary().len()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Hugging Face-layout weights (name, shape, values), deterministic in `seed`.
    pub fn hf_weights(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let (h, f, hd) = (self.hidden, self.intermediate, self.head_dim());
        let mut shapes: Vec<(String, Vec<usize>)> =
            vec![("model.embed_tokens.weight".into(), vec![self.vocab(), h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}.");
            for (n, s) in [
                ("input_layernorm.weight", vec![h]),
                ("self_attn.q_proj.weight", vec![self.heads * hd, h]),
                ("self_attn.k_proj.weight", vec![self.kv_heads * hd, h]),
                ("self_attn.v_proj.weight", vec![self.kv_heads * hd, h]),
                ("self_attn.o_proj.weight", vec![h, self.heads * hd]),
                ("post_attention_layernorm.weight", vec![h]),
                ("mlp.gate_proj.weight", vec![f, h]),
                ("mlp.up_proj.weight", vec![f, h]),
                ("mlp.down_proj.weight", vec![h, f]),
            ] {
                shapes.push((format!("{p}{n}"), s));
            }
        }
        shapes.push(("model.norm.weight".into(), vec![h]));
        if !self.tied {
            shapes.push(("lm_head.weight".into(), vec![self.vocab(), h]));
        }
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let key = rng::key(self.seed, &name);
                let n: usize = shape.iter().product();
                let norm = name.ends_with("norm.weight");
                // Large enough weights that attention is far from uniform, so a wrong rotary
                // layout changes the loss visibly.
                let std = if norm { 0.1 } else { 0.25 };
                let vals = (0..n as u64)
                    .map(|i| {
                        let x = rng::normal(key, i) * std;
                        (if norm { 1.0 + x } else { x }) as f32
                    })
                    .collect();
                (name, shape, vals)
            })
            .collect()
    }

    /// The GGUF name of a Hugging Face name.
    fn gguf_name(hf: &str) -> String {
        match hf {
            "model.embed_tokens.weight" => "token_embd.weight".into(),
            "model.norm.weight" => "output_norm.weight".into(),
            "lm_head.weight" => "output.weight".into(),
            _ => {
                let t = hf.strip_prefix("model.layers.").expect("layer tensor");
                let (l, rest) = t.split_once('.').expect("layer.part");
                let part = match rest {
                    "input_layernorm.weight" => "attn_norm.weight",
                    "post_attention_layernorm.weight" => "ffn_norm.weight",
                    "self_attn.q_proj.weight" => "attn_q.weight",
                    "self_attn.k_proj.weight" => "attn_k.weight",
                    "self_attn.v_proj.weight" => "attn_v.weight",
                    "self_attn.o_proj.weight" => "attn_output.weight",
                    "mlp.gate_proj.weight" => "ffn_gate.weight",
                    "mlp.up_proj.weight" => "ffn_up.weight",
                    "mlp.down_proj.weight" => "ffn_down.weight",
                    other => panic!("unknown part {other}"),
                };
                format!("blk.{l}.{part}")
            }
        }
    }

    /// Writes the model to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dev = Device::Cpu;
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        for (name, shape, vals) in self.hf_weights() {
            let vals = if name.ends_with("q_proj.weight") {
                permute_rows(&vals, shape[0], self.heads)
            } else if name.ends_with("k_proj.weight") {
                permute_rows(&vals, shape[0], self.kv_heads)
            } else {
                vals
            };
            let t = Tensor::from_vec(vals, shape.as_slice(), &dev).map_err(|e| cerr(path, e))?;
            let dtype = if shape.len() == 1 {
                GgmlDType::F32
            } else {
                self.quant
            };
            let q = QTensor::quantize(&t, dtype).map_err(|e| cerr(path, e))?;
            tensors.push((Self::gguf_name(&name), q));
        }
        let a = |k: &str| format!("{}.{k}", self.arch);
        let vocab = vocabulary();
        let mut types = vec![Value::I32(1); vocab.len()];
        for t in types.iter_mut().take(SPECIALS.len()) {
            *t = Value::I32(3);
        }
        let meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(self.arch.clone())),
            ("general.name".into(), Value::String("hft tiny gguf".into())),
            (a("block_count"), Value::U32(self.layers as u32)),
            (a("context_length"), Value::U32(256)),
            (a("embedding_length"), Value::U32(self.hidden as u32)),
            (a("feed_forward_length"), Value::U32(self.intermediate as u32)),
            (a("attention.head_count"), Value::U32(self.heads as u32)),
            (a("attention.head_count_kv"), Value::U32(self.kv_heads as u32)),
            (a("rope.freq_base"), Value::F32(self.rope_theta)),
            (a("rope.dimension_count"), Value::U32(self.head_dim() as u32)),
            (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
            (a("vocab_size"), Value::U32(vocab.len() as u32)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String(self.pre.clone())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(vocab.iter().cloned().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(
                    MERGES
                        .iter()
                        .map(|(x, y)| Value::String(format!("{x} {y}")))
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.padding_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(self.add_bos)),
            (
                "tokenizer.chat_template".into(),
                Value::String(
                    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        .into(),
                ),
            ),
        ];
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?);
        gguf_file::write(&mut f, &meta_refs, &t_refs).map_err(|e| cerr(path, e))?;
        use std::io::Write;
        f.flush().map_err(|e| Error::io(path, e))
    }
}
