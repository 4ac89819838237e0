//! Reading a Hugging Face `tokenizer.json`, shared by training (`hft run` data) and import
//! (checking a written tokenizer). Building one from a GGUF vocabulary is the importer's own
//! business (`import::tokenizer`).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};

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

/// A `tokenizer.json` as `hft` encodes with it.
pub struct HfTokenizer {
    pub tok: tokenizers::pipeline::PipelineTokenizer,
    pub path: PathBuf,
    /// Ids at or above this were added by [`load`] for byte atoms the vocabulary lacks; they
    /// are dropped from encodings, as Hugging Face's BPE drops characters it has no token for.
    pub limit: Option<u32>,
}

/// Reads a `tokenizer.json` in either layout. `hft`'s `tokenizers` reads only the canonical
/// `2.0` layout, while transformers writes (and this import writes) `1.0`, so a `1.0` file is
/// converted in memory by the crate's own upgrade pass.
///
/// That reader also refuses a byte-level vocabulary without a token for every byte, and real
/// ones lack a few (SmolLM2 has none for 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2): such
/// atoms get ids past the vocabulary here, and [`HfTokenizer::encode`] drops them, which is what
/// the original tokenizer does with those bytes.
pub fn load(path: &Path) -> Result<HfTokenizer> {
    let text = crate::io::input::read_text(path, crate::io::input::SMALL)?;
    let bad = |m: String| Error::input(path, m);
    let canonical = if text.contains("\"version\": \"2.0\"") || text.contains("\"version\":\"2.0\"")
    {
        text
    } else {
        tokenizers::canonicalize_str(&text)
            .map_err(|e| bad(format!("cannot convert the tokenizer: {e}")))?
    };
    let mut doc: serde_json::Value =
        serde_json::from_str(&canonical).map_err(|e| bad(format!("not JSON: {e}")))?;
    let mut limit = None;
    let model = &mut doc["model"];
    if model["type"] == "BPE" && model["byte_level"] == true {
        if let Some(vocab) = model["vocab"].as_object_mut() {
            // Past the largest id in use (not the count: a vocabulary may have gaps).
            let n = vocab
                .values()
                .filter_map(|v| v.as_u64())
                .max()
                .map_or(0, |m| m as u32 + 1);
            let mut next = n;
            for c in byte_chars() {
                let k = c.to_string();
                if !vocab.contains_key(&k) {
                    vocab.insert(k, json!(next));
                    next += 1;
                }
            }
            if next > n {
                limit = Some(n);
            }
        }
    }
    let canonical = serde_json::to_string(&doc).expect("JSON");
    let tok = tokenizers::from_json(&canonical)
        .map_err(|e| bad(format!("not a usable tokenizer.json: {e}")))?;
    Ok(HfTokenizer {
        tok,
        path: path.to_path_buf(),
        limit,
    })
}

impl HfTokenizer {
    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let opts = tokenizers::pipeline::EncodeOptions {
            add_special_tokens: false,
            ..Default::default()
        };
        let enc = self
            .tok
            .encode(text, &opts)
            .wait()
            .map_err(|e| Error::input(&self.path, format!("cannot encode: {e}")))?;
        let ids = enc
            .first()
            .map(|e| tokenizers::pipeline::PipelineToken::cast_slice(e.ids()).to_vec())
            .unwrap_or_default();
        Ok(match self.limit {
            Some(l) => ids.into_iter().filter(|&i| i < l).collect(),
            None => ids,
        })
    }
}
