//! The wasm SIMD128 paths of the fast backend's products, compiled in where the bundle enables
//! `simd128` (harness/src/browser/bundle.rs). The caller checked the slice lengths.

use super::dot::{QRow, Q8, QB};
use core::arch::wasm32::*;

/// Sum of the products of 16 unsigned and 16 signed bytes, in 4 lanes.
#[inline(always)]
unsafe fn dot_u8_i8(u: v128, s: v128) -> v128 {
    i32x4_add(
        i32x4_dot_i16x8(u16x8_extend_low_u8x16(u), i16x8_extend_low_i8x16(s)),
        i32x4_dot_i16x8(u16x8_extend_high_u8x16(u), i16x8_extend_high_i8x16(s)),
    )
}

#[inline(always)]
unsafe fn dot_i8_i8(a: v128, s: v128) -> v128 {
    i32x4_add(
        i32x4_dot_i16x8(i16x8_extend_low_i8x16(a), i16x8_extend_low_i8x16(s)),
        i32x4_dot_i16x8(i16x8_extend_high_i8x16(a), i16x8_extend_high_i8x16(s)),
    )
}

#[inline(always)]
unsafe fn row(w: QRow, x: &Q8, block: impl Fn(usize) -> v128) -> f32 {
    let mut acc = f32x4_splat(0.0);
    for (b, d) in w.scales.iter().enumerate() {
        let d = d.to_f32();
        for k in b * w.sub..(b + 1) * w.sub {
            let s = f32x4_splat(d * *x.d.get_unchecked(k));
            acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(block(k)), s));
        }
    }
    f32x4_extract_lane::<0>(acc)
        + f32x4_extract_lane::<1>(acc)
        + f32x4_extract_lane::<2>(acc)
        + f32x4_extract_lane::<3>(acc)
        + w.offset_part(x)
}

pub unsafe fn q4_simd128(w: QRow, x: &Q8) -> f32 {
    let (cp, qp) = (w.codes.as_ptr(), x.qs.as_ptr());
    row(w, x, |k| {
        let b = v128_load(cp.add(k * 16) as *const v128);
        let lo = v128_and(b, u8x16_splat(15));
        let hi = u8x16_shr(b, 4);
        let q0 = v128_load(qp.add(k * QB) as *const v128);
        let q1 = v128_load(qp.add(k * QB + 16) as *const v128);
        i32x4_add(dot_u8_i8(lo, q0), dot_u8_i8(hi, q1))
    })
}

pub unsafe fn q8_simd128(w: QRow, x: &Q8) -> f32 {
    let (cp, qp) = (w.codes.as_ptr(), x.qs.as_ptr());
    row(w, x, |k| {
        let c0 = v128_load(cp.add(k * QB) as *const v128);
        let c1 = v128_load(cp.add(k * QB + 16) as *const v128);
        let q0 = v128_load(qp.add(k * QB) as *const v128);
        let q1 = v128_load(qp.add(k * QB + 16) as *const v128);
        i32x4_add(dot_i8_i8(c0, q0), dot_i8_i8(c1, q1))
    })
}
