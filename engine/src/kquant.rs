//! ggml's K-quants as GGUF stores them: 256-element super-blocks whose sub-block scales (and mins) are
//! themselves quantized inside the block.
//!
//! - Q4_K, 144 bytes: f16 `d`, f16 `dmin`, 12 bytes packing eight 6-bit scales and eight 6-bit mins,
//!   then 128 bytes of 4-bit codes. Sub-block `j` (32 elements): `x = d * sc[j] * q - dmin * m[j]`.
//! - Q5_K, 176 bytes: as Q4_K, with 32 bytes of fifth bits (`qh`) before the low nibbles.
//! - Q6_K, 210 bytes: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, sixteen signed 8-bit
//!   scales, f16 `d`. Sub-block `j` (16 elements): `x = d * sc[j] * (q - 32)`.
//!
//! Dequantization does ggml's reference operations in the same order, in f32 (no fused multiply-add),
//! so it is bit-identical to ggml's `dequantize_row_q*_K` and gguf-py's `dequantize`.

use crate::dtype::{GgmlType, QK_K};
use half::f16;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Scale and min of sub-block `j` from Q4_K/Q5_K's 12 packed bytes: the first four keep 6 bits in
/// bytes 0..8, the last four keep their low 4 bits in bytes 8..12 and their top 2 bits in the spare
/// top bits of bytes 0..8.
fn scale_min(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

/// Dequantizes one super-block `b` (exactly [`GgmlType::block_bytes`] long) of `gt` into `y`.
pub fn dequantize_block(gt: GgmlType, b: &[u8], y: &mut [f32; QK_K]) {
    match gt {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if gt == GgmlType::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            // Four chunks of 64: the low nibbles of 32 bytes, then their high nibbles.
            for c in 0..4 {
                let ql = &qs[32 * c..32 * c + 32];
                for half in 0..2 {
                    let (sc, m) = scale_min(2 * c + half, scales);
                    let (d1, m1) = (d * sc, dmin * m);
                    let bit = 1u8 << (2 * c + half);
                    for l in 0..32 {
                        let mut q = (ql[l] >> (4 * half)) & 0xF;
                        if qh.is_some_and(|h| h[l] & bit != 0) {
                            q += 16;
                        }
                        y[64 * c + 32 * half + l] = d1 * q as f32 - m1;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            // Two halves of 128; in each, element l + 32k takes nibble k/2 of ql and bit pair k of qh.
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                for l in 0..32 {
                    let is = l / 16;
                    let q = [
                        (ql[l] & 0xF) | (qh[l] & 3) << 4,
                        (ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4,
                        (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4,
                        (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4,
                    ];
                    for (k, q) in q.into_iter().enumerate() {
                        let s = sc[is + 2 * k] as i8 as f32;
                        y[128 * n + l + 32 * k] = d * s * (q as i32 - 32) as f32;
                    }
                }
            }
        }
        _ => unreachable!("{gt:?} is not a K-quant"),
    }
}

/// Quantizes 256 values into one super-block of `gt` (`b`, [`GgmlType::block_bytes`] long), so that
/// [`dequantize_block`] reads them back. Simpler than ggml's quantizers (no search for the best scale):
/// each sub-block takes its own range, and the 6- or 8-bit sub-block scales are rounded *up* so every
/// value stays inside the range its codes cover.
pub fn quantize_block(gt: GgmlType, x: &[f32], b: &mut [u8]) {
    assert_eq!(x.len(), QK_K);
    b.fill(0);
    match gt {
        GgmlType::Q4_K | GgmlType::Q5_K => quantize_q45k(gt == GgmlType::Q5_K, x, b),
        GgmlType::Q6_K => quantize_q6k(x, b),
        _ => unreachable!("{gt:?} is not a K-quant"),
    }
}

/// `v / d` rounded up to an integer at most `top` (0 when `d` is 0).
fn ceil_ratio(v: f32, d: f32, top: f32) -> u8 {
    if d > 0.0 {
        (v / d).ceil().clamp(0.0, top) as u8
    } else {
        0
    }
}

/// Stores at byte `i` the f16 scale that maps `top` onto `levels`, rounded up (never cutting the
/// range), and returns it.
fn put_scale(b: &mut [u8], i: usize, top: f32, levels: f32) -> f32 {
    let v = top / levels;
    let mut h = f16::from_f32(v);
    if h.to_f32() * levels < top {
        h = f16::from_bits(h.to_bits() + 1);
    }
    b[i..i + 2].copy_from_slice(&h.to_le_bytes());
    h.to_f32()
}

fn quantize_q45k(five: bool, x: &[f32], b: &mut [u8]) {
    let top = if five { 31.0 } else { 15.0 };
    // Per 32-value sub-block: the step and the (non-negative) offset that maps its range onto the codes.
    let mut step = [0f32; 8];
    let mut off = [0f32; 8];
    for (j, s) in x.chunks_exact(32).enumerate() {
        let lo = s.iter().fold(0f32, |m, &v| m.min(v));
        let hi = s.iter().fold(0f32, |m, &v| m.max(v));
        step[j] = (hi - lo) / top;
        off[j] = -lo;
    }
    // Super-block scales: the largest sub-block value maps to 63.
    let d = put_scale(b, 0, step.iter().fold(0f32, |m, &v| m.max(v)), 63.0);
    let dmin = put_scale(b, 2, off.iter().fold(0f32, |m, &v| m.max(v)), 63.0);
    let sc: [u8; 8] = std::array::from_fn(|j| ceil_ratio(step[j], d, 63.0));
    let mn: [u8; 8] = std::array::from_fn(|j| ceil_ratio(off[j], dmin, 63.0));
    // The packing `scale_min` reads: six bits of the first four, four low bits of the last four with
    // their top two bits in the spare top bits of bytes 0..8.
    for j in 0..4 {
        b[4 + j] = sc[j] | (sc[j + 4] >> 4) << 6;
        b[8 + j] = mn[j] | (mn[j + 4] >> 4) << 6;
        b[12 + j] = (sc[j + 4] & 0xF) | (mn[j + 4] & 0xF) << 4;
    }
    let (qh_at, qs_at) = if five { (16, 48) } else { (0, 16) };
    for (j, s) in x.chunks_exact(32).enumerate() {
        let (s1, m1) = (d * sc[j] as f32, dmin * mn[j] as f32);
        let (c, half) = (j / 2, j % 2);
        for (l, &v) in s.iter().enumerate() {
            let q = if s1 > 0.0 {
                ((v + m1) / s1).round().clamp(0.0, top) as u8
            } else {
                0
            };
            b[qs_at + 32 * c + l] |= (q & 0xF) << (4 * half);
            if five && q > 15 {
                b[qh_at + l] |= 1 << j;
            }
        }
    }
}

fn quantize_q6k(x: &[f32], b: &mut [u8]) {
    // Per 16-value sub-block: a step so that the largest magnitude takes code ±31.
    let step: [f32; 16] = std::array::from_fn(|j| {
        x[16 * j..16 * j + 16]
            .iter()
            .fold(0f32, |m, &v| m.max(v.abs()))
            / 31.0
    });
    let d = put_scale(b, 208, step.iter().fold(0f32, |m, &v| m.max(v)), 127.0);
    let sc: [u8; 16] = std::array::from_fn(|j| ceil_ratio(step[j], d, 127.0));
    b[192..208].copy_from_slice(&sc);
    for n in 0..2 {
        for l in 0..32 {
            let q: [u8; 4] = std::array::from_fn(|k| {
                let e = 128 * n + l + 32 * k;
                let s = d * sc[e / 16] as f32;
                let q = if s > 0.0 {
                    (x[e] / s).round().clamp(-32.0, 31.0)
                } else {
                    0.0
                };
                (q as i32 + 32) as u8
            });
            b[64 * n + l] = (q[0] & 0xF) | (q[2] & 0xF) << 4;
            b[64 * n + l + 32] = (q[1] & 0xF) | (q[3] & 0xF) << 4;
            b[128 + 32 * n + l] =
                (q[0] >> 4) | (q[1] >> 4) << 2 | (q[2] >> 4) << 4 | (q[3] >> 4) << 6;
        }
    }
}
