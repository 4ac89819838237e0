//! `hft import` and `hft logits`: parse the dtype, call `crate::import`, summarise.

use crate::cli::{ImportArgs, LogitsArgs};
use crate::error::Result;
use crate::import::{self, ImportOptions};
use crate::io::dtype::parse_float;

pub fn import(a: &ImportArgs, quiet: bool) -> Result<String> {
    let o = ImportOptions {
        dtype: parse_float(&a.dtype)?,
        force: a.force,
        tokenizer: !a.no_tokenizer,
        quiet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let s = import::import(&a.gguf, &a.output, &o)?;
    let types: Vec<String> = s
        .source_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    Ok(format!(
        "imported {} -> {}: {} tensors ({}), {} parameters as {}, {} embeddings, {}; {:.1}s\n",
        a.gguf.display(),
        s.output.display(),
        s.tensors,
        types.join(", "),
        s.parameters,
        a.dtype.to_ascii_lowercase(),
        if s.tied { "tied" } else { "untied" },
        if s.tokenizer {
            "tokenizer.json written"
        } else {
            "no tokenizer"
        },
        s.seconds
    ))
}

pub fn logits(a: &LogitsArgs) -> Result<String> {
    let v = import::logits::dump(&a.model, &a.prompts, &a.output)?;
    Ok(serde_json::to_string_pretty(&v).expect("JSON") + "\n")
}
