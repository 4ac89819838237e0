//! mergekit configurations (`mergekit-yaml config.yml`) read for the methods hft has, so a
//! user can bring the config they already have to `hft merge --config`.
//!
//! Two sets of definitions ([`Definitions`]). mergekit's (the default for a config): the
//! methods `task_arithmetic`, `ties`, `dare_linear` and `dare_ties` run as mergekit runs them
//! ([`super::gta`]: its working dtype, its rounding, exactly `max(1, int(density · n))` entries
//! kept, DARE rescaled to the tensor's L1 norm, per-model densities), so outputs agree with
//! mergekit's except where torch leaves the choice open (which of equal magnitudes TIES keeps,
//! which entries DARE's random draw drops). hft's: the same configs mapped onto hft's own
//! methods (f32 arithmetic rounded once; TIES keeps every entry tied at its threshold; DARE
//! rescales by 1/density), with one density for all models and no `dare_ties`.
//!
//! | `merge_method` | normalize default | rescale default |
//! |---|---|---|
//! | `linear` (weighted average, `Σ wᵢ Mᵢ`, divided by `Σ wᵢ` when normalising) | true | - |
//! | `task_arithmetic` (`BASE + λ Σ wᵢ dᵢ`) | false | - |
//! | `ties` | true | false |
//! | `dare_linear` | false | true |
//! | `dare_ties` | false | true |
//!
//! Per-model `weight` and `density` may also come from the top-level `parameters`. As in
//! mergekit, the base model listed among `models` adds no task vector; `dtype` is the working
//! dtype and `out_dtype` (else `dtype`) the stored one. Refused by name: other methods,
//! `slices`/`modules` (layer-range merges), gradients and filters as parameter values (hft's
//! per-layer and per-category weights are `hft average --config`), LoRA references
//! (`model+lora`) and tokenizer merging. Ignored with a note: `int8_mask`, `chat_template`,
//! `tokenizer_source: base`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::gta::Gta;
use super::merge::{Method, Params};
use crate::error::{Error, Result};
use crate::io::DType;

/// What a mergekit config asks for, in hft's terms.
#[derive(Debug, Clone)]
pub struct Config {
    /// `merge_method` as the config names it.
    pub method: String,
    /// The models to combine (the base excluded for the task-vector methods).
    pub models: Vec<PathBuf>,
    pub base: Option<PathBuf>,
    pub job: Job,
    /// `out_dtype`, else `dtype`: the dtype the output is stored in.
    pub dtype: Option<DType>,
    /// What was ignored, for the terminal.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Job {
    /// `linear`: a weighted average.
    Linear { weights: Vec<f64>, normalize: bool },
    /// A task-vector method over `base`, hft's definitions.
    Merge { method: Method, params: Params },
    /// A task-vector method over `base`, mergekit's definitions.
    Mergekit(Gta),
}

const KNOWN: &[&str] = &[
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "slices",
    "modules",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
];

crate::choice! {
    /// Whose definitions of the task-vector merges a merge follows.
    pub enum Definitions {
        /// mergekit's: its working dtype and rounding, exactly int(density·n) entries kept by
        /// TIES, DARE rescaled to the L1 norm, dare_ties (see docs/surgery.md).
        Mergekit = "mergekit",
        /// hft's: f32 arithmetic rounded once, every entry tied at the TIES threshold kept,
        /// DARE rescaled by 1/(1 - drop).
        Hft = "hft",
    }
}

/// Reads and maps a mergekit config under `defs`; model paths are taken as given (relative to
/// the current directory, as mergekit takes them).
pub fn read(path: &Path, defs: Definitions) -> Result<Config> {
    let text = crate::io::input::read_text(path, crate::io::input::SMALL)?;
    let v: Value = serde_saphyr::from_str(&text)
        .map_err(|e| Error::yaml(path, "not a mergekit config: ", &e))?;
    parse(&v, defs).map_err(|msg| Error::input(path, msg))
}

fn parse(v: &Value, defs: Definitions) -> std::result::Result<Config, String> {
    let top = v
        .as_object()
        .ok_or("expected a mapping of mergekit settings")?;
    if let Some(k) = top.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!("unknown key `{k}`"));
    }
    for (k, why) in [
        (
            "slices",
            "layer-range merges (slices) are not something hft does",
        ),
        (
            "modules",
            "per-module merges (modules) are not something hft does",
        ),
        ("tokenizer", "tokenizer merging is not something hft does"),
    ] {
        if top.contains_key(k) {
            return Err(format!("`{k}`: {why}"));
        }
    }
    let mut notes = Vec::new();
    match top.get("tokenizer_source").and_then(Value::as_str) {
        None | Some("base") => {}
        Some(other) => return Err(format!("`tokenizer_source: {other}`: hft takes the tokenizer of the input whose vocabulary the output has; only `base` is accepted")),
    }
    if top.contains_key("chat_template") {
        notes.push(
            "`chat_template` ignored: the chat template comes with the tokenizer files".into(),
        );
    }
    let method_name = top
        .get("merge_method")
        .and_then(Value::as_str)
        .ok_or("`merge_method` is missing")?;
    let global = params_of(top.get("parameters"), "parameters")?;
    if global.iter().any(|(k, _)| k == "int8_mask") {
        notes.push("`int8_mask` ignored: hft keeps its masks as it needs".into());
    }
    let base = match top.get("base_model") {
        None => None,
        Some(b) => Some(model_ref(b, "base_model")?),
    };
    let list = top
        .get("models")
        .and_then(Value::as_array)
        .ok_or("`models` is missing (a list of `- model: PATH` with `parameters`)")?;
    let mut models = Vec::new();
    let mut weights = Vec::new();
    let mut densities = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let (path, own) = match m {
            Value::Object(o) => (
                model_ref(
                    o.get("model")
                        .ok_or(format!("models[{i}] has no `model`"))?,
                    "model",
                )?,
                params_of(o.get("parameters"), &format!("models[{i}].parameters"))?,
            ),
            other => (model_ref(other, "model")?, Vec::new()),
        };
        // As mergekit: the base model adds no task vector.
        if base.as_ref().is_some_and(|b| same(b, &path)) && method_name != "linear" {
            continue;
        }
        let get = |k: &str| {
            own.iter()
                .chain(&global)
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
        };
        weights.push(get("weight"));
        densities.push(get("density").unwrap_or(1.0));
        models.push(path);
    }
    if models.is_empty() {
        return Err("`models` lists no model to merge (besides the base)".into());
    }
    let flag = |k: &str, default: bool| -> std::result::Result<bool, String> {
        match global.iter().find(|(n, _)| n == k) {
            None => Ok(default),
            Some((_, v)) if *v == 0.0 || *v == 1.0 => Ok(*v == 1.0),
            Some((_, v)) => Err(format!("`parameters.{k}` is {v}; expected true or false")),
        }
    };
    let lambda = global.iter().find(|(n, _)| n == "lambda").map(|(_, v)| *v);
    let need_weights = || -> std::result::Result<Vec<f64>, String> {
        weights
            .iter()
            .zip(&models)
            .map(|(w, m)| {
                w.ok_or(format!(
                    "model {} has no `weight` (mergekit requires one)",
                    m.display()
                ))
            })
            .collect()
    };
    let common_density = || -> std::result::Result<f64, String> {
        let d = densities[0];
        if densities.iter().any(|x| *x != d) {
            return Err(format!(
                "densities differ between models ({densities:?}); hft's definitions apply one density to every model (mergekit's take one per model)"
            ));
        }
        Ok(d)
    };
    let work_dtype = dtype_of(top.get("dtype"))?;
    let job = match (method_name, defs) {
        ("linear", _) => Job::Linear {
            weights: need_weights()?,
            normalize: flag("normalize", true)?,
        },
        (name, Definitions::Mergekit) if Gta::of(name, Vec::new(), Vec::new()).is_some() => {
            if base.is_none() {
                return Err(format!("`{name}` needs `base_model`"));
            }
            let mut g = Gta::of(name, need_weights()?, densities.clone()).expect("checked above");
            g.normalize = flag("normalize", g.normalize)?;
            g.rescale = flag("rescale", g.rescale)?;
            g.lambda = lambda.unwrap_or(1.0);
            g.dtype = work_dtype;
            Job::Mergekit(g)
        }
        ("task_arithmetic" | "ties" | "dare_linear", Definitions::Hft) => {
            if base.is_none() {
                return Err(format!("`{method_name}` needs `base_model`"));
            }
            let mut w = need_weights()?;
            let normalize_default = method_name == "ties";
            if flag("normalize", normalize_default)? != normalize_default && method_name == "ties" {
                return Err("`ties` with `normalize: false` is not hft's TIES (a disjoint mean); mergekit's definitions have it".into());
            }
            if method_name != "ties" && flag("normalize", false)? {
                let sum: f64 = w.iter().sum();
                if sum == 0.0 {
                    return Err("`normalize: true` with weights that sum to zero".into());
                }
                w.iter_mut().for_each(|x| *x /= sum);
            }
            let mut params = Params {
                weights: Some(w),
                lambda,
                ..Params::default()
            };
            let method = match method_name {
                "task_arithmetic" => Method::TaskArithmetic,
                "ties" => {
                    params.density = Some(common_density()?);
                    Method::Ties
                }
                _ => {
                    if !flag("rescale", true)? {
                        return Err("`dare_linear` with `rescale: false`: hft's DARE always rescales by 1/density".into());
                    }
                    params.drop = Some(1.0 - common_density()?);
                    Method::Dare
                }
            };
            Job::Merge { method, params }
        }
        ("dare_ties", Definitions::Hft) => return Err("`dare_ties` exists only under mergekit's definitions, not hft's".into()),
        (other, _) => {
            return Err(format!(
                "`merge_method: {other}` is not in hft; it reads linear, task_arithmetic, ties, dare_linear and dare_ties"
            ))
        }
    };
    let dtype = match top.get("out_dtype") {
        Some(v) => dtype_of(Some(v))?,
        None => work_dtype,
    };
    Ok(Config {
        method: method_name.to_string(),
        models,
        base,
        job,
        dtype,
        notes,
    })
}

/// A mergekit dtype name.
fn dtype_of(v: Option<&Value>) -> std::result::Result<Option<DType>, String> {
    Ok(match v {
        None => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "bfloat16" | "bf16" => DType::BF16,
            "float16" | "fp16" | "f16" => DType::F16,
            "float32" | "fp32" | "f32" => DType::F32,
            other => {
                return Err(format!(
                    "dtype `{other}`: expected bfloat16, float16 or float32"
                ))
            }
        }),
        Some(other) => return Err(format!("dtype {other}: expected a name such as bfloat16")),
    })
}

/// `(name, value)` of a parameters mapping: numbers and booleans only.
fn params_of(v: Option<&Value>, at: &str) -> std::result::Result<Vec<(String, f64)>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let m = v.as_object().ok_or(format!("`{at}` must be a mapping"))?;
    m.iter()
        .map(|(k, x)| {
            let n = match x {
                Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                _ => None,
            };
            n.map(|n| (k.clone(), n)).ok_or(format!(
                "`{at}.{k}`: gradients, filters and other non-numbers are not read by hft \
                 (per-layer and per-category weights: `hft average` with option `config`)"
            ))
        })
        .collect()
}

fn model_ref(v: &Value, at: &str) -> std::result::Result<PathBuf, String> {
    let s = v.as_str().ok_or(format!("`{at}` must be a path"))?;
    if s.contains('+') {
        return Err(format!(
            "`{s}`: LoRA references (model+lora) are not read; merge the adapter first"
        ));
    }
    Ok(PathBuf::from(s))
}

fn same(a: &Path, b: &Path) -> bool {
    crate::io::output::resolve(a) == crate::io::output::resolve(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surgery::gta;

    fn cfg(yaml: &str) -> std::result::Result<Config, String> {
        parse(
            &serde_saphyr::from_str::<Value>(yaml).unwrap(),
            Definitions::Hft,
        )
    }

    fn mk(yaml: &str) -> std::result::Result<Config, String> {
        parse(
            &serde_saphyr::from_str::<Value>(yaml).unwrap(),
            Definitions::Mergekit,
        )
    }

    #[test]
    fn mergekits_definitions_take_its_defaults_and_per_model_densities() {
        let c = mk("merge_method: dare_ties\nbase_model: b\nmodels:\n  - model: b\n  - model: m1\n    parameters: {weight: 0.7, density: 0.3}\n  - model: m2\n    parameters: {weight: 0.3, density: 0.6}\nparameters: {lambda: 0.8}\ndtype: float32\nout_dtype: bfloat16\n").unwrap();
        assert_eq!(c.models, [PathBuf::from("m1"), PathBuf::from("m2")]);
        assert_eq!(c.dtype, Some(DType::BF16));
        let Job::Mergekit(g) = c.job else { panic!() };
        assert_eq!(g.densities, [0.3, 0.6]);
        assert_eq!(g.weights, [0.7, 0.3]);
        assert_eq!((g.sparsify, g.consensus), (gta::Sparsify::Random, true));
        assert_eq!((g.normalize, g.rescale, g.lambda), (false, true, 0.8));
        assert_eq!(g.dtype, Some(DType::F32));
        // ties: normalised by default, `normalize: false` taken as given; no density keeps all.
        let c = mk("merge_method: ties\nbase_model: b\nmodels: [{model: m, parameters: {weight: 1}}]\nparameters: {normalize: false}\n").unwrap();
        let Job::Mergekit(g) = c.job else { panic!() };
        assert_eq!(
            (g.sparsify, g.normalize, g.densities.clone()),
            (gta::Sparsify::Magnitude, false, vec![1.0])
        );
        assert_eq!(g.dtype, None);
        let c = mk("merge_method: task_arithmetic\nbase_model: b\nmodels: [{model: m, parameters: {weight: 2}}]\n").unwrap();
        let Job::Mergekit(g) = c.job else { panic!() };
        assert_eq!(
            (g.sparsify, g.normalize, g.rescale),
            (gta::Sparsify::None, false, false)
        );
        // linear is the same average under both definitions.
        assert!(matches!(
            mk("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\n")
                .unwrap()
                .job,
            Job::Linear { .. }
        ));
        assert!(
            mk("merge_method: ties\nmodels: [{model: m, parameters: {weight: 1}}]\n")
                .unwrap_err()
                .contains("base_model")
        );
    }

    #[test]
    fn the_methods_hft_has_map_with_mergekits_defaults() {
        let c = cfg("merge_method: ties\nbase_model: b\nmodels:\n  - model: b\n  - model: m1\n    parameters: {weight: 0.7, density: 0.3}\n  - model: m2\n    parameters: {weight: 0.3}\nparameters: {density: 0.3, int8_mask: true}\ndtype: bfloat16\n").unwrap();
        assert_eq!(c.models, [PathBuf::from("m1"), PathBuf::from("m2")]);
        assert_eq!(c.dtype, Some(DType::BF16));
        assert_eq!(c.notes.len(), 1);
        let Job::Merge { method, params } = c.job else {
            panic!()
        };
        assert_eq!(method, Method::Ties);
        assert_eq!(params.density, Some(0.3));
        assert_eq!(params.weights, Some(vec![0.7, 0.3]));
        // task_arithmetic normalises only when asked; dare_linear drops 1 - density.
        let c = cfg("merge_method: task_arithmetic\nbase_model: b\nmodels: [{model: m, parameters: {weight: 2}}, {model: m2, parameters: {weight: 2}}]\nparameters: {normalize: true, lambda: 0.5}\n").unwrap();
        let Job::Merge { params, .. } = c.job else {
            panic!()
        };
        assert_eq!(
            (params.weights, params.lambda),
            (Some(vec![0.5, 0.5]), Some(0.5))
        );
        let c = cfg("merge_method: dare_linear\nbase_model: b\nmodels: [{model: m, parameters: {weight: 1, density: 0.25}}]\n").unwrap();
        let Job::Merge { method, params } = c.job else {
            panic!()
        };
        assert_eq!((method, params.drop), (Method::Dare, Some(0.75)));
        let c = cfg("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 3}}]\n").unwrap();
        assert!(matches!(
            c.job,
            Job::Linear {
                normalize: true,
                ..
            }
        ));
    }

    #[test]
    fn what_hft_does_not_do_is_refused_by_name() {
        for (yaml, needle) in [
            ("merge_method: dare_ties\nbase_model: b\nmodels: [{model: m, parameters: {weight: 1}}]\n", "dare_ties"),
            ("merge_method: slerp\nmodels: [{model: m, parameters: {weight: 1}}]\n", "slerp"),
            ("merge_method: linear\nslices: []\nmodels: []\n", "slices"),
            ("merge_method: linear\nmodels: [{model: m, parameters: {weight: [0, 1]}}]\n", "gradients"),
            ("merge_method: ties\nbase_model: b\nmodels: [{model: m, parameters: {weight: 1, density: 0.2}}, {model: m2, parameters: {weight: 1, density: 0.5}}]\n", "densities differ"),
            ("merge_method: ties\nmodels: [{model: m, parameters: {weight: 1}}]\n", "base_model"),
            ("merge_method: linear\nmodels: [{model: m}]\n", "no `weight`"),
            ("merge_method: linear\nmodels: [{model: org/m+lora, parameters: {weight: 1}}]\n", "LoRA"),
            ("merge_method: linear\nfoo: 1\nmodels: []\n", "unknown key `foo`"),
        ] {
            let e = cfg(yaml).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
