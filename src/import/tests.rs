//! Tests of the GGUF import. The central one: the imported model, run by the trainer's forward
//! (Hugging Face rotary), gives the same next-token losses as an independent forward over the
//! GGUF's own tensors with llama.cpp's interleaved rotary.

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType as CDType, Device, IndexOp, Tensor, D};

use super::*;
use crate::fixtures::gguf::{permute_rows, TinyGguf};
use crate::io::dtype::decode_f32;
use crate::io::Checkpoint;
use crate::train::model::Llama;

fn opts() -> ImportOptions {
    ImportOptions {
        dtype: DType::F32,
        force: false,
        tokenizer: true,
        command: "test".into(),
    }
}

fn tiny(dir: &Path, spec: &TinyGguf) -> (PathBuf, PathBuf) {
    let g = dir.join("tiny.gguf");
    spec.write(&g).unwrap();
    let out = dir.join("hf");
    import(&g, &out, &opts(), &crate::progress::Silent).unwrap();
    (g, out)
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    let (rows, cols, heads) = (24, 5, 3);
    let v: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    assert_eq!(
        unpermute_rows(&permute_rows(&v, rows, heads), rows, heads),
        v
    );
    // Within head 0 (head_dim 8): GGUF row 1 is Hugging Face row 4 (pair partner of row 0).
    let p = permute_rows(&v, rows, heads);
    assert_eq!(&p[cols..2 * cols], &v[4 * cols..5 * cols]);
    // Bias vectors (one value per row) too.
    let b: Vec<f32> = (0..rows).map(|i| i as f32).collect();
    assert_eq!(
        unpermute_rows(&permute_rows(&b, rows, heads), rows, heads),
        b
    );
}

#[test]
fn f32_import_restores_hugging_face_weights_exactly() {
    // llama (q/k rows un-permuted) and qwen3 (q/k norms, rows as they are).
    for arch in ["llama", "qwen3"] {
        let d = tempfile::tempdir().unwrap();
        let spec = TinyGguf {
            arch: arch.into(),
            quant: GgmlDType::F32,
            tied: false,
            ..TinyGguf::default()
        };
        let (_, out) = tiny(d.path(), &spec);
        let ck = Checkpoint::open(&out).unwrap();
        let want = spec.hf_weights();
        assert_eq!(ck.tensors().len(), want.len());
        for (name, shape, vals) in want {
            let t = ck.get(&name).unwrap_or_else(|| panic!("missing {name}"));
            assert_eq!(t.shape, shape, "{name}");
            let mut got = vec![0f32; t.numel()];
            decode_f32(t.dtype, ck.bytes(t), &mut got);
            assert_eq!(got, vals, "{arch}: {name} differs");
        }
        let cfg = ck.config.as_ref().unwrap();
        assert_eq!(cfg["tie_word_embeddings"], false);
        assert_eq!(cfg["num_key_value_heads"], 2);
        assert_eq!(cfg["rms_norm_eps"], 1e-5);
        assert_eq!(cfg["model_type"], arch);
        // The trainer takes the output as it is.
        Llama::load(&ck, None, CDType::F32, &Device::Cpu).unwrap();
    }
}

/// Rotary tables `[t, hd/2]` as both Llama layouts use them.
fn rope_tables(t: usize, hd: usize, theta: f64) -> (Tensor, Tensor) {
    let mut c = Vec::new();
    let mut s = Vec::new();
    for p in 0..t {
        for i in 0..hd / 2 {
            let a = p as f64 / theta.powf(2.0 * i as f64 / hd as f64);
            c.push(a.cos() as f32);
            s.push(a.sin() as f32);
        }
    }
    (
        Tensor::from_vec(c, (t, hd / 2), &Device::Cpu).unwrap(),
        Tensor::from_vec(s, (t, hd / 2), &Device::Cpu).unwrap(),
    )
}

/// An independent Llama forward over the GGUF's tensors as stored (Q and K rows in llama.cpp's
/// order), head by head, with interleaved rotary (`rope_i_slow`) or, to show the test can
/// fail, the Hugging Face rotary. Logits `[t, vocab]`.
fn reference_logits(m: &GgufModel, ids: &[u32], interleaved: bool) -> Tensor {
    let h = &m.hparams;
    let dev = Device::Cpu;
    let w = |name: &str| {
        let mp = m.tensors.iter().find(|t| t.gguf == name).unwrap();
        Tensor::from_vec(m.gguf_values(name).unwrap(), mp.shape.as_slice(), &dev).unwrap()
    };
    let rms = |x: &Tensor, g: &Tensor| -> Tensor {
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        x.broadcast_div(&(ms + h.eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(g)
            .unwrap()
    };
    let t = ids.len();
    let hd = h.head_dim;
    let (cos, sin) = rope_tables(t, hd, h.rope_theta);
    let embed = w("token_embd.weight");
    let ids_t = Tensor::from_vec(ids.to_vec(), t, &dev).unwrap();
    let mut x = embed.index_select(&ids_t, 0).unwrap();
    let mask: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
    let rep = h.heads / h.kv_heads;
    for l in 0..h.layers {
        let b = |n: &str| w(&format!("blk.{l}.{n}"));
        let xn = rms(&x, &b("attn_norm.weight"));
        let proj = |wt: &Tensor, n: usize| {
            let y = xn.matmul(&wt.t().unwrap()).unwrap();
            y.reshape((1, t, n, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = proj(&b("attn_q.weight"), h.heads);
        let k = proj(&b("attn_k.weight"), h.kv_heads);
        let v = proj(&b("attn_v.weight"), h.kv_heads);
        let rope = |z: &Tensor| {
            if interleaved {
                candle_nn::rotary_emb::rope_i_slow(z, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope_slow(z, &cos, &sin).unwrap()
            }
        };
        let (q, k) = (rope(&q), rope(&k));
        let mut heads = Vec::new();
        for hh in 0..h.heads {
            let qh = q.i((0, hh)).unwrap();
            let kh = k.i((0, hh / rep)).unwrap();
            let vh = v.i((0, hh / rep)).unwrap();
            let s = (qh.matmul(&kh.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
            let a = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&mask).unwrap()).unwrap();
            heads.push(a.matmul(&vh).unwrap());
        }
        let y = Tensor::cat(&heads, 1).unwrap();
        x = (x + y.matmul(&b("attn_output.weight").t().unwrap()).unwrap()).unwrap();
        let xn = rms(&x, &b("ffn_norm.weight"));
        let g = xn
            .matmul(&b("ffn_gate.weight").t().unwrap())
            .unwrap()
            .silu()
            .unwrap();
        let u = xn.matmul(&b("ffn_up.weight").t().unwrap()).unwrap();
        x = (x
            + (g * u)
                .unwrap()
                .matmul(&b("ffn_down.weight").t().unwrap())
                .unwrap())
        .unwrap();
    }
    let x = rms(&x, &w("output_norm.weight"));
    let head = if m.tied() { embed } else { w("output.weight") };
    x.matmul(&head.t().unwrap()).unwrap()
}

/// The trainer's logits `[t, vocab]` on the imported checkpoint.
fn trainer_logits(model: &Llama, ids: &[u32]) -> Tensor {
    let x = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    model.forward(&x, false).unwrap().squeeze(0).unwrap()
}

/// Mean next-token negative log-likelihood of `ids` under `logits`.
fn next_token_loss(logits: &Tensor, ids: &[u32]) -> f64 {
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1).unwrap();
    let lp: Vec<Vec<f32>> = lp.to_vec2().unwrap();
    let n = ids.len() - 1;
    -(0..n)
        .map(|p| lp[p][ids[p + 1] as usize] as f64)
        .sum::<f64>()
        / n as f64
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Runs both forwards on `sentences`; returns (trainer loss, reference loss, wrong-rope loss,
/// max logit difference) averaged over the sentences.
fn compare(gguf: &Path, hf: &Path, sentences: &[&str]) -> (f64, f64, f64, f32) {
    let m = GgufModel::open(gguf).unwrap();
    let ck = Checkpoint::open(hf).unwrap();
    let model = Llama::load(&ck, None, CDType::F32, &Device::Cpu).unwrap();
    let tok_path = hf.join("tokenizer.json");
    let tok = crate::tokenizer::load(&tok_path).unwrap();
    let (mut a, mut b, mut c, mut diff) = (0.0, 0.0, 0.0, 0f32);
    for s in sentences {
        let ids = tok.encode(s).unwrap();
        assert!(ids.len() > 3, "{s:?} -> {ids:?}");
        let ours = trainer_logits(&model, &ids);
        let reference = reference_logits(&m, &ids, true);
        let wrong = reference_logits(&m, &ids, false);
        a += next_token_loss(&ours, &ids);
        b += next_token_loss(&reference, &ids);
        c += next_token_loss(&wrong, &ids);
        diff = diff.max(max_abs_diff(&ours, &reference));
    }
    let n = sentences.len() as f64;
    (a / n, b / n, c / n, diff)
}

const SENTENCES: [&str; 3] = [
    "The capital of France is Paris.",
    "Water boils at 100 degrees Celsius at sea level.",
    "She sat on the mat and the cat sat on her.",
];

#[test]
fn imported_loss_matches_gguf_forward_with_interleaved_rotary() {
    let d = tempfile::tempdir().unwrap();
    let spec = TinyGguf::default(); // Q8_0 matrices, tied, grouped-query attention
    let (g, out) = tiny(d.path(), &spec);
    let (ours, reference, wrong, diff) = compare(&g, &out, &SENTENCES);
    eprintln!("tiny: trainer {ours:.6}, reference {reference:.6}, wrong rotary {wrong:.6}, max logit diff {diff:.2e}");
    assert!(
        (ours - reference).abs() < 1e-4,
        "trainer {ours} vs GGUF reference {reference}"
    );
    assert!(diff < 1e-3, "max logit difference {diff}");
    // The check has teeth: the same tensors with the other rotary layout score differently.
    assert!(
        (wrong - reference).abs() > 1e-2,
        "wrong-layout loss {wrong} too close to {reference}"
    );
}

#[test]
fn real_smollm2_loss_matches_gguf_forward() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let g = std::env::var_os("HFT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if !g.is_file() {
        eprintln!(
            "skipping: {} absent (run scripts/fetch-smollm2.sh or set HFT_SMOLLM2_GGUF)",
            g.display()
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("hf");
    import(&g, &out, &opts(), &crate::progress::Silent).unwrap();
    let (ours, reference, wrong, diff) = compare(&g, &out, &SENTENCES);
    eprintln!(
        "SmolLM2: trainer loss {ours:.6}, GGUF interleaved reference {reference:.6}, \
         wrong rotary {wrong:.6}, max logit diff {diff:.2e}"
    );
    assert!(
        (ours - reference).abs() < 1e-3,
        "trainer {ours} vs reference {reference}"
    );
    // A real model knows English: the loss is far below uniform (ln 49152 = 10.8).
    assert!(ours < 5.0, "loss {ours}");
}

#[test]
fn tokenizer_json_reproduces_byte_level_bpe() {
    let d = tempfile::tempdir().unwrap();
    let (_, out) = tiny(d.path(), &TinyGguf::default());
    let p = out.join("tokenizer.json");
    let tok = crate::tokenizer::load(&p).unwrap();
    // Bytes are ids 3 + b; merges follow from 259: Ġt, he, Ġthe, in, Ġa, er, Ġs, on, Ġc, at.
    assert_eq!(tok.encode("the cat").unwrap(), vec![3 + 116, 260, 267, 268]);
    assert_eq!(tok.encode(" the").unwrap(), vec![261]);
    // Special tokens are matched whole.
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![2]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert!(cfg["chat_template"].as_str().unwrap().contains("im_start"));
}

#[test]
fn bad_inputs_are_one_line_errors_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let g = d.path().join("m.gguf");
    TinyGguf {
        arch: "gpt2".into(),
        ..TinyGguf::default()
    }
    .write(&g)
    .unwrap();
    let e = import(&g, &d.path().join("o"), &opts(), &crate::progress::Silent).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let msg = e.to_string();
    assert!(
        msg.contains("m.gguf") && msg.contains("architecture `gpt2`"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));

    let g2 = d.path().join("p.gguf");
    TinyGguf {
        pre: "chameleon".into(),
        ..TinyGguf::default()
    }
    .write(&g2)
    .unwrap();
    let e = import(&g2, &d.path().join("o2"), &opts(), &crate::progress::Silent).unwrap_err();
    assert!(e.to_string().contains("pre-tokenizer `chameleon`"), "{e}");
    assert!(!d.path().join("o2").exists(), "nothing written on failure");
    // Without the tokenizer the same file imports.
    let o = ImportOptions {
        tokenizer: false,
        ..opts()
    };
    import(&g2, &d.path().join("o3"), &o, &crate::progress::Silent).unwrap();
    assert!(!d.path().join("o3/tokenizer.json").exists());
}

#[test]
fn bytes_missing_from_the_vocabulary_are_dropped_like_hugging_face_does() {
    let d = tempfile::tempdir().unwrap();
    let (_, out) = tiny(d.path(), &TinyGguf::default());
    let p = out.join("tokenizer.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    // Byte 0x04 is `Ą` in the byte-level alphabet; remove it (SmolLM2's vocabulary lacks it).
    let vocab = doc["model"]["vocab"].as_object_mut().unwrap();
    assert_eq!(vocab.remove("\u{104}"), Some(serde_json::json!(3 + 4)));
    let q = d.path().join("holey.json");
    std::fs::write(&q, serde_json::to_string(&doc).unwrap()).unwrap();
    let tok = crate::tokenizer::load(&q).unwrap();
    assert_eq!(tok.limit, Some(269));
    assert_eq!(tok.encode("a\u{4}b").unwrap(), vec![3 + 97, 3 + 98]);
}
