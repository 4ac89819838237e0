//! Element types: which ones we can do arithmetic on, and bulk conversion between their
//! little-endian bytes and f32/f64.
//!
//! Conversions work on slices so the compiler can vectorise them; callers walk a tensor in
//! chunks of [`CHUNK`] elements so no buffer grows with the tensor.

pub use safetensors::Dtype as DType;

use crate::error::{Error, Result};

/// Elements per chunk when streaming a tensor: large enough to amortise the loop overhead,
/// small enough that a chunk of f64s (512 KiB) stays in L2.
pub const CHUNK: usize = 64 * 1024;

/// True for the dtypes we decode and compare numerically.
pub fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// Bytes per element, or `None` for sub-byte types (F4, F6), which we only compare as bytes.
pub fn elem_bytes(dtype: DType) -> Option<usize> {
    let bits = dtype.bitsize();
    bits.is_multiple_of(8).then_some(bits / 8)
}

/// Parses the names users type (`bf16`, `F32`, `float16`, ...) into a float dtype.
pub fn parse_float(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f32" | "fp32" | "float32" | "float" => Ok(DType::F32),
        "f64" | "fp64" | "float64" | "double" => Ok(DType::F64),
        _ => Err(Error::usage(format!(
            "unknown dtype `{s}`: expected one of bf16, f16, f32, f64"
        ))),
    }
}

/// The name safetensors and Hugging Face use (`BF16`, `F32`, ...).
pub fn name(dtype: DType) -> String {
    dtype.to_string()
}

/// Decodes little-endian `bytes` of a float dtype into `out` (same element count).
#[inline(always)]
pub fn decode_f64(dtype: DType, bytes: &[u8], out: &mut [f64]) {
    match dtype {
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64;
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64();
            }
        }
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().expect("8-byte chunk"));
            }
        }
        other => unreachable!("decode_f64 called on non-float dtype {other}"),
    }
}

/// Decodes into f32, the working precision of merges (f64 inputs are rounded).
pub fn decode_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32;
            }
        }
        other => unreachable!("decode_f32 called on non-float dtype {other}"),
    }
}

/// Encodes f32 values as `dtype`, rounding to nearest even for BF16 and F16.
/// The first value of `values` that `dtype` cannot hold as a finite number (`|v|` above its
/// largest: 65504 for f16; for bf16 the values that round up to infinity), with its index.
/// Values already infinite or NaN are not reported here.
pub fn first_overflow(dtype: DType, values: &[f32]) -> Option<(usize, f32)> {
    let max = match dtype {
        // Halfway between the largest finite value and infinity rounds (to even) up.
        DType::F16 => 65520.0_f32,
        DType::BF16 => f32::from_bits(0x7F7F_8000),
        _ => return None,
    };
    let over = |v: &f32| v.is_finite() && v.abs() >= max;
    // One pass that vectorises first: a search that stops at the first hit does not, and
    // this runs over every value a merge writes.
    if !values.iter().fold(false, |a, v| a | over(v)) {
        return None;
    }
    values.iter().position(over).map(|i| (i, values[i]))
}

/// For an F64 tensor read into f32 arithmetic: the first value that is finite in f64 but beyond
/// f32's range (it would become infinite), with its index. `None` for every other dtype.
pub fn first_beyond_f32(dtype: DType, bytes: &[u8]) -> Option<(usize, f64)> {
    if dtype != DType::F64 {
        return None;
    }
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .enumerate()
        .find(|(_, v)| v.is_finite() && v.abs() > f32::MAX as f64)
}

pub fn encode_f32(dtype: DType, values: &[f32], out: &mut [u8]) {
    match dtype {
        DType::BF16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&bf16_bits(*v).to_le_bytes());
            }
        }
        DType::F16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        DType::F32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F64 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(8)) {
                o.copy_from_slice(&(*v as f64).to_le_bytes());
            }
        }
        other => unreachable!("encode_f32 called on non-float dtype {other}"),
    }
}

/// `half::bf16::from_f32(v).to_bits()` without a branch, so that encoding vectorises: round
/// to nearest even by adding `0x7FFF` plus the lowest kept bit, and a NaN keeps its high bits
/// with the quiet bit set.
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
    // A signed comparison (the masked value is never negative as i32) vectorises on SSE2.
    let nan = (x & 0x7FFF_FFFF) as i32 > 0x7F80_0000;
    (if nan { (x >> 16) | 0x0040 } else { rounded }) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_is_half_s() {
        let check = |x: u32| {
            let v = f32::from_bits(x);
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{x:#010x}");
        };
        // Every low half (the rounding bits) under high halves at the edges: zeros,
        // subnormals, the largest finite values, infinities and NaNs, both signs.
        for hi in [
            0x0000u32, 0x0001, 0x007F, 0x0080, 0x3F80, 0x7F7F, 0x7F80, 0x7FC0, 0x7FFF,
        ] {
            for sign in [0, 0x8000] {
                for lo in 0..=0xFFFFu32 {
                    check(((hi | sign) << 16) | lo);
                }
            }
        }
        // And a stride through all of them.
        (0..=u32::MAX).step_by(65_521).for_each(check);
    }

    #[test]
    fn overflow_is_found_exactly_where_rounding_reaches_infinity() {
        let f16 = [65504.0, 65519.0, 65520.0];
        assert_eq!(first_overflow(DType::F16, &f16), Some((2, 65520.0)));
        assert!(half::f16::from_f32(65519.0).is_finite());
        assert!(half::f16::from_f32(65520.0).is_infinite());
        let big = f32::from_bits(0x7F7F_8000);
        assert!(half::bf16::from_f32(big).is_infinite());
        assert!(half::bf16::from_f32(f32::from_bits(0x7F7F_7FFF)).is_finite());
        assert_eq!(first_overflow(DType::BF16, &[1.0, -big]), Some((1, -big)));
        assert_eq!(first_overflow(DType::F32, &[f32::MAX]), None);
        assert_eq!(first_overflow(DType::F16, &[f32::INFINITY, f32::NAN]), None);
    }

    #[test]
    fn bf16_round_trip_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
        let v = [1.0f32 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -2.5, 0.0];
        let mut bytes = vec![0u8; 8];
        encode_f32(DType::BF16, &v, &mut bytes);
        let mut back = [0f32; 4];
        decode_f32(DType::BF16, &bytes, &mut back);
        assert_eq!(back, [1.0, 1.0 + 2.0 * 2f32.powi(-7), -2.5, 0.0]);
    }

    #[test]
    fn every_float_dtype_decodes_exact_values() {
        let v = [0.5f32, -3.0, 1024.0, 0.0];
        for dt in [DType::BF16, DType::F16, DType::F32, DType::F64] {
            let mut bytes = vec![0u8; 4 * elem_bytes(dt).unwrap()];
            encode_f32(dt, &v, &mut bytes);
            let mut f64s = [0f64; 4];
            decode_f64(dt, &bytes, &mut f64s);
            assert_eq!(f64s, [0.5, -3.0, 1024.0, 0.0], "{dt}");
        }
    }

    #[test]
    fn parse_accepts_common_spellings() {
        assert_eq!(parse_float("bfloat16").unwrap(), DType::BF16);
        assert_eq!(parse_float("F32").unwrap(), DType::F32);
        assert!(parse_float("int8").is_err());
    }
}
