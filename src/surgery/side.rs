//! The files beside a surgery's weights, so that transformers loads the output as what it is:
//! `config.json` and the tokenizer come from the input whose vocabulary and tying the output
//! has (a tuned model that added tokens, say, not the base with the old vocabulary size), the
//! config's dtype says the dtype the weights are stored in, and the model card is hft's own
//! (what was combined, how, with which command) instead of an input's card copied verbatim.

use std::path::Path;

use serde_json::Value;

use super::Output;
use crate::arch::{Category, Layout};
use crate::error::{Error, Result};
use crate::io::writer::{CheckpointWriter, TensorSpec};
use crate::io::Checkpoint;

/// The input whose embedding and head tensors (names and shapes) the output has: the primary
/// input when it has them, else the first other one that does. When no input has them all, no
/// config can describe a directory output and the surgery is refused before it starts; a
/// single `.safetensors` output has no config, and takes the primary input's metadata.
pub(super) fn source(
    inputs: &[&Checkpoint],
    primary: usize,
    out: &[TensorSpec],
    layout: &Layout,
    dest: &Path,
) -> Result<usize> {
    if dest.extension().is_some_and(|e| e == "safetensors") {
        return Ok(primary);
    }
    let vocab = |tensors: Vec<(&str, &[usize])>| {
        let mut v: Vec<(String, Vec<usize>)> = tensors
            .into_iter()
            .filter(|(n, _)| matches!(layout.role(n).category, Category::Embed | Category::LmHead))
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect();
        v.sort();
        v
    };
    let want = vocab(
        out.iter()
            .map(|s| (s.name.as_str(), s.shape.as_slice()))
            .collect(),
    );
    let has = |i: usize| {
        vocab(
            inputs[i]
                .tensors()
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice()))
                .collect(),
        ) == want
    };
    // Among the inputs that fit, one with a config.json (transformers needs it) comes first.
    let order: Vec<usize> = std::iter::once(primary)
        .chain((0..inputs.len()).filter(|&i| i != primary))
        .filter(|&i| has(i))
        .collect();
    order
        .iter()
        .copied()
        .find(|&i| inputs[i].config.is_some())
        .or(order.first().copied())
        .ok_or_else(|| {
            Error::input(
                &inputs[primary].source,
                format!(
                    "the output's embeddings and head ({}) match no input's, so no input's \
                     config.json and tokenizer describe it; combine models with the same \
                     vocabulary and tying",
                    want.iter()
                        .map(|(n, s)| format!("{n} {s:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// Copies the side files of input `from` into a directory output, sets the config's dtype to
/// the output's, and writes hft's model card. Returns the names of the files written.
pub(super) fn write(
    inputs: &[&Checkpoint],
    from: usize,
    w: &CheckpointWriter,
    out: &Output,
) -> Result<Vec<String>> {
    let ck = inputs[from];
    let mut files = match &ck.dir {
        Some(dir) if ck.source.is_dir() || ck.sharded => w.copy_side_files(dir)?,
        _ => Vec::new(),
    };
    if let (Some(d), Some(cfg)) = (out.dtype, &ck.config) {
        if files.iter().any(|f| f == "config.json") {
            let mut cfg = cfg.clone();
            set_dtype(&mut cfg, torch_name(d));
            let text = serde_json::to_string_pretty(&cfg).expect("JSON") + "\n";
            w.add_file("config.json", text.as_bytes())?;
        }
    }
    if w.add_file("README.md", card(inputs, out).as_bytes())? {
        files.retain(|f| f != "README.md");
        files.push("README.md".into());
    }
    Ok(files)
}

/// transformers' name of a dtype (`torch_dtype` values).
fn torch_name(d: crate::io::DType) -> &'static str {
    use crate::io::DType as D;
    match d {
        D::BF16 => "bfloat16",
        D::F16 => "float16",
        D::F64 => "float64",
        _ => "float32",
    }
}

/// Sets `torch_dtype` (and `dtype`, which newer transformers write and prefer) wherever the
/// config has them, nested configs (`text_config`) included; a config with neither gets
/// `torch_dtype`.
fn set_dtype(cfg: &mut Value, name: &str) {
    fn walk(v: &mut Value, name: &str) -> bool {
        let mut found = false;
        if let Some(m) = v.as_object_mut() {
            for key in ["torch_dtype", "dtype"] {
                if m.get(key).is_some_and(Value::is_string) {
                    m.insert(key.into(), Value::String(name.into()));
                    found = true;
                }
            }
            for child in m.values_mut() {
                found |= walk(child, name);
            }
        }
        found
    }
    if !walk(cfg, name) {
        if let Some(m) = cfg.as_object_mut() {
            m.insert("torch_dtype".into(), Value::String(name.into()));
        }
    }
}

/// A Hugging Face model card: front matter naming the inputs, then what hft did.
fn card(inputs: &[&Checkpoint], out: &Output) -> String {
    let name = out
        .path
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let mut s = String::from("---\nbase_model:\n");
    for ck in inputs {
        s.push_str(&format!("- {}\n", yaml_str(&ck.display_name())));
    }
    s.push_str("library_name: transformers\ntags:\n- hft\n- merge\n---\n\n");
    s.push_str(&format!("# {name}\n\n"));
    s.push_str(&format!(
        "Made by hft {} from {} input model{}:\n\n",
        env!("CARGO_PKG_VERSION"),
        inputs.len(),
        if inputs.len() == 1 { "" } else { "s" }
    ));
    for ck in inputs {
        s.push_str(&format!("- `{}`\n", ck.display_name()));
    }
    if !out.command.is_empty() {
        s.push_str(&format!("\nCommand:\n\n```\n{}\n```\n", out.command));
    }
    s
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_dtype_key_follows_the_file() {
        let mut old = serde_json::json!({"torch_dtype": "bfloat16"});
        set_dtype(&mut old, "float32");
        assert_eq!(old["torch_dtype"], "float32");
        let mut new = serde_json::json!({"dtype": "bfloat16"});
        set_dtype(&mut new, "float16");
        assert_eq!(new["dtype"], "float16");
        assert!(new.get("torch_dtype").is_none());
        let mut both = serde_json::json!({"dtype": "bfloat16", "torch_dtype": "bfloat16",
                                          "text_config": {"torch_dtype": "bfloat16"}});
        set_dtype(&mut both, "float32");
        assert_eq!(both["dtype"], "float32");
        assert_eq!(both["torch_dtype"], "float32");
        assert_eq!(both["text_config"]["torch_dtype"], "float32");
    }
}
