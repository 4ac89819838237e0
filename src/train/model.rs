//! A differentiable Llama-family decoder (Llama, Mistral, Qwen2 with q/k/v biases, tied
//! embeddings, grouped-query attention) with Hugging Face parameter names.
//!
//! Built only from ops that record a backward (candle-nn's fused `rms_norm`, `softmax_last_dim`,
//! `rope` and `sdpa` do not): RMS norm written out, `rope_slow`, an explicit softmax and an
//! additive causal mask. Weights come from a [`Checkpoint`] through its reader, are held in
//! f32 (or f64 for gradient checks), and every parameter the model needs must be in the
//! checkpoint: nothing is initialised silently.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::linear::{cast, linear_in, Param};
use super::TrainError;
use crate::error::{Error, Result};
use crate::io::dtype::decode_f64;
use crate::io::Checkpoint;
use crate::plan::{Entry, Plan};

/// The shape of a model, from its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub model_type: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f64,
    pub rope_theta: f64,
    pub max_positions: usize,
    pub tied: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

const FAMILIES: [&str; 3] = ["llama", "mistral", "qwen2"];

impl Config {
    pub fn from_json(v: &Value, path: &Path) -> Result<Config> {
        let get = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
        let need =
            |k: &str| get(k).ok_or_else(|| Error::input(path, format!("config.json lacks `{k}`")));
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !FAMILIES.contains(&model_type.as_str()) {
            return Err(Error::input(
                path,
                format!(
                    "model_type `{model_type}` is not supported by `hft run` (it trains {})",
                    FAMILIES.join(", ")
                ),
            ));
        }
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let token = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as u32);
        let c = Config {
            hidden,
            intermediate: need("intermediate_size")?,
            layers: need("num_hidden_layers")?,
            heads,
            kv_heads: get("num_key_value_heads").unwrap_or(heads),
            head_dim: get("head_dim").unwrap_or(hidden / heads.max(1)),
            vocab: need("vocab_size")?,
            eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta: v
                .get("rope_theta")
                .and_then(Value::as_f64)
                .unwrap_or(10000.0),
            max_positions: get("max_position_embeddings").unwrap_or(2048),
            tied: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos: token("bos_token_id"),
            eos: token("eos_token_id"),
            model_type,
        };
        if c.heads == 0
            || c.kv_heads == 0
            || !c.heads.is_multiple_of(c.kv_heads)
            || !c.head_dim.is_multiple_of(2)
        {
            return Err(Error::input(
                path,
                format!(
                    "heads {} / key-value heads {} / head_dim {} do not fit a Llama attention",
                    c.heads, c.kv_heads, c.head_dim
                ),
            ));
        }
        Ok(c)
    }
}

/// The parameters of one decoder layer.
#[derive(Debug, Clone)]
struct Block {
    input_norm: Param,
    q: Param,
    k: Param,
    v: Param,
    q_bias: Option<Param>,
    k_bias: Option<Param>,
    v_bias: Option<Param>,
    o: Param,
    post_norm: Param,
    gate: Param,
    up: Param,
    down: Param,
}

/// A loaded model: parameters by name plus the computation.
pub struct Llama {
    pub config: Config,
    pub device: Device,
    /// The dtype of the parameters (the f32 master copy when training).
    pub dtype: DType,
    /// The dtype matrix products run in (autocast): `dtype`, or BF16/F16, meant for GPUs'
    /// tensor cores; norms, softmax, RoPE and the loss stay in `dtype`.
    pub compute: DType,
    /// Every parameter by its Hugging Face name, in checkpoint order.
    pub params: Vec<(String, Param)>,
    /// Element masks (1 where the element trains) of tensors the plan trains in part.
    pub masks: BTreeMap<String, Tensor>,
    embed: Param,
    blocks: Vec<Block>,
    norm: Param,
    head: Option<Param>,
    cos: Tensor,
    sin: Tensor,
}

/// Names the model needs, in the order the forward uses them.
pub fn expected_names(c: &Config, biases: bool) -> Vec<String> {
    let mut v = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..c.layers {
        let p = format!("model.layers.{l}.");
        for n in [
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            v.push(format!("{p}{n}"));
        }
        if biases {
            for n in ["q", "k", "v"] {
                v.push(format!("{p}self_attn.{n}_proj.bias"));
            }
        }
    }
    v.push("model.norm.weight".into());
    if !c.tied {
        v.push("lm_head.weight".into());
    }
    v
}

fn expected_shape(c: &Config, name: &str) -> Vec<usize> {
    let (h, f, hd) = (c.hidden, c.intermediate, c.head_dim);
    let (q, kv) = (c.heads * hd, c.kv_heads * hd);
    // `model.layers.N.rest` -> `rest`; other names stay whole.
    let tail = match name.strip_prefix("model.layers.") {
        Some(t) => t.split_once('.').map_or(t, |(_, r)| r),
        None => name,
    };
    match tail {
        "model.embed_tokens.weight" | "lm_head.weight" => vec![c.vocab, h],
        "model.norm.weight" | "input_layernorm.weight" | "post_attention_layernorm.weight" => {
            vec![h]
        }
        "self_attn.q_proj.weight" => vec![q, h],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
        "self_attn.o_proj.weight" => vec![h, q],
        "self_attn.q_proj.bias" => vec![q],
        "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kv],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![f, h],
        "mlp.down_proj.weight" => vec![h, f],
        _ => vec![],
    }
}

/// Non-parameter buffers some exporters leave in checkpoints; ignored on load.
fn is_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || name.ends_with("masked_bias")
}

/// Builds the mask tensor (1 trains, 0 frozen) of a partially trained tensor.
pub fn element_mask(
    entry: &Entry,
    name: &str,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let f = entry.element_fn(name, shape);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| if f.trains(i) { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(v, shape, device)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(TrainError::map)
}

impl Llama {
    /// Loads `ck` (every tensor decoded to `dtype`) with the trainable set of `plan`: `train`
    /// entries become variables, `freeze` entries plain tensors, masks and row ranges
    /// variables with an element mask. `plan` `None` trains everything.
    pub fn load(
        ck: &Checkpoint,
        plan: Option<&Plan>,
        dtype: DType,
        device: &Device,
    ) -> Result<Llama> {
        let src = &ck.source;
        let cfg_json = ck
            .config
            .as_ref()
            .ok_or_else(|| Error::input(src, "no config.json next to the weights"))?;
        let config = Config::from_json(cfg_json, src)?;
        let biases = ck.get("model.layers.0.self_attn.q_proj.bias").is_some();
        let names = expected_names(&config, biases);
        let known: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        for t in ck.tensors() {
            if !known.contains(t.name.as_str()) && !is_buffer(&t.name) {
                return Err(Error::input(
                    src,
                    format!(
                        "tensor `{}` has no place in a {} model as hft builds it (family unsupported?)",
                        t.name, config.model_type
                    ),
                ));
            }
        }
        let mut map: BTreeMap<String, Param> = BTreeMap::new();
        let mut masks = BTreeMap::new();
        let mut params = Vec::new();
        for name in &names {
            let info = ck.get(name).ok_or_else(|| {
                Error::input(
                    src,
                    format!("missing tensor `{name}`: nothing is initialised silently"),
                )
            })?;
            let want = expected_shape(&config, name);
            if info.shape != want {
                return Err(Error::input(
                    src,
                    format!(
                        "`{name}` has shape {:?}, config.json implies {want:?}",
                        info.shape
                    ),
                ));
            }
            if !crate::io::dtype::is_float(info.dtype) {
                return Err(Error::input(src, format!("`{name}` is not a float tensor")));
            }
            let mut vals = vec![0f64; info.numel()];
            decode_f64(info.dtype, ck.bytes(info), &mut vals);
            let t = Tensor::from_vec(vals, info.shape.as_slice(), device)
                .and_then(|t| t.to_dtype(dtype))
                .map_err(TrainError::map)?;
            let entry = plan.map_or(Entry::TRAIN, |p| {
                p.entry(name).cloned().unwrap_or(Entry::FREEZE)
            });
            let p = match &entry {
                Entry::Whole(crate::plan::State::Freeze) => Param::Frozen(t),
                Entry::Whole(crate::plan::State::Train) => {
                    Param::Train(Var::from_tensor(&t).map_err(TrainError::map)?)
                }
                partial => {
                    if partial.trainable(&info.shape) == 0 {
                        Param::Frozen(t)
                    } else {
                        masks.insert(
                            name.clone(),
                            element_mask(partial, name, &info.shape, dtype, device)?,
                        );
                        Param::Train(Var::from_tensor(&t).map_err(TrainError::map)?)
                    }
                }
            };
            map.insert(name.clone(), p.clone());
            params.push((name.clone(), p));
        }
        let take = |n: &str| map.get(n).cloned().expect("loaded above");
        let opt = |n: String| map.get(&n).cloned();
        let blocks = (0..config.layers)
            .map(|l| {
                let p = |n: &str| take(&format!("model.layers.{l}.{n}"));
                Block {
                    input_norm: p("input_layernorm.weight"),
                    q: p("self_attn.q_proj.weight"),
                    k: p("self_attn.k_proj.weight"),
                    v: p("self_attn.v_proj.weight"),
                    q_bias: opt(format!("model.layers.{l}.self_attn.q_proj.bias")),
                    k_bias: opt(format!("model.layers.{l}.self_attn.k_proj.bias")),
                    v_bias: opt(format!("model.layers.{l}.self_attn.v_proj.bias")),
                    o: p("self_attn.o_proj.weight"),
                    post_norm: p("post_attention_layernorm.weight"),
                    gate: p("mlp.gate_proj.weight"),
                    up: p("mlp.up_proj.weight"),
                    down: p("mlp.down_proj.weight"),
                }
            })
            .collect();
        let (cos, sin) = rope_tables(&config, dtype, device).map_err(TrainError::map)?;
        Ok(Llama {
            embed: take("model.embed_tokens.weight"),
            norm: take("model.norm.weight"),
            head: opt("lm_head.weight".into()),
            blocks,
            cos,
            sin,
            params,
            masks,
            device: device.clone(),
            dtype,
            compute: dtype,
            config,
        })
    }

    /// The same model with matrix products in `compute` (see [`Llama::compute`]).
    pub fn with_compute(mut self, compute: DType) -> Llama {
        self.compute = compute;
        self
    }

    /// The trainable variables in checkpoint order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.params
            .iter()
            .filter_map(|(n, p)| match p {
                Param::Train(v) => Some((n.clone(), v.clone())),
                Param::Frozen(_) => None,
            })
            .collect()
    }

    /// Logits `[batch, time, vocab]` for token ids `[batch, time]`. `grad` false skips the
    /// frozen-linear op (evaluation: no backward follows).
    pub fn forward(&self, tokens: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t) = tokens.dims2()?;
        let mut h = self
            .embed
            .tensor()
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, t, c.hidden))?;
        let mask = causal_mask(t, self.dtype, &self.device)?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let (hd, nh, nkv) = (c.head_dim, c.heads, c.kv_heads);
        let rep = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let cd = self.compute;
        let lin = |x: &Tensor, w: &Param, b: Option<&Param>| linear_in(x, w, b, grad, cd);
        // A product of two activations in the compute dtype, the result back in ours.
        let mm = |a: &Tensor, b: &Tensor| cast(&cast(a, cd)?.matmul(&cast(b, cd)?)?, self.dtype);
        for blk in &self.blocks {
            let x = rms_norm(&h, blk.input_norm.tensor(), c.eps)?;
            let q = lin(&x, &blk.q, blk.q_bias.as_ref())?;
            let k = lin(&x, &blk.k, blk.k_bias.as_ref())?;
            let v = lin(&x, &blk.v, blk.v_bias.as_ref())?;
            let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
            let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = candle_nn::rotary_emb::rope_slow(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_slow(&k, &cos, &sin)?;
            // Grouped-query attention without copying K and V: the `rep` query heads that
            // share a key-value head are stacked along time.
            let q = (q * scale)?.reshape((b, nkv, rep * t, hd))?;
            let scores = mm(&q, &k.t()?)?.reshape((b, nkv, rep, t, t))?;
            let scores = scores.broadcast_add(&mask)?;
            let att = super::ops::softmax(&scores)?.reshape((b, nkv, rep * t, t))?;
            let y = mm(&att, &v)?.reshape((b, nh, t, hd))?;
            let y = y.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            h = (h + lin(&y, &blk.o, None)?)?;
            let x = rms_norm(&h, blk.post_norm.tensor(), c.eps)?;
            let g = lin(&x, &blk.gate, None)?.silu()?;
            let u = lin(&x, &blk.up, None)?;
            h = (h + lin(&(g * u)?, &blk.down, None)?)?;
        }
        let h = rms_norm(&h, self.norm.tensor(), c.eps)?;
        lin(&h, self.head.as_ref().unwrap_or(&self.embed), None)
    }

    /// Current values of every parameter, for writing a checkpoint: name -> f64 values.
    pub fn values(&self, name: &str) -> Result<Vec<f64>> {
        let p = self
            .params
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::Internal(format!("no parameter `{name}`")))?;
        p.1.tensor()
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(TrainError::map)
    }
}

/// RMS norm `x / sqrt(mean(x²) + eps) * w`, with a backward (see [`super::ops`]).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    super::ops::rms_norm(x, w, eps)
}

fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..t * t)
        .map(|i| if i % t > i / t { -1e9 } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (t, t), device)?.to_dtype(dtype)
}

fn rope_tables(c: &Config, dtype: DType, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let n = c.max_positions.max(1);
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for i in 0..half {
            let inv = 1.0 / c.rope_theta.powf(2.0 * i as f64 / c.head_dim as f64);
            let a = p as f64 * inv;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}
