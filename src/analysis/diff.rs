//! `hft diff`: how much every tensor, layer and category changed between two checkpoints.
//!
//! Tensors are paired by name and compared one pair at a time straight from the memory maps
//! (see [`crate::analysis::stats`]); the pages of a finished pair are released, so two models of any
//! size are diffed in a bounded resident set.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::analysis::stats::{self, Acc, Figures};
use crate::arch::{Block, Category, Layout};
use crate::error::{Error, Result};
use crate::io::dtype;
use crate::io::{Checkpoint, TensorInfo};
use crate::progress::Progress;

#[derive(Debug, Clone, Serialize)]
pub struct TensorDiff {
    pub name: String,
    pub layer: Option<usize>,
    pub category: Category,
    /// The routed expert of a mixture-of-experts matrix, else null.
    pub expert: Option<usize>,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// `numeric` (float dtypes, figures below) or `bytes` (other dtypes: only `equal` and
    /// `changed_frac` are meaningful, the norms are null).
    pub compared: &'static str,
    pub equal: bool,
    /// Rows present in only one side when the first dimension differs (resized vocabulary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_rows_a: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_rows_b: Option<usize>,
    #[serde(flatten)]
    pub figures: Figures,
    #[serde(skip)]
    pub acc: Acc,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub layer: usize,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct CategoryRow {
    pub category: Category,
    #[serde(flatten)]
    pub figures: Figures,
}

/// One feed-forward block of a mixture-of-experts layer: a routed expert (`"7"`) or the shared
/// expert(s) (`"shared"`), over its matrices.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertRow {
    pub layer: usize,
    pub expert: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// One cell of the layer x category matrix.
#[derive(Debug, Clone, Serialize)]
pub struct CellRow {
    pub layer: Option<usize>,
    pub category: Category,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Meta {
    pub dtype: String,
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub name: String,
    pub a: Meta,
    pub b: Meta,
}

/// The `schema` of `hft diff --format json`; the number changes when a field changes meaning.
pub const SCHEMA: &str = "hft-diff/1";

/// Everything `hft diff` reports; serialised as-is for `--format json`.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub schema: &'static str,
    pub a: String,
    pub b: String,
    pub family: String,
    pub tensors: Vec<TensorDiff>,
    pub layers: Vec<LayerRow>,
    pub categories: Vec<CategoryRow>,
    /// Per routed expert and shared expert of each layer; empty for dense models.
    pub experts: Vec<ExpertRow>,
    pub cells: Vec<CellRow>,
    pub total: Figures,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub mismatched: Vec<Mismatch>,
}

impl DiffReport {
    /// Tensors that hold NaN or Inf on either side.
    pub fn nonfinite(&self) -> impl Iterator<Item = &TensorDiff> {
        self.tensors
            .iter()
            .filter(|t| t.figures.nonfinite_a + t.figures.nonfinite_b > 0)
    }
}

/// Elements per block when walking a large tensor (8 MiB of BF16).
const BLOCK: usize = 4 << 20;

/// How a pair of same-named tensors is compared.
enum Pairing {
    /// Numerically, over `rows` leading rows (all of them when shapes are equal).
    Numeric {
        rows: usize,
    },
    Bytes,
    /// Not comparable: reported as mismatched only.
    None,
}

fn pairing(ta: &TensorInfo, tb: &TensorInfo) -> Pairing {
    let floats = dtype::is_float(ta.dtype) && dtype::is_float(tb.dtype);
    if ta.shape == tb.shape {
        if floats {
            return Pairing::Numeric {
                rows: ta.shape.first().copied().unwrap_or(1),
            };
        }
        if ta.dtype == tb.dtype {
            return Pairing::Bytes;
        }
        return Pairing::None;
    }
    // Only matrices resize row-wise (a vocabulary grown or cut); vectors of another length
    // are simply different tensors.
    let same_tail =
        ta.shape.len() == tb.shape.len() && ta.shape.len() >= 2 && ta.shape[1..] == tb.shape[1..];
    if floats && same_tail {
        return Pairing::Numeric {
            rows: ta.shape[0].min(tb.shape[0]),
        };
    }
    Pairing::None
}

fn meta(t: &TensorInfo) -> Meta {
    Meta {
        dtype: dtype::name(t.dtype),
        shape: t.shape.clone(),
    }
}

/// Compares two checkpoints. The layout (family) is detected from A, then B.
pub fn diff(a: &Checkpoint, b: &Checkpoint, progress: &Progress) -> Result<DiffReport> {
    let layout = if a.config.is_some() || b.config.is_none() {
        Layout::for_checkpoint(a)
    } else {
        Layout::for_checkpoint(b)
    };
    let mut pairs = Vec::new();
    let mut only_in_a = Vec::new();
    let mut mismatched = Vec::new();
    for ta in a.tensors() {
        match b.get(&ta.name) {
            None => only_in_a.push(ta.name.clone()),
            Some(tb) => {
                let p = pairing(ta, tb);
                if ta.shape != tb.shape || ta.dtype != tb.dtype {
                    mismatched.push(Mismatch {
                        name: ta.name.clone(),
                        a: meta(ta),
                        b: meta(tb),
                    });
                }
                if !matches!(p, Pairing::None) {
                    pairs.push((ta, tb, p));
                }
            }
        }
    }
    let only_in_b: Vec<String> = b
        .tensors()
        .iter()
        .filter(|t| a.get(&t.name).is_none())
        .map(|t| t.name.clone())
        .collect();
    if pairs.is_empty() {
        return Err(Error::input(
            &b.source,
            format!(
                "has no tensor in common with {} ({} names only in A, {} only in B, {} mismatched)",
                a.source.display(),
                only_in_a.len(),
                only_in_b.len(),
                mismatched.len()
            ),
        ));
    }

    let tensors: Vec<TensorDiff> = pairs
        .par_iter()
        .map(|(ta, tb, p)| {
            let d = compare_pair(a, b, ta, tb, p, &layout);
            progress.inc((ta.nbytes() + tb.nbytes()) as u64);
            d
        })
        .collect();
    progress.finish();

    let mut layers: BTreeMap<usize, Acc> = BTreeMap::new();
    let mut cats: BTreeMap<Category, Acc> = BTreeMap::new();
    let mut cells: BTreeMap<(Option<usize>, Category), Acc> = BTreeMap::new();
    // Keyed (layer, shared, block): a layer's experts in order, then its shared expert.
    let mut experts: BTreeMap<(usize, bool, Block), Acc> = BTreeMap::new();
    let mut total = Acc::default();
    for t in tensors.iter().filter(|t| t.compared == "numeric") {
        if let Some(l) = t.layer {
            layers.entry(l).or_default().merge(&t.acc);
            let block = Block::of(t.category, t.expert);
            if block != Block::Dense {
                let key = (l, block == Block::Shared, block);
                experts.entry(key).or_default().merge(&t.acc);
            }
        }
        cats.entry(t.category).or_default().merge(&t.acc);
        cells
            .entry((t.layer, t.category))
            .or_default()
            .merge(&t.acc);
        total.merge(&t.acc);
    }
    Ok(DiffReport {
        schema: SCHEMA,
        a: a.display_name(),
        b: b.display_name(),
        family: layout.family_name().to_string(),
        tensors,
        layers: layers
            .into_iter()
            .map(|(layer, acc)| LayerRow {
                layer,
                figures: acc.figures(),
            })
            .collect(),
        categories: cats
            .into_iter()
            .map(|(category, acc)| CategoryRow {
                category,
                figures: acc.figures(),
            })
            .collect(),
        experts: experts
            .into_iter()
            .map(|((layer, _, b), acc)| ExpertRow {
                layer,
                expert: match b {
                    Block::Expert(e) => e.to_string(),
                    _ => "shared".into(),
                },
                figures: acc.figures(),
            })
            .collect(),
        cells: cells
            .into_iter()
            .map(|((layer, category), acc)| CellRow {
                layer,
                category,
                figures: acc.figures(),
            })
            .collect(),
        total: total.figures(),
        only_in_a,
        only_in_b,
        mismatched,
    })
}

fn compare_pair(
    a: &Checkpoint,
    b: &Checkpoint,
    ta: &TensorInfo,
    tb: &TensorInfo,
    p: &Pairing,
    layout: &Layout,
) -> TensorDiff {
    let role = layout.role(&ta.name);
    let (ba, bb) = (a.bytes(ta), b.bytes(tb));
    let (acc, compared, extra_a, extra_b) = match p {
        Pairing::Numeric { rows } => {
            let row = ta.shape.iter().skip(1).product::<usize>();
            let n = if ta.shape.is_empty() { 1 } else { rows * row };
            let (ea, eb) = (
                dtype::elem_bytes(ta.dtype).expect("float"),
                dtype::elem_bytes(tb.dtype).expect("float"),
            );
            // Block by block, dropping each block's pages once done: two workers on two
            // embedding matrices would otherwise keep ~4 x 130 MB mapped for a 7B model.
            let mut acc = Acc::default();
            let mut s = 0;
            while s < n {
                let e = (s + BLOCK).min(n);
                let part = stats::compare_float(
                    &ba[s * ea..e * ea],
                    ta.dtype,
                    &bb[s * eb..e * eb],
                    tb.dtype,
                    e - s,
                );
                acc.merge(&part);
                a.release_range(ta, s * ea, e * ea);
                b.release_range(tb, s * eb, e * eb);
                s = e;
            }
            let extra =
                |t: &TensorInfo| (ta.shape != tb.shape).then(|| t.shape[0].saturating_sub(*rows));
            (acc, "numeric", extra(ta), extra(tb))
        }
        _ => {
            let elem = dtype::elem_bytes(ta.dtype).unwrap_or(1);
            let (n, changed) = stats::compare_bytes(ba, bb, elem);
            let acc = Acc {
                numel: n,
                changed: changed + (ba.len() != bb.len()) as u64,
                ..Acc::default()
            };
            (acc, "bytes", None, None)
        }
    };
    a.release(ta);
    b.release(tb);
    let mut figures = acc.figures();
    if compared == "bytes" {
        // Norms mean nothing for integers or packed floats: null in JSON, "-" in tables.
        figures.l2_a = f64::NAN;
        figures.l2_b = f64::NAN;
        figures.l2_delta = f64::NAN;
        figures.max_abs_delta = f64::NAN;
        figures.mean_abs_delta = f64::NAN;
    }
    TensorDiff {
        name: ta.name.clone(),
        layer: role.layer,
        category: role.category,
        expert: role.expert,
        dtype: if ta.dtype == tb.dtype {
            dtype::name(ta.dtype)
        } else {
            format!("{}/{}", ta.dtype, tb.dtype)
        },
        shape: ta.shape.clone(),
        compared,
        equal: acc.changed == 0 && extra_a.unwrap_or(0) == 0 && extra_b.unwrap_or(0) == 0,
        extra_rows_a: extra_a,
        extra_rows_b: extra_b,
        figures,
        acc,
    }
}
