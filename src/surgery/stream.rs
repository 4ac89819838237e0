//! Streaming one tensor of a surgery from the inputs' memory maps to the writer: whole copies,
//! row ranges, and block-parallel combination (per-thread scratch, one positional write per
//! block, input pages released behind the work so the resident set stays small).

use rayon::prelude::*;

use super::{decode_checked, Combine, Job, PickFn, Source, TensorOp, TensorView, ValuesFn, BLOCK};
use crate::arch::Layout;
use crate::error::{Error, Result};
use crate::io::dtype::{self, DType, CHUNK};
use crate::io::writer::CheckpointWriter;
use crate::io::{Checkpoint, TensorInfo};
use crate::progress::Progress;

pub(super) fn write_tensor(
    inputs: &[&Checkpoint],
    layout: &Layout,
    combine: &dyn Combine,
    w: &CheckpointWriter,
    ti: usize,
    job: &Job,
    progress: &Progress,
) -> Result<()> {
    let numel: usize = job.spec.shape.iter().product();
    let out_dtype = job.spec.dtype;
    match job.source {
        Source::Copy(i) => {
            let info = job.infos[i].expect("copy source");
            copy_elements(inputs[i], info, 0, numel, w, ti, out_dtype, progress)?;
            // The other inputs' copies count as done for the bar (it counts input bytes).
            let others = job.infos.iter().enumerate().filter(|(k, _)| *k != i);
            progress.inc(
                others
                    .map(|(_, t)| t.map_or(0, |t| t.nbytes() as u64))
                    .sum(),
            );
            Ok(())
        }
        Source::Combine { shared, extra_from } => {
            let ins: Vec<(&Checkpoint, &TensorInfo)> = inputs
                .iter()
                .zip(&job.infos)
                .map(|(ck, t)| (*ck, t.expect("every input holds it")))
                .collect();
            let view = TensorView {
                name: &job.spec.name,
                shape: &job.spec.shape,
                numel: shared,
                role: layout.role(&job.spec.name),
                inputs: ins,
            };
            match combine.tensor(&view)? {
                TensorOp::Copy(i) => {
                    copy_elements(
                        inputs[i],
                        view.inputs[i].1,
                        0,
                        shared,
                        w,
                        ti,
                        out_dtype,
                        progress,
                    )?;
                    let others = view.inputs.iter().enumerate().filter(|(k, _)| *k != i);
                    let elem = |t: &TensorInfo| dtype::elem_bytes(t.dtype).unwrap_or(1);
                    progress.inc(others.map(|(_, (_, t))| (shared * elem(t)) as u64).sum());
                }
                TensorOp::Pick(f) => {
                    run_blocks(&view, w, ti, out_dtype, progress, Kernel::Pick(&f))?
                }
                TensorOp::Values(f) => {
                    run_blocks(&view, w, ti, out_dtype, progress, Kernel::Values(&f))?
                }
            }
            if shared < numel {
                let info = job.infos[extra_from].expect("extra rows source");
                copy_elements(
                    inputs[extra_from],
                    info,
                    shared,
                    numel,
                    w,
                    ti,
                    out_dtype,
                    progress,
                )?;
            }
            Ok(())
        }
    }
}

enum Kernel<'k, 'a> {
    Pick(&'k PickFn<'a>),
    Values(&'k ValuesFn<'a>),
}

/// Per-thread scratch: decoded input chunks, the output chunk, the picked sources, and the
/// encoded bytes of one block (written with a single positional write).
struct Scratch {
    ins: Vec<Vec<f32>>,
    out: Vec<f32>,
    sel: Vec<u8>,
    bytes: Vec<u8>,
}

fn run_blocks(
    view: &TensorView,
    w: &CheckpointWriter,
    ti: usize,
    out_dtype: DType,
    progress: &Progress,
    kernel: Kernel,
) -> Result<()> {
    let n = view.inputs.len();
    let oeb = dtype::elem_bytes(out_dtype).expect("float dtype");
    // A pick is a byte copy when every input is already stored in the output dtype.
    let raw_pick = view.inputs.iter().all(|(_, t)| t.dtype == out_dtype);
    let blocks = view.numel.div_ceil(BLOCK);
    (0..blocks).into_par_iter().try_for_each_init(
        || Scratch {
            ins: vec![vec![0f32; CHUNK]; n],
            out: vec![0f32; CHUNK],
            sel: vec![0u8; CHUNK],
            bytes: vec![0u8; BLOCK * oeb],
        },
        |sc, b| {
            let (lo, hi) = (b * BLOCK, ((b + 1) * BLOCK).min(view.numel));
            // Every byte of the block is overwritten below, so the buffer is never re-zeroed.
            let mut s = lo;
            while s < hi {
                let e = (s + CHUNK).min(hi);
                let len = e - s;
                let dst = &mut sc.bytes[(s - lo) * oeb..(e - lo) * oeb];
                match &kernel {
                    Kernel::Pick(f) => {
                        f(s, &mut sc.sel[..len]);
                        if raw_pick {
                            gather_bytes(&view.inputs, &sc.sel[..len], s, oeb, dst);
                        } else {
                            decode_checked(&view.inputs, s, e, &mut sc.ins)?;
                            for (j, o) in sc.out[..len].iter_mut().enumerate() {
                                *o = sc.ins[sc.sel[j] as usize][j];
                            }
                            fits(w, ti, out_dtype, &sc.out[..len], s)?;
                            dtype::encode_f32(out_dtype, &sc.out[..len], dst);
                        }
                    }
                    Kernel::Values(f) => {
                        decode_checked(&view.inputs, s, e, &mut sc.ins)?;
                        let ins: Vec<&[f32]> = sc.ins.iter().map(|v| &v[..len]).collect();
                        f(s, &ins, &mut sc.out[..len]);
                        finite(w, ti, &ins, &sc.out[..len], s)?;
                        fits(w, ti, out_dtype, &sc.out[..len], s)?;
                        dtype::encode_f32(out_dtype, &sc.out[..len], dst);
                    }
                }
                s = e;
            }
            w.write(ti, lo * oeb, &sc.bytes[..(hi - lo) * oeb])?;
            let mut read = 0u64;
            for (ck, t) in &view.inputs {
                let eb = dtype::elem_bytes(t.dtype).expect("float dtype");
                release_range(ck, t, lo * eb, hi * eb);
                read += ((hi - lo) * eb) as u64;
            }
            progress.inc(read);
            Ok(())
        },
    )
}

/// Refuses values the output dtype would turn into infinity (`--dtype f16` on a tensor with
/// values above 65504), naming the tensor and the element.
fn fits(w: &CheckpointWriter, ti: usize, out: DType, vals: &[f32], start: usize) -> Result<()> {
    match dtype::first_overflow(out, vals) {
        None => Ok(()),
        Some((i, v)) => Err(Error::field(
            "dtype",
            format!(
                "tensor `{}`: element {} is {v}, beyond the largest {} (it would become \
                 infinite); keep the input's dtype or choose {}",
                w.specs()[ti].name,
                start + i,
                dtype::name(out),
                if out == DType::F16 {
                    "bf16 or f32"
                } else {
                    "f32"
                }
            ),
        )),
    }
}

/// Refuses a combination that turned finite inputs into infinity or NaN (a weight or lambda
/// so large the f32 arithmetic overflows), naming the tensor and the element.
fn finite(
    w: &CheckpointWriter,
    ti: usize,
    ins: &[&[f32]],
    out: &[f32],
    start: usize,
) -> Result<()> {
    // One pass that vectorises first (the search below stops early and does not).
    if out.iter().fold(true, |a, v| a & v.is_finite()) {
        return Ok(());
    }
    let bad = out
        .iter()
        .enumerate()
        .find(|(j, v)| !v.is_finite() && ins.iter().all(|x| x[*j].is_finite()));
    match bad {
        None => Ok(()),
        Some((j, v)) => Err(Error::usage(format!(
            "tensor `{}`: element {} came out {v} from finite inputs; the weights, lambda or \
             scale are too large for f32 arithmetic",
            w.specs()[ti].name,
            start + j
        ))),
    }
}

/// Copies element `i` from input `sel[i]`, `eb` bytes each.
fn gather_bytes(
    inputs: &[(&Checkpoint, &TensorInfo)],
    sel: &[u8],
    start: usize,
    eb: usize,
    dst: &mut [u8],
) {
    let srcs: Vec<&[u8]> = inputs
        .iter()
        .map(|(ck, t)| &ck.bytes(t)[start * eb..(start + sel.len()) * eb])
        .collect();
    match (srcs.as_slice(), eb) {
        ([a, b], 2) => return blend::<2>(a, b, sel, dst),
        ([a, b], 4) => return blend::<4>(a, b, sel, dst),
        _ => {}
    }
    // Runs of the same source are copied as one slice: whole-tensor and row-wise picks are runs.
    let mut j = 0;
    while j < sel.len() {
        let src = sel[j];
        let mut k = j + 1;
        while k < sel.len() && sel[k] == src {
            k += 1;
        }
        dst[j * eb..k * eb].copy_from_slice(&srcs[src as usize][j * eb..k * eb]);
        j = k;
    }
}

/// `dst` = element `j` of `a` where `sel[j]` is 0, of `b` where it is 1, without a branch: an
/// element mask alternates sources every other element, where copying runs would cost a call
/// per element or two. Per 64 bytes, the selection is first spread into a byte mask, so the
/// pick itself is one loop over bytes that the compiler vectorises (2.3x faster for BF16 than
/// picking element by element).
fn blend<const E: usize>(a: &[u8], b: &[u8], sel: &[u8], dst: &mut [u8]) {
    const { assert!(E > 0 && 64 % E == 0) };
    let blocks = dst.chunks_mut(64).zip(a.chunks(64).zip(b.chunks(64)));
    for ((d, (a, b)), s) in blocks.zip(sel.chunks(64 / E)) {
        let mut m = [0u8; 64];
        for (j, &x) in s.iter().enumerate() {
            let v = 0u8.wrapping_sub(x);
            for i in 0..E {
                m[j * E + i] = v;
            }
        }
        // Indexed (not zipped iterators): this form is the one that vectorises.
        #[allow(clippy::needless_range_loop)]
        for i in 0..d.len() {
            d[i] = a[i] ^ ((a[i] ^ b[i]) & m[i]);
        }
    }
}

/// Copies elements `lo..hi` of one input tensor into output tensor `ti` at the same element
/// positions, converting when the output dtype differs.
#[allow(clippy::too_many_arguments)]
fn copy_elements(
    ck: &Checkpoint,
    info: &TensorInfo,
    lo: usize,
    hi: usize,
    w: &CheckpointWriter,
    ti: usize,
    out_dtype: DType,
    progress: &Progress,
) -> Result<()> {
    let ieb = dtype::elem_bytes(info.dtype);
    let data = ck.bytes(info);
    if info.dtype == out_dtype || !dtype::is_float(info.dtype) {
        let eb = ieb.unwrap_or(1);
        // Sub-byte dtypes (never converted) are copied whole.
        let (blo, bhi) = match ieb {
            Some(eb) => (lo * eb, hi * eb),
            None => (0, data.len()),
        };
        let step = BLOCK * eb;
        let starts: Vec<usize> = (blo..bhi).step_by(step.max(1)).collect();
        let src = &ck.shards[info.shard].path;
        starts.into_par_iter().try_for_each(|s| {
            let e = (s + step).min(bhi);
            w.copy_from(ti, s, src, (info.start + s) as u64, e - s)?;
            progress.inc((e - s) as u64);
            Ok(())
        })
    } else {
        let ieb = ieb.expect("float dtype");
        let oeb = dtype::elem_bytes(out_dtype).expect("float dtype");
        let blocks: Vec<usize> = (lo..hi).step_by(BLOCK).collect();
        blocks.into_par_iter().try_for_each_init(
            || (vec![0f32; CHUNK], Vec::new()),
            |(vals, bytes), b| {
                let e = (b + BLOCK).min(hi);
                bytes.clear();
                bytes.resize((e - b) * oeb, 0);
                let mut s = b;
                while s < e {
                    let ce = (s + CHUNK).min(e);
                    super::beyond_f32(ck, info, &data[s * ieb..ce * ieb], s)?;
                    dtype::decode_f32(info.dtype, &data[s * ieb..ce * ieb], &mut vals[..ce - s]);
                    fits(w, ti, out_dtype, &vals[..ce - s], s)?;
                    dtype::encode_f32(
                        out_dtype,
                        &vals[..ce - s],
                        &mut bytes[(s - b) * oeb..(ce - b) * oeb],
                    );
                    s = ce;
                }
                w.write(ti, b * oeb, bytes)?;
                release_range(ck, info, b * ieb, e * ieb);
                progress.inc(((e - b) * ieb) as u64);
                Ok(())
            },
        )
    }
}

/// Drops the pages of bytes `lo..hi` of a tensor we are done with, block by block, so the
/// resident set stays at a few blocks per thread (see [`Checkpoint::release`]).
fn release_range(ck: &Checkpoint, info: &TensorInfo, lo: usize, hi: usize) {
    ck.release_range(info, lo, hi);
}
