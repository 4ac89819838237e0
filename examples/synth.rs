//! Makes synthetic checkpoints with real layouts: the committed fixtures and benchmark inputs.
//!
//! ```text
//! cargo run --release --example synth -- fixtures fixtures/ [--force]
//! cargo run --release --example synth -- llama OUT --dims 2048,16,32,8,5632 --vocab 32000 \
//!     --seed 1 [--tune 2] [--dtype bf16] [--max-shard-bytes N]
//! cargo run --release --example synth -- gguf OUT.gguf [--arch llama|qwen3] [--dims 64,2,4,2,96]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use hft::fixtures::synth::{self, ModelSpec};
use hft::io::dtype;
use hft::io::writer::WriterOptions;

fn run() -> hft::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let force = args.iter().any(|a| a == "--force");
    match args.first().map(String::as_str) {
        Some("fixtures") => {
            let dir = PathBuf::from(args.get(1).ok_or_else(|| hft::Error::usage("fixtures DIR"))?);
            synth::write_fixtures(&dir, force)
        }
        Some("llama") => {
            let out = PathBuf::from(args.get(1).ok_or_else(|| hft::Error::usage("llama OUT"))?);
            let d = synth::parse_dims(&flag("--dims").unwrap_or_else(|| "64,4,4,2,128".into()))?;
            if d.len() != 5 {
                return Err(hft::Error::usage("--dims hidden,layers,heads,kv_heads,ffn"));
            }
            let mut spec = ModelSpec::llama(d[0], d[1], d[2], d[3], d[4]);
            if let Some(v) = flag("--vocab") {
                spec.vocab = synth::parse_dims(&v)?[0];
            }
            if let Some(t) = flag("--dtype") {
                spec.dtype = dtype::parse_float(&t)?;
            }
            let seed = flag("--seed").map_or(Ok(vec![1]), |s| synth::parse_dims(&s))?[0] as u64;
            let tune = flag("--tune")
                .map(|s| synth::parse_dims(&s).map(|v| v[0] as u64))
                .transpose()?;
            let mut opts = WriterOptions {
                force,
                ..WriterOptions::default()
            };
            if let Some(m) = flag("--max-shard-bytes") {
                opts.max_shard_bytes = synth::parse_dims(&m)?[0] as u64;
            }
            synth::write_model(&spec, &out, seed, tune, &opts)
        }
        // A tiny GGUF as llama.cpp's converter writes one, for checks against transformers'
        // own GGUF loader (scripts/compare_transformers.py --gguf).
        #[cfg(feature = "train")]
        Some("gguf") => {
            let out = PathBuf::from(args.get(1).ok_or_else(|| hft::Error::usage("gguf OUT"))?);
            let arch = flag("--arch").unwrap_or_else(|| "llama".into());
            let d = synth::parse_dims(&flag("--dims").unwrap_or_else(|| "64,2,4,2,96".into()))?;
            if d.len() != 5 {
                return Err(hft::Error::usage("--dims hidden,layers,heads,kv_heads,ffn"));
            }
            let spec = hft::fixtures::gguf::TinyGguf {
                hidden: d[0],
                layers: d[1],
                heads: d[2],
                kv_heads: d[3],
                intermediate: d[4],
                pre: if arch == "qwen3" { "qwen2" } else { "smollm" }.into(),
                arch,
                quant: candle_core::quantized::GgmlDType::F32,
                tied: false,
                ..Default::default()
            };
            spec.write(&out)
        }
        _ => Err(hft::Error::usage(
            "usage: synth fixtures DIR [--force] | synth llama OUT [--dims h,l,heads,kv,ffn] [--vocab V] [--seed S] [--tune T] [--dtype D] [--max-shard-bytes N] | synth gguf OUT [--arch llama|qwen3] [--dims h,l,heads,kv,ffn]",
        )),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synth: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
