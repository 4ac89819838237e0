//! Logits of `hft`'s own forward pass on a checkpoint directory, written for an outside check.
//!
//! Why: the trainer's Llama is our own code, so its agreement with an independent
//! implementation (transformers, in `scripts/compare_transformers.py`) is the evidence that an
//! imported model computes what the original computes. This writes, per prompt, the token ids
//! `hft` tokenised and the logits of every position, as a safetensors file any language reads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::error::{Error, Result};
use crate::io::Checkpoint;
use crate::train::model::Llama;
use crate::train::TrainError;

/// Loads the model in `dir` (f32, CPU) and its `tokenizer.json`, runs every prompt, writes
/// `tokens.I` (I64 `[T]`) and `logits.I` (F32 `[T, vocab]`) to `out`; returns a JSON summary.
pub fn dump(dir: &Path, prompts: &[String], out: &Path) -> Result<serde_json::Value> {
    let ck = Checkpoint::open(dir)?;
    let model = Llama::load(&ck, None, DType::F32, &Device::Cpu)?;
    let tok_path = ck
        .dir
        .clone()
        .unwrap_or_else(|| dir.to_path_buf())
        .join("tokenizer.json");
    let tok = crate::tokenizer::load(&tok_path)?;
    let mut blobs: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = Vec::new();
    let mut summary = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let ids = tok.encode(p)?;
        if ids.is_empty() {
            return Err(Error::usage(format!("prompt {i} encodes to no tokens")));
        }
        if ids.len() > model.config.max_positions {
            return Err(Error::usage(format!(
                "prompt {i} has {} tokens, the model allows {}",
                ids.len(),
                model.config.max_positions
            )));
        }
        let t = ids.len();
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_vec(ids.clone(), (1, t), &Device::Cpu)?;
            model.forward(&x, false)?.flatten_all()?.to_vec1::<f32>()
        };
        let logits = run().map_err(TrainError::map)?;
        let vocab = logits.len() / t;
        let tok_bytes: Vec<u8> = ids.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect();
        let log_bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
        blobs.push((
            format!("tokens.{i}"),
            vec![t],
            safetensors::Dtype::I64,
            tok_bytes,
        ));
        blobs.push((
            format!("logits.{i}"),
            vec![t, vocab],
            safetensors::Dtype::F32,
            log_bytes,
        ));
        summary.push(json!({"prompt": p, "tokens": ids}));
    }
    let views = blobs
        .iter()
        .map(|(n, s, d, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Internal(format!("safetensors view: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("model".to_string(), dir.display().to_string());
    meta.insert(
        "hft_version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Internal(format!("safetensors: {e}")))?;
    crate::io::atomic::write_file(out, &bytes)?;
    Ok(
        json!({"model": dir.display().to_string(), "output": out.display().to_string(), "prompts": summary}),
    )
}
