//! Direct Preference Optimisation (Rafailov et al., 2023), the `dpo` stage kind.
//!
//! Data: JSONL lines `{"prompt", "chosen", "rejected"}`. Each side is tokenised like a
//! prompt/completion example (BOS, prompt, completion, EOS; the completion and EOS carry
//! weight), and its score is the *summed* log-probability of those tokens.
//!
//! Loss, per pair: `-log σ(β · ((π_c − ref_c) − (π_r − ref_r)))`, averaged over the batch,
//! where π are the policy's and ref the reference model's summed log-probabilities. The
//! reference is the stage's starting weights, which never change during the stage, so its
//! log-probabilities are computed once, before the first step, for the pairs the stage will
//! draw ([`Reference::fill`], called by the stage loop): no second copy of the model is held,
//! and the cost per step is that of the policy alone.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::train::data::{jsonl_objects, line_error, Batch, Example, Tokenizer};
use crate::train::eval;
use crate::train::model::Llama;
use crate::train::TrainError;

/// One preference pair, tokenised.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub chosen: Example,
    pub rejected: Example,
}

fn side(prompt: &[u32], completion: Vec<u32>, tok: &Tokenizer) -> Example {
    let mut tokens = prompt.to_vec();
    let plen = tokens.len();
    tokens.extend(completion);
    tokens.push(tok.eos());
    let n = tokens.len();
    Example {
        weights: (1..n).map(|p| if p >= plen { 1.0 } else { 0.0 }).collect(),
        tokens,
        completion: true,
    }
}

/// Reads preference pairs; errors name the line.
pub fn read_pairs(path: &Path, tok: &Tokenizer, max_len: usize) -> Result<Vec<Pair>> {
    let mut out = Vec::new();
    for (ln, obj) in jsonl_objects(path)? {
        let bad = |msg: String| line_error(path, ln, msg);
        for k in obj.keys() {
            if !["prompt", "chosen", "rejected"].contains(&k.as_str()) {
                return Err(bad(format!(
                    "unknown field `{k}` (a preference pair has `prompt`, `chosen`, `rejected`)"
                )));
            }
        }
        let field = |k: &str| match obj.get(k) {
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(bad(format!("`{k}` must be a string"))),
            None => Err(bad(format!(
                "missing `{k}` (a preference pair has `prompt`, `chosen`, `rejected`)"
            ))),
        };
        let (p, c, r) = (field("prompt")?, field("chosen")?, field("rejected")?);
        if c == r {
            return Err(bad("`chosen` and `rejected` are the same text".into()));
        }
        let mut prompt: Vec<u32> = tok.bos().into_iter().collect();
        prompt.extend(tok.encode(p)?);
        let pair = Pair {
            chosen: side(&prompt, tok.encode(c)?, tok),
            rejected: side(&prompt, tok.encode(r)?, tok),
        };
        let n = pair.chosen.tokens.len().max(pair.rejected.tokens.len());
        if n > max_len {
            return Err(bad(format!(
                "pair is {n} tokens long (with BOS/EOS), more than the sequence length {max_len}"
            )));
        }
        out.push(pair);
    }
    if out.is_empty() {
        return Err(Error::input(path, "holds no preference pairs"));
    }
    Ok(out)
}

/// Summed log-probability of the weighted (completion) tokens of each example, `[n]`.
pub fn logps(
    model: &Llama,
    examples: &[&Example],
    pad: u32,
    grad: bool,
) -> candle_core::Result<Tensor> {
    let b = Batch::new(examples, pad);
    let (x, y, w) = eval::tensors(&b, model.dtype, &model.device)?;
    let logits = model.forward(&x, grad)?;
    (eval::nll(&logits, &y)? * w)?.sum(1)?.neg()
}

/// `log(1 + e^x)`, written with ops that all have a backward and never overflow.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let tail = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    x.relu()? + tail
}

/// The DPO loss (mean over pairs) and each pair's implicit reward margin
/// `β((π_c − ref_c) − (π_r − ref_r))`, from summed log-probabilities `[n]` each.
pub fn loss_from_logps(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    beta: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let margin = (((policy_chosen - ref_chosen)? - (policy_rejected - ref_rejected)?)? * beta)?;
    let loss = softplus(&margin.neg()?)?.mean_all()?;
    Ok((loss, margin))
}

/// The reference model's summed log-probabilities, chosen and rejected, one per pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub chosen: Vec<f64>,
    pub rejected: Vec<f64>,
}

fn to_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.to_vec1::<f64>()
}

impl Reference {
    /// No pair scored yet (NaN marks an unscored pair; using one is an error).
    pub fn unscored(n: usize) -> Reference {
        Reference {
            chosen: vec![f64::NAN; n],
            rejected: vec![f64::NAN; n],
        }
    }

    /// Scores the pairs `idx` under `model` (the stage's starting weights), no gradients.
    pub fn fill(
        &mut self,
        model: &Llama,
        pairs: &[Pair],
        idx: &[usize],
        pad: u32,
        batch: usize,
    ) -> Result<()> {
        for chunk in idx.chunks(batch.max(1)) {
            let run = || -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
                let c: Vec<&Example> = chunk.iter().map(|&i| &pairs[i].chosen).collect();
                let r: Vec<&Example> = chunk.iter().map(|&i| &pairs[i].rejected).collect();
                Ok((
                    to_f64(&logps(model, &c, pad, false)?)?,
                    to_f64(&logps(model, &r, pad, false)?)?,
                ))
            };
            let (c, r) = run().map_err(TrainError::map)?;
            for (j, &i) in chunk.iter().enumerate() {
                self.chosen[i] = c[j];
                self.rejected[i] = r[j];
            }
        }
        Ok(())
    }
}

/// Scores every pair under `model` (the stage's starting weights) without gradients.
pub fn reference(model: &Llama, pairs: &[Pair], pad: u32, batch: usize) -> Result<Reference> {
    let mut r = Reference::unscored(pairs.len());
    let all: Vec<usize> = (0..pairs.len()).collect();
    r.fill(model, pairs, &all, pad, batch)?;
    Ok(r)
}

/// The DPO loss of the pairs `idx` (chosen and rejected sides in one forward pass).
pub fn batch_loss(
    model: &Llama,
    pairs: &[Pair],
    refs: &Reference,
    idx: &[usize],
    beta: f64,
    pad: u32,
    grad: bool,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = idx.len();
    let mut ex: Vec<&Example> = idx.iter().map(|&i| &pairs[i].chosen).collect();
    ex.extend(idx.iter().map(|&i| &pairs[i].rejected));
    let lp = logps(model, &ex, pad, grad)?;
    let dev = &model.device;
    if let Some(&i) = idx
        .iter()
        .find(|&&i| refs.chosen[i].is_nan() || refs.rejected[i].is_nan())
    {
        candle_core::bail!("dpo: pair {i} has no reference score");
    }
    let pick = |v: &[f64]| {
        Tensor::from_vec(idx.iter().map(|&i| v[i]).collect::<Vec<f64>>(), n, dev)?
            .to_dtype(model.dtype)
    };
    loss_from_logps(
        &lp.narrow(0, 0, n)?,
        &lp.narrow(0, n, n)?,
        &pick(&refs.chosen)?,
        &pick(&refs.rejected)?,
        beta,
    )
}

/// How a model does on preference pairs relative to a reference.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PrefScore {
    /// Mean DPO loss (ln 2 when the model equals the reference).
    pub loss: f64,
    /// Fraction of pairs whose implicit reward prefers the chosen side.
    pub reward_accuracy: f64,
    /// Mean implicit reward margin.
    pub margin: f64,
    pub pairs: usize,
}

/// Scores all pairs, in batches, without gradients.
pub fn score(
    model: &Llama,
    pairs: &[Pair],
    refs: &Reference,
    beta: f64,
    pad: u32,
    batch: usize,
) -> Result<PrefScore> {
    let (mut loss, mut right, mut margin) = (0f64, 0usize, 0f64);
    let idx: Vec<usize> = (0..pairs.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (l, m) = batch_loss(model, pairs, refs, chunk, beta, pad, false)
            .and_then(|(l, m)| Ok((l.to_dtype(DType::F64)?.to_scalar::<f64>()?, to_f64(&m)?)))
            .map_err(TrainError::map)?;
        loss += l * chunk.len() as f64;
        right += m.iter().filter(|x| **x > 0.0).count();
        margin += m.iter().sum::<f64>();
    }
    let n = pairs.len().max(1) as f64;
    Ok(PrefScore {
        loss: loss / n,
        reward_accuracy: right as f64 / n,
        margin: margin / n,
        pairs: pairs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
    }

    /// Worked by hand: margins β((−1+2) − (−3+2)) = 0.5·2 = 1 and 0.5·((−4+2) − (−1+2)) = −1.5;
    /// loss = (ln(1+e^−1) + ln(1+e^1.5)) / 2 = (0.313262 + 1.701413) / 2.
    #[test]
    fn loss_matches_hand_computation() {
        let (loss, margin) = loss_from_logps(
            &t(&[-1.0, -4.0]),
            &t(&[-3.0, -1.0]),
            &t(&[-2.0, -2.0]),
            &t(&[-2.0, -2.0]),
            0.5,
        )
        .unwrap();
        let m = margin.to_vec1::<f64>().unwrap();
        assert!(
            (m[0] - 1.0).abs() < 1e-12 && (m[1] + 1.5).abs() < 1e-12,
            "{m:?}"
        );
        let want = ((1.0 + (-1.0f64).exp()).ln() + (1.0 + 1.5f64.exp()).ln()) / 2.0;
        let got = loss.to_scalar::<f64>().unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!((want - 1.0073375).abs() < 1e-6);
    }

    /// softplus is exact far out in both directions (no overflow, no cancellation to 0).
    #[test]
    fn softplus_is_stable() {
        let v = softplus(&t(&[-800.0, 0.0, 800.0]))
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(v[0] >= 0.0 && v[0] < 1e-300);
        assert!((v[1] - 2f64.ln()).abs() < 1e-15);
        assert!((v[2] - 800.0).abs() < 1e-12);
    }

    /// The gradient of the loss with respect to the policy's chosen log-probability is
    /// −β·σ(−margin)/n, the DPO paper's weighting.
    #[test]
    fn gradient_matches_closed_form() {
        let pc = candle_core::Var::from_tensor(&t(&[-1.0, -4.0])).unwrap();
        let (loss, margin) = loss_from_logps(
            pc.as_tensor(),
            &t(&[-3.0, -1.0]),
            &t(&[-2.0, -2.0]),
            &t(&[-2.0, -2.0]),
            0.5,
        )
        .unwrap();
        let g = loss.backward().unwrap();
        let g = g.get(pc.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        let m = margin.to_vec1::<f64>().unwrap();
        for k in 0..2 {
            let want = -0.5 / (1.0 + m[k].exp()) / 2.0;
            assert!((g[k] - want).abs() < 1e-12, "{} vs {want}", g[k]);
        }
    }

    use crate::io::Checkpoint;
    use crate::train::data::Tokenizer;
    use crate::train::objective::{Objective, StageData};
    use crate::train::recipe::Recipe;
    use crate::train::stage::train_stage;
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
    }

    /// Preference pairs from the bundled skills eval set: the right completion against the
    /// next line's (a wrong answer to this prompt).
    fn skill_pairs(dir: &Path, n: usize) -> PathBuf {
        let text = std::fs::read_to_string(root().join("recipes/data/skills-eval.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut out = String::new();
        for i in 0..n {
            let (a, b) = (&rows[i], &rows[(i + 1) % rows.len()]);
            if a["completion"] == b["completion"] {
                continue;
            }
            let line = serde_json::json!({"prompt": a["prompt"], "chosen": a["completion"], "rejected": b["completion"]});
            out.push_str(&format!("{line}\n"));
        }
        let p = dir.join("pairs.jsonl");
        std::fs::write(&p, out).unwrap();
        p
    }

    fn tiny() -> Llama {
        let ck = Checkpoint::open(root().join("fixtures/tiny-llama")).unwrap();
        Llama::load(&ck, None, DType::F64, &Device::Cpu).unwrap()
    }

    /// A sequence's score is the sum of log-softmax at its completion positions (EOS
    /// included), checked against a direct computation from the logits.
    #[test]
    fn logps_sum_completion_log_probabilities() {
        let d = tempfile::tempdir().unwrap();
        let pairs = read_pairs(&skill_pairs(d.path(), 4), &Tokenizer::Bytes, 64).unwrap();
        let model = tiny();
        let e = &pairs[0].chosen;
        let got = logps(&model, &[e], 258, false)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[0];
        let x = Tensor::from_vec(e.tokens.clone(), (1, e.tokens.len()), &Device::Cpu).unwrap();
        let lp = candle_nn::ops::log_softmax(&model.forward(&x, false).unwrap(), 2).unwrap();
        let lp: Vec<Vec<f64>> = lp.squeeze(0).unwrap().to_vec2().unwrap();
        let mut want = 0.0;
        for (p, w) in e.weights.iter().enumerate() {
            if *w > 0.0 {
                want += lp[p][e.tokens[p + 1] as usize];
            }
        }
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // The completion and EOS are scored, the prompt and BOS are not.
        let scored = e.weights.iter().filter(|w| **w > 0.0).count();
        assert_eq!(scored, "vnuxgbx".len() + 1);
    }

    #[test]
    fn loss_is_ln2_at_the_reference_and_falls_with_training() {
        let d = tempfile::tempdir().unwrap();
        let pairs_path = skill_pairs(d.path(), 48);
        let recipe_path = d.path().join("r.yaml");
        let model_dir = root().join("fixtures/tiny-llama");
        std::fs::write(
            &recipe_path,
            format!(
                "model: {}\noutput: out\nstages:\n  - name: prefer\n    kind: dpo\n    beta: 0.5\n    \
                 steps: 12\n    log_every: 1\n    lr: 1.0e-3\n    seq_len: 64\n    plan: {{strategy: category, seed: 1}}\n    \
                 data: [{{path: {}, batch: 8}}]\n",
                model_dir.display(),
                pairs_path.display()
            ),
        )
        .unwrap();
        let recipe = Recipe::read(&recipe_path).unwrap();
        let spec = recipe.stage(0);
        assert_eq!(spec.beta, 0.5);
        let data = StageData::read(&spec, &Tokenizer::Bytes, 64).unwrap();
        let ck = Checkpoint::open(&model_dir).unwrap();
        let start = Llama::load(&ck, None, DType::F32, &Device::Cpu).unwrap();
        let pairs = match &data {
            StageData::Dpo(p) => &p[0],
            _ => panic!("a dpo stage"),
        };
        let refs = reference(&start, pairs, 258, 16).unwrap();
        let before = score(&start, pairs, &refs, 0.5, 258, 16).unwrap();
        assert!((before.loss - 2f64.ln()).abs() < 1e-6, "{before:?}");
        assert!(before.margin.abs() < 1e-6);
        let mut objective = Objective::new(&data, &spec);
        let t = train_stage(
            start,
            None,
            &spec,
            &mut objective,
            258,
            0,
            crate::train::stage::Log::Quiet,
            &crate::progress::Silent,
        )
        .unwrap();
        // The stage scored the pairs it drew, with the starting weights: the same reference.
        let Objective::Dpo { refs: used, .. } = &objective else {
            panic!("a dpo objective")
        };
        let drawn: Vec<usize> = (0..pairs.len())
            .filter(|&i| !used[0].chosen[i].is_nan())
            .collect();
        assert!(!drawn.is_empty());
        for &i in &drawn {
            assert!((used[0].chosen[i] - refs.chosen[i]).abs() < 1e-4);
            assert!((used[0].rejected[i] - refs.rejected[i]).abs() < 1e-4);
        }
        let after = score(&t.model, pairs, &refs, 0.5, 258, 16).unwrap();
        assert!(after.loss < before.loss - 0.05, "{before:?} -> {after:?}");
        assert!(after.reward_accuracy > 0.6, "{after:?}");
        // The first step's loss is the reference's, ln 2; the last steps' are well below.
        let first = t.curve[0].1;
        assert!((first - 2f64.ln()).abs() < 1e-5, "first step loss {first}");
        let tail: f64 = t.curve[8..].iter().map(|c| c.1).sum::<f64>() / 4.0;
        assert!(tail < first - 0.1, "training loss {first} -> {tail}");
    }

    #[test]
    fn recipe_kinds_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let pairs = skill_pairs(d.path(), 4);
        let model = root().join("fixtures/tiny-llama");
        let recipe = |stage_extra: &str, eval_extra: &str| {
            format!(
                "model: {}\noutput: out\neval:\n  - {{name: f, path: {}{eval_extra}}}\nstages:\n  - name: s\n    \
                 steps: 1\n{stage_extra}    data: [{{path: {}, batch: 1}}]\n",
                model.display(),
                root().join("recipes/data/facts.jsonl").display(),
                pairs.display()
            )
        };
        let p = d.path().join("r.yaml");
        let ok = Recipe::parse(&recipe("    kind: dpo\n", ", kind: retention"), &p).unwrap();
        assert_eq!(ok.stages[0].kind, crate::train::recipe::StageKind::Dpo);
        assert_eq!(ok.stage(0).beta, crate::defaults::stage::BETA);
        assert_eq!(ok.eval[0].kind, crate::train::recipe::EvalKind::Retention);
        for (stage, eval, says) in [
            ("    beta: 0.2\n", "", "`beta` needs `kind: dpo`"),
            ("    kind: dpo\n    beta: -1\n", "", "beta must be positive"),
            ("    kind: ppo\n", "", "ppo"),
            ("", ", kind: memory", "memory"),
        ] {
            let e = Recipe::parse(&recipe(stage, eval), &p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("r.yaml"), "{e}");
        }
        // A dpo stage given prompt/completion data says what it expects, with the line.
        let lm = root().join("recipes/data/skills-eval.jsonl");
        let e = read_pairs(&lm, &Tokenizer::Bytes, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("chosen"), "{e}");
    }
}
