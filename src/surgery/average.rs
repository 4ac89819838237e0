//! Weighted averages of N checkpoints (model soups, WiSE-FT), with weights that may differ per
//! layer and per category.
//!
//! Weights come from `--weights`/`--alpha` or from a YAML file (`--config`):
//!
//! ```yaml
//! default: [0.5, 0.5]        # weights for tensors no rule matches (one per model, in order)
//! normalize: true            # scale each weight list to sum 1 (default; --no-normalize wins)
//! rules:                     # first matching rule wins
//!   - categories: [attention]          # category names of `hft diff`, or attention / ffn / norms
//!     weights: [0.5, 0.5]
//!   - layers: "0-3,30-"                # layer indices: single, ranges, open-ended ranges
//!     categories: [ffn_up, ffn_down]
//!     weights: [1, 0]
//!   - layers: 12
//!     weights: [0, 1]
//! ```
//!
//! A rule with `layers` only matches tensors inside those layers; one with `categories` only
//! tensors of those categories (a bias counts as its matrix's category); a rule with both
//! needs both. Unknown keys, categories or malformed layer lists are errors with their line.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::{Combine, TensorOp, TensorView};
use crate::arch::{Category, Role};
use crate::error::{Error, Result};

/// A set of categories a rule applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum CategorySel {
    One(Category),
    /// Every attention projection (q, k, v, o, fused qkv) and their biases and norms.
    Attention,
    /// Every feed-forward projection and its biases.
    Ffn,
    /// Layer norms and the final norm.
    Norms,
}

impl CategorySel {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "attention" => Some(CategorySel::Attention),
            "ffn" => Some(CategorySel::Ffn),
            "norms" => Some(CategorySel::Norms),
            _ => Category::parse(s).map(CategorySel::One),
        }
    }

    fn matches(&self, role: &Role) -> bool {
        let c = role.unit_category();
        match self {
            CategorySel::One(x) => *x == c || *x == role.category,
            CategorySel::Attention => c.is_attention(),
            CategorySel::Ffn => c.is_ffn(),
            CategorySel::Norms => matches!(
                role.category,
                Category::Norm | Category::FinalNorm | Category::AttnNorm
            ),
        }
    }
}

impl<'de> Deserialize<'de> for CategorySel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CategorySel::parse(&s).ok_or_else(|| {
            let names: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
            serde::de::Error::custom(format!(
                "unknown category `{s}` (expected attention, ffn, norms or one of {})",
                names.join(", ")
            ))
        })
    }
}

/// Layer indices: `"0-3,8,20-"` (ranges inclusive, `N-` open-ended) or a single integer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSet(Vec<(usize, usize)>);

impl LayerSet {
    pub fn parse(s: &str) -> Option<Self> {
        let mut v = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let range = match part.split_once('-') {
                None => {
                    let n = part.parse().ok()?;
                    (n, n)
                }
                Some((a, b)) => {
                    let a: usize = a.trim().parse().ok()?;
                    let b = match b.trim() {
                        "" => usize::MAX,
                        b => b.parse().ok()?,
                    };
                    if b < a {
                        return None;
                    }
                    (a, b)
                }
            };
            v.push(range);
        }
        Some(LayerSet(v))
    }

    pub fn contains(&self, layer: usize) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&layer))
    }
}

impl<'de> Deserialize<'de> for LayerSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let s = match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string(),
            Raw::S(s) => s,
        };
        LayerSet::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "bad layer list `{s}` (expected e.g. 3, \"0-3\", \"0-3,8,20-\")"
            ))
        })
    }
}

/// One rule of an average config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub layers: Option<LayerSet>,
    #[serde(default)]
    pub categories: Option<Vec<CategorySel>>,
    pub weights: Spanned<Vec<f64>>,
}

impl Rule {
    fn matches(&self, role: &Role) -> bool {
        let layer_ok = match &self.layers {
            None => true,
            Some(set) => role.layer.is_some_and(|l| set.contains(l)),
        };
        let cat_ok = match &self.categories {
            None => true,
            Some(cs) => cs.iter().any(|c| c.matches(role)),
        };
        layer_ok && cat_ok
    }
}

/// The `--config` file of `hft average`; see the module documentation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AverageConfig {
    #[serde(default)]
    pub default: Option<Spanned<Vec<f64>>>,
    #[serde(default)]
    pub normalize: Option<bool>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl AverageConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let is_mergekit = serde_saphyr::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| v.get("merge_method").is_some());
        if is_mergekit {
            return Err(Error::input(
                path,
                "is a mergekit config (it has `merge_method`); `hft merge` reads it with option `config`",
            ));
        }
        serde_saphyr::from_str(text).map_err(|e| Error::yaml(path, "", &e))
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::io::input::read_text(path, crate::io::input::SMALL)?;
        Self::parse(&text, path)
    }
}

/// Errors of the YAML parser come as a headline with the line and column, then a rendered
/// snippet over several lines; a CLI error is one line, and the headline is what the user needs.
/// Weighted average with per-tensor weights: `Σ wᵢ Mᵢ`, computed in f32 and rounded once.
#[derive(Debug, Clone)]
pub struct Linear {
    default: Vec<f64>,
    rules: Vec<(Rule, Vec<f64>)>,
}

impl Linear {
    /// The same weights for every tensor. With `normalize` they are scaled to sum to one.
    pub fn new(weights: Vec<f64>, normalize: bool) -> Result<Self> {
        Self::with_config(weights, None, normalize)
    }

    /// `default` applies where no rule of `config` matches (a `default` in the config file
    /// takes its place; giving both is an error). `normalize` is the command line's choice:
    /// `false` (from `--no-normalize`) wins over the file.
    pub fn with_config(
        default: Vec<f64>,
        config: Option<(&AverageConfig, &Path)>,
        normalize: bool,
    ) -> Result<Self> {
        let models = default.len();
        let Some((cfg, path)) = config else {
            return Ok(Linear {
                default: prepare(&default, normalize, "weights")?,
                rules: Vec::new(),
            });
        };
        let normalize = normalize && cfg.normalize.unwrap_or(true);
        let count = |w: &Spanned<Vec<f64>>, what: &str| -> Result<Vec<f64>> {
            if w.value.len() != models {
                return Err(Error::input(
                    path,
                    format!(
                        "line {}: {what} has {} weights, but {models} models are averaged",
                        w.referenced.line(),
                        w.value.len()
                    ),
                ));
            }
            prepare(
                &w.value,
                normalize,
                &format!("line {}: {what}", w.referenced.line()),
            )
            .map_err(|e| Error::input(path, e.to_string()))
        };
        let default = match &cfg.default {
            Some(d) => count(d, "`default`")?,
            None => prepare(&default, normalize, "weights")?,
        };
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Ok((r.clone(), count(&r.weights, &format!("rule {}", i + 1))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Linear { default, rules })
    }

    /// The weights a tensor gets.
    pub fn weights_for(&self, role: &Role) -> &[f64] {
        self.rules
            .iter()
            .find(|(r, _)| r.matches(role))
            .map_or(&self.default, |(_, w)| w)
    }
}

fn prepare(w: &[f64], normalize: bool, field: &str) -> Result<Vec<f64>> {
    if w.iter().any(|x| !x.is_finite()) {
        return Err(Error::field(field, "weights must be finite numbers"));
    }
    if normalize {
        super::normalize(w, field)
    } else {
        Ok(w.to_vec())
    }
}

impl Combine for Linear {
    fn tensor<'a>(&'a self, t: &TensorView<'a>) -> Result<TensorOp<'a>> {
        let w = self.weights_for(&t.role);
        if w.len() != t.n_inputs() {
            return Err(Error::Internal(format!(
                "{} weights for {} inputs",
                w.len(),
                t.n_inputs()
            )));
        }
        let terms: Vec<(usize, f32)> = w
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0.0)
            .map(|(i, w)| (i, *w as f32))
            .collect();
        // One model at weight one: its bytes, exactly (also for NaN/Inf in the others).
        if let [(i, 1.0)] = terms[..] {
            return Ok(TensorOp::Copy(i));
        }
        Ok(TensorOp::Values(Box::new(move |_, ins, out| {
            let Some((&(i0, w0), rest)) = terms.split_first() else {
                out.fill(0.0);
                return;
            };
            for (o, x) in out.iter_mut().zip(ins[i0]) {
                *o = w0 * x;
            }
            for &(i, w) in rest {
                for (o, x) in out.iter_mut().zip(ins[i]) {
                    *o += w * x;
                }
            }
        })))
    }
}

impl fmt::Display for CategorySel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CategorySel::One(c) => f.write_str(c.as_str()),
            CategorySel::Attention => f.write_str("attention"),
            CategorySel::Ffn => f.write_str("ffn"),
            CategorySel::Norms => f.write_str("norms"),
        }
    }
}
