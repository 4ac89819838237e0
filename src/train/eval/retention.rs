//! Knowledge retention: how much of what the starting model knew survives training, the
//! paper's closed-book knowledge measure made small.
//!
//! A retention set is JSONL `{"prompt", "completion"}` of short factual statements whose
//! completion is the answer (`"The capital of France is"` -> `" Paris"`). Unlike a task set,
//! nothing is expected after the answer: a pretrained model continues the sentence, it does
//! not stop, so requiring EOS (as task exact match does) would score it zero. Per fact:
//! - exact match: greedy decoding from the prompt produces the answer's tokens (checked in one
//!   teacher-forced pass: the argmax at every answer position is the answer's next token);
//! - the answer's log-probability (summed over its tokens).
//!
//! The figures land in the same [`Score`] as every eval set, so the R matrix, OP and BWT cover
//! retention too: `exact_match` as above and `loss` the mean negative log-probability per answer
//! token. `answer_logprob` (per fact) is reported alongside.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::train::data::{jsonl_objects, line_error, Example, Tokenizer};
use crate::train::eval::{self, Score};
use crate::train::model::Llama;

/// Reads a retention set: examples whose weights cover the answer tokens only (no EOS).
pub fn read_facts(path: &Path, tok: &Tokenizer, max_len: usize) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (ln, v) in jsonl_objects(path)? {
        let bad = |msg: String| line_error(path, ln, msg);
        let field = |k: &str| match v.get(k) {
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => Err(bad(format!(
                "a retention fact needs string fields `prompt` and `completion` (missing `{k}`)"
            ))),
        };
        if let Some(k) = v.keys().find(|k| *k != "prompt" && *k != "completion") {
            return Err(bad(format!("unknown field `{k}`")));
        }
        let (p, c) = (field("prompt")?, field("completion")?);
        let mut tokens: Vec<u32> = tok.bos().into_iter().collect();
        tokens.extend(tok.encode(p)?);
        let plen = tokens.len();
        let answer = tok.encode(c)?;
        if answer.is_empty() || plen == 0 {
            return Err(bad("empty prompt or answer".into()));
        }
        tokens.extend(answer);
        let n = tokens.len();
        if n > max_len {
            return Err(bad(format!("fact is {n} tokens, more than {max_len}")));
        }
        out.push(Example {
            weights: (1..n).map(|q| if q >= plen { 1.0 } else { 0.0 }).collect(),
            tokens,
            completion: true,
        });
    }
    if out.is_empty() {
        return Err(Error::input(path, "holds no facts"));
    }
    Ok(out)
}

/// Retention figures of one set.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Retention {
    /// Fraction of facts whose greedy completion starts with the answer.
    pub exact_match: f64,
    /// Mean over facts of the answer's summed log-probability (nats).
    pub answer_logprob: f64,
    /// Mean negative log-probability per answer token.
    pub loss: f64,
    pub facts: usize,
}

impl Retention {
    pub fn score(&self) -> Score {
        Score {
            loss: self.loss,
            perplexity: self.loss.exp(),
            exact_match: Some(self.exact_match),
            examples: self.facts,
        }
    }
}

/// Scores `facts` (from [`read_facts`]) in batches of `batch`.
pub fn score(model: &Llama, facts: &[Example], pad: u32, batch: usize) -> Result<Retention> {
    let (mut right, mut logprob, mut nll_sum, mut tokens) = (0usize, 0f64, 0f64, 0usize);
    for s in eval::score_each(model, facts, pad, batch)? {
        right += s.right as usize;
        logprob -= s.nll;
        nll_sum += s.nll;
        tokens += s.tokens;
    }
    let f = facts.len().max(1) as f64;
    Ok(Retention {
        exact_match: right as f64 / f,
        answer_logprob: logprob / f,
        loss: nll_sum / tokens.max(1) as f64,
        facts: facts.len(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::io::Checkpoint;

    fn tiny() -> Llama {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ck = Checkpoint::open(root.join("fixtures/tiny-llama")).unwrap();
        Llama::load(&ck, None, DType::F64, &Device::Cpu).unwrap()
    }

    /// Greedy decoding, one token at a time: the reference the one-pass score must equal.
    fn greedy(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut t = prompt.to_vec();
        for _ in 0..n {
            let x = Tensor::from_vec(t.clone(), (1, t.len()), &Device::Cpu).unwrap();
            let l = model.forward(&x, false).unwrap();
            let last = l.squeeze(0).unwrap().get(t.len() - 1).unwrap();
            t.push(last.argmax(0).unwrap().to_scalar::<u32>().unwrap());
        }
        t[prompt.len()..].to_vec()
    }

    #[test]
    fn scores_match_greedy_decoding_and_log_probabilities() {
        let d = tempfile::tempdir().unwrap();
        let model = tiny();
        let tok = Tokenizer::Bytes;
        let p = d.path().join("facts.jsonl");
        std::fs::write(&p, "{\"prompt\": \"y:abc=\", \"completion\": \"abc\"}\n").unwrap();
        let read = read_facts(&p, &tok, 64).unwrap();
        // BOS, prompt and answer; the answer is scored, not the prompt and not an EOS.
        assert_eq!(read[0].tokens.len(), 1 + 6 + 3);
        assert_eq!(read[0].weights.iter().filter(|w| **w > 0.0).count(), 3);
        // The fixture model is untrained, so right answers are made from its own greedy
        // continuations; the third has its last token changed, so it is wrong.
        let mut facts = Vec::new();
        let mut want = Vec::new();
        for (k, (prompt, n)) in [("u:dog=", 2), ("l:tree=", 3), ("y:xy=", 2)]
            .iter()
            .enumerate()
        {
            let mut t: Vec<u32> = tok.bos().into_iter().collect();
            t.extend(tok.encode(prompt).unwrap());
            let plen = t.len();
            let mut answer = greedy(&model, &t, *n);
            if k == 2 {
                answer[1] = (answer[1] + 1) % 256;
            }
            want.push(greedy(&model, &t, *n) == answer);
            t.extend(answer);
            let len = t.len();
            facts.push(Example {
                weights: (1..len)
                    .map(|q| if q >= plen { 1.0 } else { 0.0 })
                    .collect(),
                tokens: t,
                completion: true,
            });
        }
        want.push(greedy(&model, &read[0].tokens[..7], 3) == read[0].tokens[7..]);
        facts.push(read[0].clone());
        assert_eq!(&want[..3], &[true, true, false]);
        let r = score(&model, &facts, 258, 3).unwrap();
        let em = want.iter().filter(|w| **w).count() as f64 / 4.0;
        assert_eq!(r.exact_match, em, "greedy says {want:?}");
        // Log-probability of each answer, from the logits directly.
        let mut total = 0.0;
        let mut toks = 0;
        for e in &facts {
            let x = Tensor::from_vec(e.tokens.clone(), (1, e.tokens.len()), &Device::Cpu).unwrap();
            let lp = candle_nn::ops::log_softmax(&model.forward(&x, false).unwrap(), 2).unwrap();
            let lp: Vec<Vec<f64>> = lp.squeeze(0).unwrap().to_vec2().unwrap();
            for (q, w) in e.weights.iter().enumerate() {
                if *w > 0.0 {
                    total += lp[q][e.tokens[q + 1] as usize];
                    toks += 1;
                }
            }
        }
        assert!(
            (r.answer_logprob - total / 4.0).abs() < 1e-4,
            "{} vs {}",
            r.answer_logprob,
            total / 4.0
        );
        assert!((r.loss + total / toks as f64).abs() < 1e-5);
        let s = r.score();
        assert_eq!((s.exact_match, s.examples), (Some(em), 4));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n",
        )
        .unwrap();
        let e = read_facts(&p, &Tokenizer::Bytes, 64)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.jsonl") && e.contains("line 2") && e.contains("completion"),
            "{e}"
        );
    }
}
