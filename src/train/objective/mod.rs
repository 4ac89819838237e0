//! What a stage minimises: language modelling (SFT) over examples, or DPO over preference
//! pairs against the stage's starting weights ([`dpo`]).

pub mod dpo;

use candle_core::Tensor;

use crate::error::Result;
use crate::train::data::{read_jsonl, Batch, Example, Tokenizer};
use crate::train::eval;
use crate::train::model::Llama;
use crate::train::recipe::{StageKind, StageSpec};
use dpo::{Pair, Reference};

/// The data of one stage, per source.
pub enum StageData {
    /// Language modelling / SFT examples.
    Lm(Vec<Vec<Example>>),
    /// DPO preference pairs.
    Dpo(Vec<Vec<Pair>>),
}

impl StageData {
    /// Reads every source of `spec` in the form its kind needs.
    pub fn read(spec: &StageSpec, tok: &Tokenizer, max_len: usize) -> Result<StageData> {
        Ok(match spec.kind {
            StageKind::Lm => StageData::Lm(
                spec.data
                    .iter()
                    .map(|s| read_jsonl(&s.path, tok, max_len))
                    .collect::<Result<_>>()?,
            ),
            StageKind::Dpo => StageData::Dpo(
                spec.data
                    .iter()
                    .map(|s| dpo::read_pairs(&s.path, tok, max_len))
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

/// What a stage minimises, over examples drawn per source.
pub enum Objective<'a> {
    /// Mean NLL of the scored tokens.
    Lm(&'a [Vec<Example>]),
    /// The DPO loss against the reference log-probabilities (per source) of the stage's
    /// starting weights, filled by [`Objective::prepare`] for the pairs the stage draws.
    Dpo {
        pairs: &'a [Vec<Pair>],
        refs: Vec<Reference>,
        beta: f64,
    },
}

impl<'a> Objective<'a> {
    pub fn new(data: &'a StageData, spec: &StageSpec) -> Self {
        match data {
            StageData::Lm(s) => Objective::Lm(s),
            StageData::Dpo(pairs) => Objective::Dpo {
                refs: pairs.iter().map(|p| Reference::unscored(p.len())).collect(),
                pairs,
                beta: spec.beta,
            },
        }
    }

    /// Before the first step: for DPO, scores the pairs that `draws` (every micro-batch's
    /// picks, per source) will use under `model`, the stage's starting weights, as the frozen
    /// reference. Only drawn pairs are scored, so a short stage on a large set costs little.
    pub(crate) fn prepare(
        &mut self,
        model: &Llama,
        draws: &[Vec<Vec<usize>>],
        pad: u32,
    ) -> Result<()> {
        if let Objective::Dpo { pairs, refs, .. } = self {
            for (k, r) in refs.iter_mut().enumerate() {
                let mut used: Vec<usize> =
                    draws.iter().flat_map(|d| d[k].iter().copied()).collect();
                used.sort_unstable();
                used.dedup();
                r.fill(model, &pairs[k], &used, pad, 16)?;
            }
        }
        Ok(())
    }

    pub(crate) fn lens(&self) -> Vec<usize> {
        match self {
            Objective::Lm(s) => s.iter().map(Vec::len).collect(),
            Objective::Dpo { pairs, .. } => pairs.iter().map(Vec::len).collect(),
        }
    }

    /// Tokens the picked examples feed through the model.
    pub(crate) fn tokens(&self, picks: &[Vec<usize>]) -> u64 {
        let n = |e: &Example| e.tokens.len() as u64 - 1;
        picks
            .iter()
            .enumerate()
            .map(|(k, idx)| match self {
                Objective::Lm(s) => idx.iter().map(|&i| n(&s[k][i])).sum::<u64>(),
                Objective::Dpo { pairs, .. } => idx
                    .iter()
                    .map(|&i| n(&pairs[k][i].chosen) + n(&pairs[k][i].rejected))
                    .sum(),
            })
            .sum()
    }

    /// The loss of the picked examples (the mean over sources for DPO).
    pub(crate) fn loss(
        &self,
        model: &Llama,
        picks: &[Vec<usize>],
        pad: u32,
    ) -> candle_core::Result<Tensor> {
        match self {
            Objective::Lm(s) => {
                let batches: Vec<Batch> = picks
                    .iter()
                    .enumerate()
                    .map(|(k, idx)| {
                        let picked: Vec<&Example> = idx.iter().map(|&i| &s[k][i]).collect();
                        Batch::new(&picked, pad)
                    })
                    .collect();
                eval::loss(model, &batches, true)
            }
            Objective::Dpo { pairs, refs, beta } => {
                let mut total: Option<Tensor> = None;
                for (k, idx) in picks.iter().enumerate() {
                    let (l, _) =
                        dpo::batch_loss(model, &pairs[k], &refs[k], idx, *beta, pad, true)?;
                    total = Some(match total {
                        Some(t) => (t + l)?,
                        None => l,
                    });
                }
                match total {
                    Some(t) => t / picks.len() as f64,
                    None => candle_core::bail!("loss of no batches"),
                }
            }
        }
    }
}
