//! A differentiable Llama-family decoder (Llama, Mistral, Qwen2 with q/k/v biases, Qwen3 with
//! per-head q/k norms, tied embeddings, grouped-query attention) with Hugging Face parameter
//! names.
//!
//! Built only from ops that record a backward (candle-nn's fused `rms_norm`, `softmax_last_dim`,
//! `rope` and `sdpa` do not): on the CPU our own fused kernels with hand-written backward
//! passes ([`ops`], [`attention`], [`head`]); elsewhere RMS norm written out, `rope_slow`, an
//! explicit softmax and an additive causal mask. Weights come from a [`Checkpoint`] through its reader, are held in
//! f32 (or f64 for gradient checks), and every parameter the model needs must be in the
//! checkpoint: nothing is initialised silently.

pub mod attention;
pub mod head;
pub mod linear;
pub mod ops;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use crate::arch::{decoder, Category, Layout, ModelConfig};
use crate::error::{Error, Result};
use crate::io::dtype::{decode_f32, decode_f64};
use crate::io::Checkpoint;
use crate::plan::{Entry, Plan};
use crate::train::TrainError;
use linear::{cast, linear_in, Param};

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
    /// The whole config as the architecture tables read it.
    pub arch: ModelConfig,
}

impl Config {
    /// The trainer's view of a checkpoint's config (read by [`crate::arch::ModelConfig`]):
    /// refuses families `hft run` does not train and sizes a Llama attention cannot have.
    pub fn from_json(v: &Value, path: &Path) -> Result<Config> {
        let m = ModelConfig::from_json(v);
        let model_type = m.model_type().to_string();
        let trains = decoder::family_of(&model_type)
            .and_then(|f| f.decoder)
            .is_some_and(|d| d.trainable);
        if !trains {
            return Err(Error::input(
                path,
                format!(
                    "model_type `{model_type}` is not supported by `hft run` (it trains {})",
                    decoder::trainable_families().join(", ")
                ),
            ));
        }
        let hidden = m.need(path, "hidden_size", m.hidden)?;
        let heads = m.need(path, "num_attention_heads", m.heads)?;
        let c = Config {
            hidden,
            intermediate: m.need(path, "intermediate_size", m.intermediate)?,
            layers: m.need(path, "num_hidden_layers", m.layers)?,
            heads,
            kv_heads: m.kv_heads.unwrap_or(heads),
            head_dim: m.head_dim.unwrap_or(hidden / heads.max(1)),
            vocab: m.need(path, "vocab_size", m.vocab)?,
            eps: m.eps.unwrap_or(1e-6),
            rope_theta: m.rope_theta.unwrap_or(10000.0),
            max_positions: m.max_positions.unwrap_or(2048),
            tied: m.tied.unwrap_or(false),
            bos: m.bos,
            eos: m.eos,
            model_type,
            arch: m,
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
        if c.arch.attention_bias == Some(true) && c.model_type != "qwen2"
            || c.arch.mlp_bias == Some(true)
        {
            return Err(Error::input(
                path,
                "config.json asks for o_proj or MLP biases, which hft's Llama does not have",
            ));
        }
        Ok(c)
    }

    /// Every tensor the model needs, name and shape, in checkpoint order.
    pub fn tensors(&self, path: &Path) -> Result<Vec<(String, Vec<usize>)>> {
        let family = decoder::family_of(&self.model_type)
            .ok_or_else(|| Error::Internal(format!("no family `{}`", self.model_type)))?;
        decoder::tensors(family, &self.arch, path)
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
    /// Qwen3's per-head RMS norms of q and k (`[head_dim]`), before RoPE.
    q_norm: Option<Param>,
    k_norm: Option<Param>,
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
    rope: std::sync::Arc<attention::Rope>,
}

/// Builds the mask tensor (1 trains, 0 frozen) of a partially trained tensor.
pub fn element_mask(
    entry: &Entry,
    name: &str,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    // A batch at a time (`fill`), several times faster than element by element for the masks
    // evaluated forwards.
    let mut sel = vec![0u8; n];
    entry.element_fn(name, shape).fill(0, &mut sel, 1, 0);
    let v: Vec<f32> = sel.iter().map(|&b| f32::from(b)).collect();
    Tensor::from_vec(v, shape, device)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(TrainError::map)
}

/// The model's structure over its parameters by name (all loaded: checked by the caller).
fn assemble(
    config: &Config,
    map: &BTreeMap<String, Param>,
) -> (Param, Vec<Block>, Param, Option<Param>) {
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
                q_norm: opt(format!("model.layers.{l}.self_attn.q_norm.weight")),
                k_norm: opt(format!("model.layers.{l}.self_attn.k_norm.weight")),
                o: p("self_attn.o_proj.weight"),
                post_norm: p("post_attention_layernorm.weight"),
                gate: p("mlp.gate_proj.weight"),
                up: p("mlp.up_proj.weight"),
                down: p("mlp.down_proj.weight"),
            }
        })
        .collect();
    (
        take("model.embed_tokens.weight"),
        blocks,
        take("model.norm.weight"),
        opt("lm_head.weight".into()),
    )
}

impl Llama {
    /// Checks a checkpoint's headers against the model its config.json describes (every
    /// tensor there with its shape, nothing unknown, floats only) without reading weights.
    pub fn check(ck: &Checkpoint) -> Result<Config> {
        let src = &ck.source;
        let cfg_json = ck
            .config
            .as_ref()
            .ok_or_else(|| Error::input(src, "no config.json next to the weights"))?;
        let config = Config::from_json(cfg_json, src)?;
        let expected = config.tensors(src)?;
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        // Non-parameter buffers some exporters leave in checkpoints are ignored.
        let layout = Layout::for_checkpoint(ck);
        for t in ck.tensors() {
            let buffer = layout.role(&t.name).category == Category::Buffer;
            if !known.contains(t.name.as_str()) && !buffer {
                return Err(Error::input(
                    src,
                    format!(
                        "tensor `{}` has no place in a {} model as hft builds it (family unsupported?)",
                        t.name, config.model_type
                    ),
                ));
            }
        }
        for (name, want) in &expected {
            let info = ck.get(name).ok_or_else(|| {
                Error::input(
                    src,
                    format!("missing tensor `{name}`: nothing is initialised silently"),
                )
            })?;
            if &info.shape != want {
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
        }
        Ok(config)
    }

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
        let config = Self::check(ck)?;
        let expected = config.tensors(src)?;
        let mut map: BTreeMap<String, Param> = BTreeMap::new();
        let mut masks = BTreeMap::new();
        let mut params = Vec::new();
        for (name, _) in &expected {
            let info = ck.get(name).expect("checked");
            // Decoded straight into the parameter dtype (f32 when training: exact for BF16,
            // F16 and F32 storage), then the file's pages are dropped: the model holds its own
            // copy, and mapped pages would otherwise count against the run's memory.
            let t = if dtype == DType::F32 {
                let mut vals = vec![0f32; info.numel()];
                decode_f32(info.dtype, ck.bytes(info), &mut vals);
                Tensor::from_vec(vals, info.shape.as_slice(), device)
            } else {
                let mut vals = vec![0f64; info.numel()];
                decode_f64(info.dtype, ck.bytes(info), &mut vals);
                Tensor::from_vec(vals, info.shape.as_slice(), device)
                    .and_then(|t| t.to_dtype(dtype))
            }
            .map_err(TrainError::map)?;
            ck.release(info);
            let entry = plan.map_or(Entry::TRAIN, |p| {
                p.entry(name).cloned().unwrap_or(Entry::FREEZE)
            });
            let p = match &entry {
                Entry::Whole(crate::plan::State::Freeze) => Param::Frozen(t),
                Entry::Whole(crate::plan::State::Train) => {
                    Param::train(Var::from_tensor(&t).map_err(TrainError::map)?)
                }
                partial => {
                    if partial.trainable(&info.shape) == 0 {
                        Param::Frozen(t)
                    } else {
                        masks.insert(
                            name.clone(),
                            element_mask(partial, name, &info.shape, dtype, device)?,
                        );
                        Param::train(Var::from_tensor(&t).map_err(TrainError::map)?)
                    }
                }
            };
            map.insert(name.clone(), p.clone());
            params.push((name.clone(), p));
        }
        let (embed, blocks, norm, head) = assemble(&config, &map);
        let rope = std::sync::Arc::new(attention::Rope::new(
            config.head_dim,
            config.max_positions.max(1),
            config.rope_theta,
        ));
        Ok(Llama {
            embed,
            norm,
            head,
            blocks,
            rope,
            params,
            masks,
            device: device.clone(),
            dtype,
            compute: dtype,
            config,
        })
    }

    /// Makes exactly the tensors `trains` names trainable (whole) and the others frozen,
    /// keeping every value: LISA's switch of layers. A tensor that starts to train becomes a
    /// variable of its own (a copy) with an empty gradient sink; one that stops shares its
    /// storage as a plain tensor. Element masks are not touched (LISA draws whole layers).
    pub fn set_trainable(&mut self, trains: impl Fn(&str) -> bool) -> Result<()> {
        for (name, p) in self.params.iter_mut() {
            let want = trains(name);
            if want == p.is_trainable() {
                continue;
            }
            *p = if want {
                Param::train(Var::from_tensor(p.tensor()).map_err(TrainError::map)?)
            } else {
                Param::Frozen(p.tensor().detach())
            };
        }
        let map: BTreeMap<String, Param> = self.params.iter().cloned().collect();
        (self.embed, self.blocks, self.norm, self.head) = assemble(&self.config, &map);
        Ok(())
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
                Param::Train(v, _) => Some((n.clone(), v.clone())),
                Param::Frozen(_) => None,
            })
            .collect()
    }

    /// The gradients that linear ops accumulated in place since the last call (see
    /// [`linear::GradSink`]), in [`Llama::vars`] order; `None` where a gradient went through
    /// candle's store instead (norms, embeddings, biases, and everything off the CPU).
    pub fn take_sunk(&self) -> candle_core::Result<Vec<Option<Tensor>>> {
        self.params
            .iter()
            .filter_map(|(_, p)| match p {
                Param::Train(v, sink) => Some(sink.take(v.shape(), v.device())),
                Param::Frozen(_) => None,
            })
            .collect()
    }

    /// Every trainable parameter's gradient after one backward pass: candle's `store` plus
    /// what the linear ops sank, in [`Llama::vars`] order.
    pub fn gradients(
        &self,
        store: &candle_core::backprop::GradStore,
    ) -> candle_core::Result<Vec<(String, Option<Tensor>)>> {
        let sunk = self.take_sunk()?;
        self.vars()
            .into_iter()
            .zip(sunk)
            .map(|((n, v), s)| {
                let g = match (store.get(v.as_tensor()), s) {
                    (Some(a), Some(b)) => Some((a + b)?),
                    (a, b) => a.cloned().or(b),
                };
                Ok((n, g))
            })
            .collect()
    }

    /// The final hidden states `[batch, time, hidden]` (after the last norm) for token ids
    /// `[batch, time]`. `grad` false skips the frozen-linear op (no backward follows).
    pub fn hidden(&self, tokens: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        self.rows(tokens, grad)?.reshape((b, t, self.config.hidden))
    }

    /// [`Llama::hidden`] as rows `[batch·time, hidden]`: the states stay rows throughout, so
    /// linears, norms and residual adds need no reshape (every reshape is a graph node whose
    /// backward costs a zero tensor and an add in candle).
    pub fn rows(&self, tokens: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t) = tokens.dims2()?;
        let mut h = linear::embed(&self.embed, tokens, grad)?;
        let (hd, nh, nkv) = (c.head_dim, c.heads, c.kv_heads);
        let rep = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let cd = self.compute;
        let lin = |x: &Tensor, w: &Param, b: Option<&Param>| linear_in(x, w, b, grad, cd);
        // A product of two activations in the compute dtype, the result back in ours.
        let mm = |a: &Tensor, b: &Tensor| cast(&cast(a, cd)?.matmul(&cast(b, cd)?)?, self.dtype);
        let rope = Some(&self.rope);
        // Qwen3: each head's q or k vector RMS-normed, rows `[b·t, n·hd]` seen as `[b·t·n, hd]`.
        let head_norm = |x: Tensor, w: Option<&Param>, n: usize| match w {
            Some(w) => {
                rms_norm(&x.reshape((b * t * n, hd))?, w.tensor(), c.eps)?.reshape((b * t, n * hd))
            }
            None => Ok(x),
        };
        for blk in &self.blocks {
            let x = rms_norm(&h, blk.input_norm.tensor(), c.eps)?;
            // Heads [b, heads, t, hd]; grouped-query attention without copying K and V: the
            // `rep` query heads that share a key-value head are stacked along time, which is
            // the same memory as [b, kv_heads, rep·t, hd].
            let q = attention::heads(
                &head_norm(
                    lin(&x, &blk.q, blk.q_bias.as_ref())?,
                    blk.q_norm.as_ref(),
                    nh,
                )?,
                (b, t, nh, hd),
                rope,
                scale,
            )?
            .reshape((b, nkv, rep * t, hd))?;
            let k = attention::heads(
                &head_norm(
                    lin(&x, &blk.k, blk.k_bias.as_ref())?,
                    blk.k_norm.as_ref(),
                    nkv,
                )?,
                (b, t, nkv, hd),
                rope,
                1.0,
            )?;
            let v = attention::heads(
                &lin(&x, &blk.v, blk.v_bias.as_ref())?,
                (b, t, nkv, hd),
                None,
                1.0,
            )?;
            let att = attention::causal_softmax(&mm(&q, &k.t()?)?)?;
            let y = attention::merge(&mm(&att, &v)?, (b, t, nh, hd))?;
            h = (h + lin(&y, &blk.o, None)?)?;
            let x = rms_norm(&h, blk.post_norm.tensor(), c.eps)?;
            let g = lin(&x, &blk.gate, None)?;
            let u = lin(&x, &blk.up, None)?;
            let a = crate::train::model::ops::swiglu(&g, &u)?;
            h = (h + lin(&a, &blk.down, None)?)?;
        }
        rms_norm(&h, self.norm.tensor(), c.eps)
    }

    /// The LM head's weight: the head, or the embedding when they are tied.
    pub fn head(&self) -> &Param {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Logits `[batch, time, vocab]` for token ids `[batch, time]`. `grad` false skips the
    /// frozen-linear op (evaluation: no backward follows).
    pub fn forward(&self, tokens: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let h = self.hidden(tokens, grad)?;
        linear_in(&h, self.head(), None, grad, self.compute)
    }

    /// Logits `[rows.len(), vocab]` at the given rows of the batch (`row = sequence · time +
    /// position`), without a backward pass: scoring reads a few positions of each example (a
    /// fact's answer, a completion), so the head, a vocabulary-wide product, meets only those.
    pub fn logits_at(&self, tokens: &Tensor, rows: &[u32]) -> candle_core::Result<Tensor> {
        let idx = Tensor::new(rows, &self.device)?;
        let h = self.rows(tokens, false)?.index_select(&idx, 0)?;
        linear_in(&h, self.head(), None, false, self.compute)
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

/// RMS norm `x / sqrt(mean(x²) + eps) * w`, with a backward (see [`crate::train::ops`]).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    crate::train::model::ops::rms_norm(x, w, eps)
}
