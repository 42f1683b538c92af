//! The wasm SIMD128 paths of the fast backend's products, compiled in where the bundle enables
//! `simd128` (harness/src/browser/bundle.rs). The caller checked the slice lengths.
//!
//! SIMD128 has no 8-bit dot product, so codes and activations multiply as signed bytes into 16-bit
//! lanes (`extmul`), which sum as far as they cannot overflow before widening to 32 bits once. wasm
//! has no f16 conversion instruction either: scales convert four at a time by shifting the bits into
//! an f32 and one multiply (`f16x4`), rather than one software conversion per block.

use super::dot::{QRow, Q8, QB};
use core::arch::wasm32::*;
use half::f16;

/// Four finite f16 values as f32: exponent and mantissa shifted into an f32's place, one multiply by
/// 2^112 rebiases the exponent (and makes f16 subnormals f32 normals, exactly), the sign put back.
/// Scales are finite: loading refuses a block whose scale is not.
#[inline(always)]
unsafe fn f16x4(p: *const f16) -> v128 {
    let h = u32x4_extend_low_u16x8(v128_load64_zero(p as *const u64));
    let mag = i32x4_shl(v128_and(h, u32x4_splat(0x7fff)), 13);
    let f = f32x4_mul(mag, f32x4_splat(f32::from_bits(0x7780_0000)));
    v128_or(f, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}

#[inline(always)]
unsafe fn hsum(v: v128) -> f32 {
    f32x4_extract_lane::<0>(v)
        + f32x4_extract_lane::<1>(v)
        + f32x4_extract_lane::<2>(v)
        + f32x4_extract_lane::<3>(v)
}

/// `sum_k scale(k) * d_x[k] * block(k)` over the row's activation blocks, plus the offsets.
#[inline(always)]
unsafe fn row(w: QRow, x: &Q8, block: impl Fn(usize) -> v128) -> f32 {
    let n = x.d.len();
    let (dp, sp) = (x.d.as_ptr(), x.s.as_ptr());
    let mut acc = f32x4_splat(0.0);
    // The offsets sum one block after another, as the scalar path does: 8-bit activations make the
    // result jump wherever a rounding tips, so a different order would move logits by more than
    // its own rounding (and flip near-tied answers) for no gain.
    let mut off = 0.0f32;
    let mut k = 0;
    if w.sub == 1 {
        // One weight scale per activation block: four converted and multiplied at once.
        let wp = w.scales.as_ptr();
        while k + 4 <= n {
            let s4 = f32x4_mul(f16x4(wp.add(k)), v128_load(dp.add(k) as *const v128));
            macro_rules! lane {
                ($j:literal) => {
                    let s = i32x4_shuffle::<$j, $j, $j, $j>(s4, s4);
                    acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(block(k + $j)), s));
                };
            }
            lane!(0);
            lane!(1);
            lane!(2);
            lane!(3);
            if let Some((o, _)) = w.offsets {
                let p = f32x4_mul(
                    f16x4(o.as_ptr().add(k)),
                    v128_load(sp.add(k) as *const v128),
                );
                off += f32x4_extract_lane::<0>(p);
                off += f32x4_extract_lane::<1>(p);
                off += f32x4_extract_lane::<2>(p);
                off += f32x4_extract_lane::<3>(p);
            }
            k += 4;
        }
    }
    let sh = w.shift();
    for k in k..n {
        let d = w.scales.get_unchecked(k >> sh).to_f32() * *dp.add(k);
        acc = f32x4_add(
            acc,
            f32x4_mul(f32x4_convert_i32x4(block(k)), f32x4_splat(d)),
        );
        if let Some((o, _)) = w.offsets {
            off += o.get_unchecked(k >> sh).to_f32() * *sp.add(k);
        }
    }
    let f = w.offsets.map_or(0.0, |(_, f)| f);
    hsum(acc) + f * off
}

/// One 4-bit block's sums in 4 lanes: codes 0..15 times activations -127..127 as signed bytes, four
/// products per 16-bit lane (at most 4 * 15 * 127 = 7620), then pairs widened to 32 bits.
pub unsafe fn q4_simd128(w: QRow, x: &Q8) -> f32 {
    let (cp, qp) = (w.codes.as_ptr(), x.qs.as_ptr());
    row(w, x, |k| {
        let b = v128_load(cp.add(k * 16) as *const v128);
        let lo = v128_and(b, u8x16_splat(15));
        let hi = u8x16_shr(b, 4);
        let q0 = v128_load(qp.add(k * QB) as *const v128);
        let q1 = v128_load(qp.add(k * QB + 16) as *const v128);
        let s = i16x8_add(
            i16x8_add(
                i16x8_extmul_low_i8x16(lo, q0),
                i16x8_extmul_high_i8x16(lo, q0),
            ),
            i16x8_add(
                i16x8_extmul_low_i8x16(hi, q1),
                i16x8_extmul_high_i8x16(hi, q1),
            ),
        );
        i32x4_extadd_pairwise_i16x8(s)
    })
}

/// One 8-bit block's sums: signed codes times activations, two products per 16-bit lane (at most
/// 2 * 128 * 127 = 32512) before widening.
pub unsafe fn q8_simd128(w: QRow, x: &Q8) -> f32 {
    let (cp, qp) = (w.codes.as_ptr(), x.qs.as_ptr());
    row(w, x, |k| {
        let c0 = v128_load(cp.add(k * QB) as *const v128);
        let c1 = v128_load(cp.add(k * QB + 16) as *const v128);
        let q0 = v128_load(qp.add(k * QB) as *const v128);
        let q1 = v128_load(qp.add(k * QB + 16) as *const v128);
        i32x4_add(
            i32x4_extadd_pairwise_i16x8(i16x8_add(
                i16x8_extmul_low_i8x16(c0, q0),
                i16x8_extmul_high_i8x16(c0, q0),
            )),
            i32x4_extadd_pairwise_i16x8(i16x8_add(
                i16x8_extmul_low_i8x16(c1, q1),
                i16x8_extmul_high_i8x16(c1, q1),
            )),
        )
    })
}
