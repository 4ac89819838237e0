//! Opening checkpoints: one `.safetensors` file, a directory holding `model.safetensors`, a
//! directory holding `model.safetensors.index.json` and its shards, or the index file itself.
//!
//! Every byte read from disk is validated here, so the rest of `hft` can index into tensor
//! data without checks: the safetensors crate validates each header (JSON, dtypes, shapes,
//! contiguous non-overlapping offsets that cover the file exactly), and this module adds the
//! checks of a sharded index (missing shard, a name the index places in a shard that lacks it,
//! a name in two shards). Data is memory-mapped and handed out one tensor at a time;
//! [`Checkpoint::release`] drops the pages of a tensor we are done with, so the resident set
//! stays bounded while walking a model many times larger than memory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use super::dtype::DType;
use crate::error::{Error, Result};

pub const INDEX_NAME: &str = "model.safetensors.index.json";
pub const SINGLE_NAME: &str = "model.safetensors";

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Index into [`Checkpoint::shards`].
    pub shard: usize,
    /// Absolute byte range inside the shard's file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

/// One memory-mapped safetensors file.
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    map: Option<Mmap>,
    /// The `__metadata__` map of the header, if any.
    pub metadata: BTreeMap<String, String>,
}

impl Shard {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// An opened checkpoint. Cheap to create: only headers are parsed.
#[derive(Debug)]
pub struct Checkpoint {
    /// The path the user gave.
    pub source: PathBuf,
    /// The directory whose non-weight files (config.json, tokenizer, ...) belong to the model.
    pub dir: Option<PathBuf>,
    pub shards: Vec<Shard>,
    /// Tensors in natural name order (`layers.2` before `layers.10`).
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    /// `config.json` of the directory, if present.
    pub config: Option<Value>,
    /// Whether the model came from a sharded index.
    pub sharded: bool,
    /// Oddities that do not stop us (tensors in a shard that the index does not list).
    pub warnings: Vec<String>,
}

impl Checkpoint {
    /// Opens any of the accepted layouts; see the module documentation.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let index = path.join(INDEX_NAME);
            if index.is_file() {
                return Self::open_index(path, &index);
            }
            let single = path.join(SINGLE_NAME);
            if single.is_file() {
                return Self::open_single(path, &single, Some(path.to_path_buf()));
            }
            let mut safetensors = Vec::new();
            let mut pickles = Vec::new();
            for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
                let entry = entry.map_err(|e| Error::io(path, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".safetensors") {
                    safetensors.push(entry.path());
                } else if name.ends_with(".bin") || name.ends_with(".pt") || name.ends_with(".pth")
                {
                    pickles.push(name);
                }
            }
            if safetensors.len() == 1 {
                return Self::open_single(path, &safetensors[0], Some(path.to_path_buf()));
            }
            if safetensors.len() > 1 {
                return Err(Error::input(
                    path,
                    format!(
                        "holds {} .safetensors files but no {INDEX_NAME} saying how they fit together",
                        safetensors.len()
                    ),
                ));
            }
            if !pickles.is_empty() {
                pickles.sort();
                return Err(Error::input(
                    path,
                    format!(
                        "holds only PyTorch pickle weights ({}); hft reads safetensors only, \
                         because unpickling can run arbitrary code. Convert once with \
                         `python -c \"from transformers import AutoModelForCausalLM as M; \
                         M.from_pretrained('DIR').save_pretrained('OUT', safe_serialization=True)\"`",
                        pickles.join(", ")
                    ),
                ));
            }
            return Err(Error::input(
                path,
                format!("no {SINGLE_NAME}, {INDEX_NAME} or other .safetensors file here"),
            ));
        }
        let dir = path.parent().map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        });
        if path.extension().is_some_and(|e| e == "json") {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            return Self::open_index(&dir, path);
        }
        Self::open_single(path, path, dir)
    }

    fn open_single(source: &Path, file: &Path, dir: Option<PathBuf>) -> Result<Self> {
        let shard = open_shard(file)?;
        let mut ckpt = Self::empty(source, dir, false)?;
        let infos = shard_tensors(&shard, 0)?;
        ckpt.shards.push(shard);
        ckpt.set_tensors(infos)?;
        Ok(ckpt)
    }

    fn open_index(dir: &Path, index: &Path) -> Result<Self> {
        let text = super::input::read_text(index, super::input::SMALL)?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::input(index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::input(index, "no `weight_map` object"))?;
        if map.is_empty() {
            return Err(Error::input(index, "`weight_map` is empty"));
        }
        // Shard files in the order they are first named, each opened once.
        let mut files: Vec<String> = Vec::new();
        let mut wanted: HashMap<String, String> = HashMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::input(
                    index,
                    format!("`weight_map` entry `{name}` is not a file name"),
                )
            })?;
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(Error::input(
                    index,
                    format!("shard name `{file}` leaves the checkpoint directory"),
                ));
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
            wanted.insert(name.clone(), file.to_string());
        }
        files.sort();
        let mut ckpt = Self::empty(index, Some(dir.to_path_buf()), true)?;
        let mut infos = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(Error::input(
                    index,
                    format!("names shard `{file}`, which does not exist"),
                ));
            }
            let shard = open_shard(&path)?;
            for info in shard_tensors(&shard, i)? {
                if let Some(other) = seen.insert(info.name.clone(), file.clone()) {
                    return Err(Error::input(
                        index,
                        format!(
                            "tensor `{}` is in two shards: `{other}` and `{file}`",
                            info.name
                        ),
                    ));
                }
                match wanted.get(&info.name) {
                    Some(f) if f == file => infos.push(info),
                    Some(f) => {
                        return Err(Error::input(
                            index,
                            format!(
                                "places tensor `{}` in `{f}`, but it is in `{file}`",
                                info.name
                            ),
                        ))
                    }
                    None => ckpt.warnings.push(format!(
                        "{}: tensor `{}` is not listed in the index; ignored",
                        path.display(),
                        info.name
                    )),
                }
            }
            ckpt.shards.push(shard);
        }
        let mut missing: Vec<_> = wanted
            .iter()
            .filter(|(name, _)| !seen.contains_key(*name))
            .collect();
        if !missing.is_empty() {
            missing.sort();
            let (name, file) = missing[0];
            return Err(Error::input(
                index,
                format!(
                    "places tensor `{name}` in `{file}`, but that shard does not hold it{}",
                    if missing.len() > 1 {
                        format!(" ({} more missing)", missing.len() - 1)
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        ckpt.set_tensors(infos)?;
        Ok(ckpt)
    }

    fn empty(source: &Path, dir: Option<PathBuf>, sharded: bool) -> Result<Self> {
        let config = match &dir {
            Some(d) if d.join("config.json").is_file() => {
                let p = d.join("config.json");
                let text = super::input::read_text(&p, super::input::SMALL)?;
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| Error::input(&p, format!("invalid JSON: {e}")))?,
                )
            }
            _ => None,
        };
        Ok(Checkpoint {
            source: source.to_path_buf(),
            dir,
            shards: Vec::new(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
            config,
            sharded,
            warnings: Vec::new(),
        })
    }

    fn set_tensors(&mut self, mut infos: Vec<TensorInfo>) -> Result<()> {
        if infos.is_empty() {
            return Err(Error::input(&self.source, "holds no tensors"));
        }
        infos.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        self.by_name = infos
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        self.tensors = infos;
        Ok(())
    }

    /// All tensors, in natural name order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw little-endian bytes of one tensor, straight from the memory map.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.shards[t.shard].bytes()[t.start..t.end]
    }

    /// Tells the kernel we are done with a tensor's pages, so a walk over a model larger than
    /// memory keeps a bounded resident set. The pages are file-backed and read-only: dropping
    /// them loses nothing, a later read faults them in again.
    pub fn release(&self, t: &TensorInfo) {
        self.release_range(t, 0, t.nbytes());
    }

    /// Like [`Checkpoint::release`] for bytes `start..end` of a tensor, so a large tensor can
    /// be dropped block by block while it is being walked.
    pub fn release_range(&self, t: &TensorInfo, start: usize, end: usize) {
        const PAGE: usize = 4096;
        if let Some(map) = &self.shards[t.shard].map {
            let start = (t.start + start) / PAGE * PAGE;
            let end = (t.start + end.min(t.nbytes())).div_ceil(PAGE) * PAGE;
            let end = end.min(map.len());
            if end > start {
                // SAFETY: the map is a read-only shared file mapping; MADV_DONTNEED only drops
                // clean page-cache-backed pages, which later reads fault back in unchanged.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes() as u64).sum()
    }

    /// `__metadata__` of the first shard (Hugging Face writes the same map into every shard).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.shards
            .first()
            .map(|s| s.metadata.clone())
            .unwrap_or_default()
    }

    /// A short human name for reports: the path the user gave.
    pub fn display_name(&self) -> String {
        self.source.display().to_string()
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = super::input::open(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(Error::input(
            path,
            format!("truncated: {len} bytes, but a safetensors file starts with an 8-byte header length"),
        ));
    }
    // SAFETY: the file is opened read-only. Another process truncating it while we read would
    // fault; that is the accepted contract of every mmap-based safetensors loader.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    if header_len > len - 8 {
        return Err(Error::input(
            path,
            format!(
                "truncated or not safetensors: header length {header_len} runs past the end of the file ({len} bytes)"
            ),
        ));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map[..]).map_err(|e| {
        use safetensors::SafeTensorError as E;
        let msg = match e {
            E::MetadataIncompleteBuffer => format!(
                "tensor data does not match the file size ({len} bytes): truncated, padded, or offsets out of range"
            ),
            E::InvalidOffset(name) => format!(
                "tensor `{name}` has overlapping, out-of-order or out-of-range data_offsets"
            ),
            E::TensorInvalidInfo => {
                "a tensor's data_offsets do not match its dtype and shape".to_string()
            }
            E::InvalidHeaderDeserialization(e) => format!("invalid header JSON: {e}"),
            E::InvalidHeader(e) => format!("header is not UTF-8: {e}"),
            other => format!("invalid safetensors header: {other}"),
        };
        Error::input(path, msg)
    })?;
    // The safetensors crate keeps the last of two equal names; a file like that is ambiguous.
    let header = &map[8..8 + header_len as usize];
    if let Some(name) = serde_json::from_slice::<FirstDuplicate>(header)
        .ok()
        .and_then(|d| d.0)
    {
        return Err(Error::input(
            path,
            format!("tensor name {name:?} appears twice in the header"),
        ));
    }
    if let Some(name) = meta
        .tensors()
        .into_keys()
        .find(|n| n.chars().any(char::is_control))
    {
        return Err(Error::input(
            path,
            format!("tensor name {name:?} holds control characters"),
        ));
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    map.advise(memmap2::Advice::Sequential).ok();
    Ok(Shard {
        path: path.to_path_buf(),
        map: Some(map),
        metadata,
    })
}

fn shard_tensors(shard: &Shard, index: usize) -> Result<Vec<TensorInfo>> {
    let bytes = shard.bytes();
    let (n, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::input(&shard.path, e.to_string()))?;
    let base = 8 + n;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorInfo {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            shard: index,
            start: base + info.data_offsets.0,
            end: base + info.data_offsets.1,
        })
        .collect())
}

/// The first key that a JSON object holds twice, if any (nested values are skipped).
struct FirstDuplicate(Option<String>);

impl<'de> serde::Deserialize<'de> for FirstDuplicate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = FirstDuplicate;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<FirstDuplicate, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut dup = None;
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<serde::de::IgnoredAny>()?;
                    if dup.is_none() && !seen.insert(k.clone()) {
                        dup = Some(k);
                    }
                }
                Ok(FirstDuplicate(dup))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// Orders names so that numbers compare by value: `layers.2.x` < `layers.10.x`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (&a[..na], &b[..nb]);
                let ta = trim_zeros(da);
                let tb = trim_zeros(db);
                let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z.min(d.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let mut v = vec![
            "layers.10.a",
            "layers.2.a",
            "layers.1.b",
            "embed",
            "layers.02.c",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "embed",
                "layers.1.b",
                "layers.2.a",
                "layers.02.c",
                "layers.10.a"
            ]
        );
    }
}
