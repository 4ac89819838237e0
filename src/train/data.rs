//! Training and evaluation data: JSONL files of `{"text": ...}` (language modelling, loss on
//! every token) or `{"prompt": ..., "completion": ...}` (loss on the completion and the end
//! token only), tokenised by bytes or by a `tokenizer.json`, and batched with padding.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Byte tokenizer ids: bytes are 0..=255, then these.
pub const BYTE_BOS: u32 = 256;
pub const BYTE_EOS: u32 = 257;
pub const BYTE_PAD: u32 = 258;

pub enum Tokenizer {
    /// One token per byte, plus BOS/EOS/PAD (vocabulary of at least 259).
    Bytes,
    /// A Hugging Face `tokenizer.json`, with BOS/EOS ids from the model's config.
    Hf {
        tok: Box<crate::tokenizer::HfTokenizer>,
        bos: Option<u32>,
        eos: u32,
        path: PathBuf,
    },
}

impl Tokenizer {
    pub fn from_file(path: &Path, bos: Option<u32>, eos: Option<u32>) -> Result<Tokenizer> {
        // The tokenizers 1.0 reader takes the canonical (version 2.0) form; files written by
        // earlier versions (every tokenizer.json on the Hub today) are converted in memory, and
        // byte-level vocabularies missing some byte tokens (SmolLM2's) are accepted.
        let tok = crate::tokenizer::load(path)?;
        // Hugging Face's `add_bos_token: false` (tokenizer_config.json next to the tokenizer)
        // means encodings do not start with BOS, whatever config.json's bos_token_id says.
        let cfg = path.with_file_name("tokenizer_config.json");
        let add_bos = std::fs::read(&cfg)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("add_bos_token").and_then(Value::as_bool));
        let bos = if add_bos == Some(false) { None } else { bos };
        let eos = eos.ok_or_else(|| {
            Error::input(
                path,
                "the model's config.json has no eos_token_id; training needs one",
            )
        })?;
        Ok(Tokenizer::Hf {
            tok: Box::new(tok),
            bos,
            eos,
            path: path.to_path_buf(),
        })
    }

    pub fn bos(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => Some(BYTE_BOS),
            Tokenizer::Hf { bos, .. } => *bos,
        }
    }

    pub fn eos(&self) -> u32 {
        match self {
            Tokenizer::Bytes => BYTE_EOS,
            Tokenizer::Hf { eos, .. } => *eos,
        }
    }

    pub fn pad(&self) -> u32 {
        match self {
            Tokenizer::Bytes => BYTE_PAD,
            Tokenizer::Hf { eos, .. } => *eos,
        }
    }

    /// The smallest vocabulary the tokenizer needs.
    pub fn min_vocab(&self) -> usize {
        match self {
            Tokenizer::Bytes => BYTE_PAD as usize + 1,
            Tokenizer::Hf { eos, bos, .. } => (*eos).max(bos.unwrap_or(0)) as usize + 1,
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf { tok, .. } => tok.encode(text),
        }
    }
}

/// One tokenised example: `tokens` (BOS, text or prompt + completion, EOS) and, per position
/// `p` of `tokens[1..]`, the weight of predicting it (0 on the prompt, 1 elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
    /// Whether this is a prompt/completion pair (scored by exact match).
    pub completion: bool,
}

/// The JSON objects of a JSONL file with their line numbers (blank lines skipped); a line that is
/// not a JSON object is an error naming it. Every data reader of the trainer starts here.
pub fn jsonl_objects(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let text = crate::io::input::read_text(path, crate::io::input::DATA)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| line_error(path, i + 1, format!("not valid JSON: {e}")))?;
        match v {
            Value::Object(obj) => out.push((i + 1, obj)),
            _ => return Err(line_error(path, i + 1, "expected a JSON object".into())),
        }
    }
    Ok(out)
}

/// An input error about line `ln` of `path`.
pub fn line_error(path: &Path, ln: usize, msg: String) -> Error {
    Error::input(path, format!("line {ln}: {msg}"))
}

/// Reads a JSONL file. Every line must be `{"text"}` or `{"prompt","completion"}`; errors name
/// the line. An example longer than `max_len` tokens (BOS and EOS included) is an error too.
pub fn read_jsonl(path: &Path, tok: &Tokenizer, max_len: usize) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (ln, obj) in jsonl_objects(path)? {
        let bad = |msg: String| line_error(path, ln, msg);
        let field = |k: &str| -> Result<Option<&str>> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(bad(format!("`{k}` must be a string"))),
            }
        };
        for k in obj.keys() {
            if !["text", "prompt", "completion"].contains(&k.as_str()) {
                return Err(bad(format!(
                    "unknown field `{k}` (expected `text`, or `prompt` and `completion`)"
                )));
            }
        }
        let mut tokens: Vec<u32> = tok.bos().into_iter().collect();
        let start = tokens.len();
        let completion = match (field("text")?, field("prompt")?, field("completion")?) {
            (Some(t), None, None) => {
                tokens.extend(tok.encode(t)?);
                false
            }
            (None, Some(p), Some(c)) => {
                tokens.extend(tok.encode(p)?);
                let plen = tokens.len();
                tokens.extend(tok.encode(c)?);
                tokens.push(tok.eos());
                let n = tokens.len();
                let weights = (1..n).map(|p| if p >= plen { 1.0 } else { 0.0 }).collect();
                check_len(n, max_len, &bad)?;
                out.push(Example {
                    tokens,
                    weights,
                    completion: true,
                });
                continue;
            }
            _ => {
                return Err(bad(
                    "expected either `text`, or both `prompt` and `completion`".into(),
                ))
            }
        };
        tokens.push(tok.eos());
        let n = tokens.len();
        check_len(n, max_len, &bad)?;
        if n < 2 || start >= n {
            return Err(bad("empty example".into()));
        }
        out.push(Example {
            weights: vec![1.0; n - 1],
            tokens,
            completion,
        });
    }
    if out.is_empty() {
        return Err(Error::input(path, "holds no examples"));
    }
    Ok(out)
}

fn check_len(n: usize, max_len: usize, bad: &dyn Fn(String) -> Error) -> Result<()> {
    if n > max_len {
        return Err(bad(format!(
            "example is {n} tokens long (with BOS/EOS), more than the sequence length {max_len}"
        )));
    }
    Ok(())
}

/// A padded batch: inputs `[b, t]`, targets `[b, t]`, weights `[b, t]` (0 on padding).
#[derive(Debug, Clone)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Batch {
    pub fn new(examples: &[&Example], pad: u32) -> Batch {
        let t = examples
            .iter()
            .map(|e| e.tokens.len() - 1)
            .max()
            .unwrap_or(1);
        let b = examples.len();
        let mut inputs = vec![pad; b * t];
        let mut targets = vec![pad; b * t];
        let mut weights = vec![0f32; b * t];
        for (r, e) in examples.iter().enumerate() {
            let n = e.tokens.len() - 1;
            inputs[r * t..r * t + n].copy_from_slice(&e.tokens[..n]);
            targets[r * t..r * t + n].copy_from_slice(&e.tokens[1..]);
            weights[r * t..r * t + n].copy_from_slice(&e.weights);
        }
        Batch {
            b,
            t,
            inputs,
            targets,
            weights,
        }
    }

    /// Tokens that carry loss.
    pub fn scored(&self) -> usize {
        self.weights.iter().filter(|w| **w > 0.0).count()
    }
}

/// Draws examples in a seeded shuffled order, reshuffling at each pass over the data.
pub struct Sampler {
    n: usize,
    key: u64,
    epoch: u64,
    order: Vec<usize>,
    pos: usize,
}

impl Sampler {
    pub fn new(n: usize, key: u64) -> Sampler {
        Sampler {
            n,
            key,
            epoch: 0,
            order: crate::rng::permutation(key, n),
            pos: 0,
        }
    }

    pub fn take(&mut self, k: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            if self.pos == self.n {
                self.epoch += 1;
                self.order =
                    crate::rng::permutation(crate::rng::draw(self.key, self.epoch), self.n);
                self.pos = 0;
            }
            out.push(self.order[self.pos]);
            self.pos += 1;
        }
        out
    }

    /// Passes over the data completed so far (fractional).
    pub fn epochs(&self) -> f64 {
        self.epoch as f64 + self.pos as f64 / self.n.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn jsonl_reads_text_and_pairs_and_names_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "a.jsonl",
            "{\"text\":\"ab\"}\n\n{\"prompt\":\"x=\",\"completion\":\"y\"}\n",
        );
        let ex = read_jsonl(&p, &Tokenizer::Bytes, 16).unwrap();
        assert_eq!(ex[0].tokens, vec![BYTE_BOS, 97, 98, BYTE_EOS]);
        assert_eq!(ex[0].weights, vec![1.0; 3]);
        assert_eq!(ex[1].tokens, vec![BYTE_BOS, 120, 61, 121, BYTE_EOS]);
        assert_eq!(ex[1].weights, vec![0.0, 0.0, 1.0, 1.0]);
        let bad = write(d.path(), "b.jsonl", "{\"text\":\"ab\"}\n{\"text\": oops}\n");
        let e = read_jsonl(&bad, &Tokenizer::Bytes, 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("not valid JSON"), "{e}");
        let long = write(d.path(), "c.jsonl", "{\"text\":\"abcdefgh\"}\n");
        let e = read_jsonl(&long, &Tokenizer::Bytes, 6)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("sequence length 6"),
            "{e}"
        );
        let odd = write(d.path(), "d.jsonl", "{\"prompt\":\"a\"}\n");
        assert!(read_jsonl(&odd, &Tokenizer::Bytes, 6).is_err());
    }

    #[test]
    fn batches_pad_and_sampler_cycles_deterministically() {
        let a = Example {
            tokens: vec![1, 2, 3],
            weights: vec![1.0, 1.0],
            completion: false,
        };
        let b = Example {
            tokens: vec![4, 5],
            weights: vec![1.0],
            completion: false,
        };
        let batch = Batch::new(&[&a, &b], 9);
        assert_eq!(batch.inputs, vec![1, 2, 4, 9]);
        assert_eq!(batch.targets, vec![2, 3, 5, 9]);
        assert_eq!(batch.weights, vec![1.0, 1.0, 1.0, 0.0]);
        let mut s = Sampler::new(3, 7);
        let first: Vec<usize> = s.take(6);
        let mut sorted = first[..3].to_vec();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
        let mut s2 = Sampler::new(3, 7);
        assert_eq!(s2.take(6), first);
    }
}

#[cfg(test)]
mod tokenizer_tests {
    use super::*;

    #[test]
    fn tokenizer_json_files_encode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokenizer.json");
        std::fs::write(
            &p,
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
               "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
               "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":1,"world":2},
               "unk_token":"[UNK]"}}"#,
        )
        .unwrap();
        let tok = Tokenizer::from_file(&p, Some(1), Some(2)).unwrap();
        assert_eq!(tok.encode("hello world zzz").unwrap(), vec![1, 2, 0]);
        assert_eq!((tok.bos(), tok.eos(), tok.min_vocab()), (Some(1), 2, 3));
        assert!(Tokenizer::from_file(&p, None, None).is_err());
    }
}
