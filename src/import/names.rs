//! GGUF tensors to Hugging Face ones: names from the architecture tables, shapes checked
//! against the architecture's, rotary rows restored, checkpoint order.

use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use super::{Hparams, Mapped, Transform};
use crate::arch::{self, Category, Layout, ModelConfig};
use crate::error::{Error, Result};

/// The Hugging Face name of a GGUF tensor (from [`crate::arch::gguf`]) and whether it needs
/// its rotary rows restored. `None` for names with no place in a Llama or Qwen3 checkpoint.
pub fn hf_name(gguf: &str, h: &Hparams) -> Option<(String, Transform)> {
    let hf = arch::gguf::hf_name(gguf, h.layers)?;
    // Only llama's converter permutes rows (qwen3 keeps the Hugging Face rotary layout).
    let transform = match (h.arch, role(&hf, h).unit_category()) {
        ("llama", Category::AttnQ) => Transform::Unpermute(h.heads),
        ("llama", Category::AttnK) => Transform::Unpermute(h.kv_heads),
        _ => Transform::Copy,
    };
    Some((hf, transform))
}

impl Hparams {
    /// The model's config as the architecture tables take it (`attention_bias` when the GGUF
    /// holds q/k/v biases).
    pub fn model_config(&self, bias: bool) -> ModelConfig {
        ModelConfig {
            model_type: Some(self.arch.into()),
            hidden: Some(self.hidden),
            intermediate: Some(self.intermediate),
            layers: Some(self.layers),
            heads: Some(self.heads),
            kv_heads: Some(self.kv_heads),
            head_dim: Some(self.head_dim),
            explicit_head_dim: true,
            vocab: Some(self.vocab),
            attention_bias: Some(bias),
            ..ModelConfig::default()
        }
    }
}

/// The family of the GGUF's architecture.
fn family(h: &Hparams) -> &'static arch::Family {
    arch::decoder::family_of(h.arch).unwrap_or(&arch::families::LLAMA)
}

/// What a Hugging Face tensor of the model is, by its family's tables.
pub(super) fn role(hf: &str, h: &Hparams) -> arch::Role {
    Layout {
        family: Some(family(h)),
        dims: ModelConfig::default(),
    }
    .role(hf)
}

/// Maps every GGUF tensor to its Hugging Face name, checks its shape against the architecture's
/// and that every matrix and norm is there, and orders them as checkpoints list them.
pub(super) fn map_tensors(path: &Path, c: &Content, h: &Hparams) -> Result<Vec<Mapped>> {
    let bad = |m: String| Error::input(path, m);
    if c.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(bad(
            "tensor `rope_freqs.weight` (Llama 3.1 rope frequency scaling) is not \
                        supported by hft's Llama"
                .into(),
        ));
    }
    let bias = c.tensor_infos.keys().any(|n| n.ends_with(".bias"));
    let expected = arch::decoder::tensors(family(h), &h.model_config(bias), path)?;
    let rank: std::collections::HashMap<&str, (usize, &Vec<usize>)> = expected
        .iter()
        .enumerate()
        .map(|(i, (n, s))| (n.as_str(), (i, s)))
        .collect();
    let mut out = Vec::new();
    for (name, info) in &c.tensor_infos {
        let place = hf_name(name, h).and_then(|(hf, t)| Some((rank.get(hf.as_str())?.1, hf, t)));
        let (want, hf, transform) = place.ok_or_else(|| {
            bad(format!(
                "tensor `{name}` has no place in a Hugging Face {} checkpoint",
                h.arch
            ))
        })?;
        let shape = info.shape.dims().to_vec();
        if &shape != want {
            return Err(bad(format!(
                "tensor `{name}` has shape {shape:?}, the metadata implies {want:?}"
            )));
        }
        out.push(Mapped {
            gguf: name.clone(),
            hf,
            shape,
            transform,
        });
    }
    let have: std::collections::HashSet<&str> = out.iter().map(|m| m.hf.as_str()).collect();
    // Biases and the head are optional (a tied model has no head); the rest must be there.
    let missing = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| {
            let c = role(n, h).category;
            c != Category::Bias && c != Category::LmHead
        })
        .find(|n| !have.contains(n));
    if let Some(missing) = missing {
        return Err(bad(format!("incomplete model: no tensor for `{missing}`")));
    }
    out.sort_by_key(|m| rank[m.hf.as_str()].0);
    Ok(out)
}

/// Restores Hugging Face row order from llama.cpp's rotary layout.
///
/// `convert_hf_to_gguf.py` stores `w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)`: in each
/// head, GGUF row `2j + a` holds Hugging Face row `a * hd/2 + j`. Works for matrices (rows of
/// `len / rows` values) and bias vectors alike.
pub fn unpermute_rows(vals: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = vals.len() / rows.max(1);
    let hd = rows / n_head.max(1);
    let half = hd / 2;
    let mut out = vec![0f32; vals.len()];
    for h in 0..n_head {
        for j in 0..half {
            for a in 0..2 {
                let src = h * hd + 2 * j + a;
                let dst = h * hd + a * half + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&vals[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}
