//! The tensors of a model as a plan sees them: names and shapes from a checkpoint's headers, or
//! computed from a config.json alone.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::config;
use crate::arch::Layout;
use crate::error::{Error, Result};
use crate::io::checkpoint::INDEX_NAME;
use crate::io::Checkpoint;
use crate::plan::Fingerprint;

/// The tensors of a model, from a checkpoint's headers or from a config.json alone.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub source: PathBuf,
    pub layout: Layout,
    /// Names and shapes in natural name order.
    pub tensors: Vec<(String, Vec<usize>)>,
}

impl ModelInfo {
    pub fn from_checkpoint(ck: &Checkpoint) -> Self {
        ModelInfo {
            source: ck.source.clone(),
            layout: Layout::for_checkpoint(ck),
            tensors: ck
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect(),
        }
    }

    /// A checkpoint (only headers are read), a `config.json`, or a directory holding a
    /// config.json and no weights.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let is_config_file = meta.is_file()
            && path.extension().is_some_and(|e| e == "json")
            && path.file_name().is_some_and(|n| n != INDEX_NAME);
        if is_config_file {
            return Self::from_config(path);
        }
        if meta.is_dir() && path.join("config.json").is_file() && !has_weights(path)? {
            return Self::from_config(&path.join("config.json"));
        }
        Ok(Self::from_checkpoint(&Checkpoint::open(path)?))
    }

    fn from_config(path: &Path) -> Result<Self> {
        let text = crate::io::input::read_text(path, crate::io::input::SMALL)?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| Error::input(path, format!("not valid JSON: {e}")))?;
        let layout = Layout::detect(Some(&cfg), std::iter::empty());
        let tensors = config::shapes(path, &layout)?;
        let layout = Layout::detect(Some(&cfg), tensors.iter().map(|(n, _)| n.as_str()));
        Ok(ModelInfo {
            source: path.to_path_buf(),
            layout,
            tensors,
        })
    }

    /// True when the shapes came from a config.json (no weights to read).
    pub fn is_config_only(&self) -> bool {
        self.source.extension().is_some_and(|e| e == "json")
            && self.source.file_name().is_some_and(|n| n != INDEX_NAME)
    }

    pub fn names_shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice()))
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.layout, self.names_shapes())
    }
}

fn has_weights(dir: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors")
            || name == INDEX_NAME
            || name.ends_with(".bin")
            || name.ends_with(".pt")
            || name.ends_with(".pth")
        {
            return Ok(true);
        }
    }
    Ok(false)
}
