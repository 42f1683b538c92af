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
