//! Scoring: mean loss per scored token (perplexity is its exponential) and, for
//! prompt/completion sets, exact match of the greedy completion.
//!
//! Exact match is computed with one teacher-forced pass: greedy decoding reproduces the
//! completion (and then stops with EOS) exactly when, at every completion position, the argmax
//! of the logits given the true prefix is the true next token. So the figure is the greedy
//! decode's, at the cost of one forward pass.

pub mod retention;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::train::data::{Batch, Example};
use crate::train::model::head::head_nll;
use crate::train::model::linear::Param;
use crate::train::model::Llama;
use crate::train::TrainError;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Score {
    /// Mean negative log-likelihood per scored token (nats).
    pub loss: f64,
    pub perplexity: f64,
    /// Fraction of examples whose greedy completion is exactly right; prompt/completion sets only.
    pub exact_match: Option<f64>,
    pub examples: usize,
}

/// Token ids, targets and weights of a batch as tensors on `dev`.
pub fn tensors(
    b: &Batch,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let inputs = Tensor::from_vec(b.inputs.clone(), (b.b, b.t), dev)?;
    let targets = Tensor::from_vec(b.targets.clone(), (b.b, b.t), dev)?;
    let weights = Tensor::from_vec(b.weights.clone(), (b.b, b.t), dev)?.to_dtype(dtype)?;
    Ok((inputs, targets, weights))
}

/// Negative log-likelihood of every target, `[b, t]`.
pub fn nll(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    crate::train::model::ops::nll(logits, targets)
}

/// The NLL and the greedy token at every scored position of `b` (weight above zero), in
/// row order; the head is applied to those positions only.
pub fn scored(model: &Llama, b: &Batch) -> Result<(Vec<f32>, Vec<u32>)> {
    let rows: Vec<u32> = (0..b.weights.len())
        .filter(|&i| b.weights[i] > 0.0)
        .map(|i| i as u32)
        .collect();
    if rows.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let run = || -> candle_core::Result<(Vec<f32>, Vec<u32>)> {
        let (x, _, _) = tensors(b, model.dtype, &model.device)?;
        let logits = model.logits_at(&x, &rows)?;
        let y: Vec<u32> = rows.iter().map(|&i| b.targets[i as usize]).collect();
        let y = Tensor::new(y.as_slice(), &model.device)?;
        let n = nll(&logits, &y)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let am = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        Ok((n, am))
    };
    run().map_err(TrainError::map)
}

/// Sum of the weighted NLL of a batch's scored tokens.
pub fn loss_sum(model: &Llama, b: &Batch, grad: bool) -> candle_core::Result<Tensor> {
    let (x, y, w) = tensors(b, model.dtype, &model.device)?;
    if model.device.is_cpu() && model.compute == model.dtype {
        // The head and the loss fused over chunks of rows: no whole logits.
        let h = model.rows(&x, grad)?;
        let sink = match model.head() {
            Param::Train(_, sink) => Some(sink),
            Param::Frozen(_) => None,
        };
        return head_nll(&h, model.head().tensor(), &y, &w, grad, sink);
    }
    let logits = model.forward(&x, grad)?;
    (nll(&logits, &y)? * &w)?.sum_all()
}

/// The training objective: weighted mean NLL over the scored tokens of all `batches` (one
/// per data source, so short examples are not padded to the longest of another source).
pub fn loss(model: &Llama, batches: &[Batch], grad: bool) -> candle_core::Result<Tensor> {
    let mut total: Option<Tensor> = None;
    let mut scored = 0usize;
    for b in batches {
        let l = loss_sum(model, b, grad)?;
        scored += b.scored();
        total = Some(match total {
            Some(t) => (t + l)?,
            None => l,
        });
    }
    match total {
        Some(t) => t / (scored.max(1) as f64),
        None => candle_core::bail!("loss of no batches"),
    }
}

/// One example's scored positions (weight above zero).
pub struct Scored {
    /// Their NLL, summed.
    pub nll: f64,
    pub tokens: usize,
    /// Whether the greedy token was the target at every one.
    pub right: bool,
}

/// Every example of `examples`, scored in batches of `batch` ([`scored`]).
pub fn score_each(
    model: &Llama,
    examples: &[Example],
    pad: u32,
    batch: usize,
) -> Result<Vec<Scored>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let b = Batch::new(&refs, pad);
        let (n, am) = scored(model, &b)?;
        let mut k = 0;
        for (r, e) in chunk.iter().enumerate() {
            let mut s = Scored {
                nll: 0.0,
                tokens: 0,
                right: true,
            };
            for (p, w) in e.weights.iter().enumerate() {
                if *w > 0.0 {
                    s.nll += n[k] as f64;
                    s.tokens += 1;
                    s.right &= am[k] == b.targets[r * b.t + p];
                    k += 1;
                }
            }
            out.push(s);
        }
    }
    Ok(out)
}

/// Scores `examples` in batches of `batch`.
pub fn score(model: &Llama, examples: &[Example], pad: u32, batch: usize) -> Result<Score> {
    let mut total = 0f64;
    let mut tokens = 0usize;
    let mut right = 0usize;
    let mut pairs = 0usize;
    for (e, s) in examples
        .iter()
        .zip(score_each(model, examples, pad, batch)?)
    {
        total += s.nll;
        tokens += s.tokens;
        if e.completion {
            pairs += 1;
            right += s.right as usize;
        }
    }
    let loss = total / tokens.max(1) as f64;
    Ok(Score {
        loss,
        perplexity: loss.exp(),
        exact_match: (pairs > 0).then(|| right as f64 / pairs as f64),
        examples: examples.len(),
    })
}
