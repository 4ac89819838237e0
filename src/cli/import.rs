//! `hft import` (and the hidden `hft logits`): GGUF to a Hugging Face checkpoint.

use std::path::PathBuf;

use clap::Args;

use hft::error::Result;
use hft::import::{self, ImportOptions};
use hft::io::dtype::parse_float;
use hft::progress::Sink;
use hft::train;

/// Convert a llama.cpp GGUF model (llama architecture: Llama, SmolLM, TinyLlama) into a Hugging
/// Face checkpoint directory that `hft run`, `hft diff` and transformers load.
///
/// Weights are dequantised (F32, F16, BF16, Q4_0..Q8_0 and the K-quants) and written tensor by
/// tensor with Hugging Face names; llama.cpp's rotary row permutation of Q and K is undone. The
/// output gets config.json, generation_config.json, and a tokenizer.json built from the GGUF
/// vocabulary (with tokenizer_config.json holding the chat template). See docs/import.md.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft import SmolLM2-135M-Instruct.Q4_1.gguf -o models/smollm2-135m\n  \
    hft import model.gguf -o out/ --dtype bf16 --force")]
pub struct ImportArgs {
    /// The .gguf file.
    pub gguf: PathBuf,
    /// Output directory.
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Element type of the written weights: f32 keeps the dequantised values exactly; bf16 or
    /// f16 halve the size.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Replace an existing non-empty output.
    #[arg(long)]
    pub force: bool,
    /// Write weights and configs only (for GGUFs whose tokenizer cannot be converted).
    #[arg(long)]
    pub no_tokenizer: bool,
}

/// Write hft's logits on prompts to a safetensors file (tokens.I, logits.I), for comparing the
/// forward pass against another implementation (scripts/compare_transformers.py).
#[derive(Debug, Args)]
pub struct LogitsArgs {
    /// A checkpoint directory with config.json and tokenizer.json.
    pub model: PathBuf,
    /// A prompt (repeat for several).
    #[arg(long = "prompt", required = true, value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// The safetensors file to write.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing FILE that hft wrote.
    #[arg(long)]
    pub force: bool,
}

pub fn import(a: &ImportArgs, sink: &dyn Sink) -> Result<String> {
    let o = ImportOptions {
        dtype: parse_float(&a.dtype)?,
        force: a.force,
        tokenizer: !a.no_tokenizer,
        command: super::command_line(),
    };
    let s = import::import(&a.gguf, &a.output, &o, sink)?;
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
    hft::io::output::check(
        &a.output,
        hft::io::output::Kind::File,
        &[a.model.as_path()],
        a.force,
    )?;
    let v = train::logits::dump(&a.model, &a.prompts, &a.output)?;
    Ok(serde_json::to_string_pretty(&v).expect("JSON") + "\n")
}
