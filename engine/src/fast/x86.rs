//! The x86-64 paths of the fast backend's products (AVX2 with FMA and F16C; AVX-512 VNNI). Every
//! function here is `unsafe`: the caller checked the slice lengths (`dot::check`) and that the
//! instruction set is available (`Isa::available`).

use super::dot::{QRow, Q8, QB};
use half::f16;
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline(always)]
unsafe fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// 32 nibbles of a 4-bit block as bytes: the low nibbles, then the high ones.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let b = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m))
}

/// The row loop shared by every x86 product: `block(k)` gives activation block `k`'s integer sums
/// in 8 lanes. With one activation block per weight block (block 32), eight blocks' scales are
/// converted and multiplied at once and each block takes its lane; two accumulators, so
/// consecutive blocks' multiply-adds do not wait on each other.
#[inline(always)]
unsafe fn row(w: QRow, x: &Q8, block: impl Fn(usize) -> __m256i) -> f32 {
    let (sh, n) = (w.shift(), x.d.len());
    let (sp, dp) = (w.scales.as_ptr(), x.d.as_ptr());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut k = 0;
    if sh == 0 {
        while k + 8 <= n {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(sp.add(k) as *const __m128i));
            let s8 = _mm256_mul_ps(d, _mm256_loadu_ps(dp.add(k)));
            macro_rules! lane {
                ($acc:ident, $j:literal) => {
                    let s = _mm256_permutevar8x32_ps(s8, _mm256_set1_epi32($j));
                    $acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block(k + $j)), s, $acc);
                };
            }
            lane!(a0, 0);
            lane!(a1, 1);
            lane!(a0, 2);
            lane!(a1, 3);
            lane!(a0, 4);
            lane!(a1, 5);
            lane!(a0, 6);
            lane!(a1, 7);
            k += 8;
        }
    }
    while k < n {
        let s = _mm256_set1_ps(h2f(*sp.add(k >> sh)) * *dp.add(k));
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block(k)), s, a0);
        k += 1;
    }
    hsum(_mm256_add_ps(a0, a1)) + offset_part(w, x)
}

/// The offsets' part for one activation row (see [`QRow`]).
#[inline(always)]
unsafe fn offset_part(w: QRow, x: &Q8) -> f32 {
    let Some((o, f)) = w.offsets else {
        return 0.0;
    };
    let (sh, n) = (w.shift(), x.d.len());
    let (op, s) = (o.as_ptr(), x.s.as_ptr());
    let (mut k, mut off) = (0, 0.0f32);
    if sh == 0 {
        let mut v = _mm256_setzero_ps();
        while k + 8 <= n {
            let o8 = _mm256_cvtph_ps(_mm_loadu_si128(op.add(k) as *const __m128i));
            v = _mm256_fmadd_ps(o8, _mm256_loadu_ps(s.add(k)), v);
            k += 8;
        }
        off = hsum(v);
    }
    while k < n {
        off += h2f(*op.add(k >> sh)) * *s.add(k);
        k += 1;
    }
    off * f
}

/// One weight row against `T` activation rows: each block is loaded (`load(k)`) once and
/// multiplied with every row's block (`prod(w, x)`, 8 lanes of integer sums).
#[inline(always)]
unsafe fn tile<const T: usize>(
    w: QRow,
    xs: &[Q8],
    load: impl Fn(usize) -> __m256i,
    prod: impl Fn(__m256i, __m256i) -> __m256i,
) -> [f32; T] {
    let (sh, n) = (w.shift(), xs[0].d.len());
    let sp = w.scales.as_ptr();
    let mut acc = [_mm256_setzero_ps(); T];
    for k in 0..n {
        let wk = load(k);
        let d = _mm256_set1_ps(h2f(*sp.add(k >> sh)));
        for (t, a) in acc.iter_mut().enumerate() {
            let x = xs.get_unchecked(t);
            let q = _mm256_loadu_si256(x.qs.as_ptr().add(k * QB) as *const __m256i);
            let p = _mm256_mul_ps(
                _mm256_cvtepi32_ps(prod(wk, q)),
                _mm256_broadcast_ss(&*x.d.as_ptr().add(k)),
            );
            *a = _mm256_fmadd_ps(p, d, *a);
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = hsum(acc[t]) + offset_part(w, &xs[t]);
    }
    out
}

/// [`super::dot::rows`] on x86: tiles of four activation rows, then the rest one by one.
#[inline(always)]
unsafe fn tiles_with(
    w: QRow,
    xs: &[Q8],
    out: &mut [f32],
    load: impl Fn(usize) -> __m256i + Copy,
    prod: impl Fn(__m256i, __m256i) -> __m256i + Copy,
) {
    let mut t = 0;
    while t + 4 <= xs.len() {
        out[t..t + 4].copy_from_slice(&tile::<4>(w, &xs[t..t + 4], load, prod));
        t += 4;
    }
    while t < xs.len() {
        out[t] = tile::<1>(w, &xs[t..t + 1], load, prod)[0];
        t += 1;
    }
}

pub unsafe fn tiles(isa: super::dot::Isa, four_bit: bool, w: QRow, xs: &[Q8], out: &mut [f32]) {
    match (isa, four_bit) {
        (super::dot::Isa::Avx512Vnni, true) if w.sub == 1 && xs[0].d.len().is_multiple_of(8) => {
            tiles_q4_vnni512(w, xs, out)
        }
        (super::dot::Isa::Avx512Vnni, true) => tiles_q4_vnni(w, xs, out),
        (super::dot::Isa::Avx512Vnni, false) => tiles_q8_vnni(w, xs, out),
        (_, true) => tiles_q4_avx2(w, xs, out),
        (_, false) => tiles_q8_avx2(w, xs, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn tiles_q4_vnni(w: QRow, xs: &[Q8], out: &mut [f32]) {
    let cp = w.codes.as_ptr();
    tiles_with(
        w,
        xs,
        out,
        |k| nibbles(cp.add(k * 16)),
        |a, q| _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, q),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn tiles_q8_vnni(w: QRow, xs: &[Q8], out: &mut [f32]) {
    let cp = w.codes.as_ptr();
    tiles_with(
        w,
        xs,
        out,
        |k| _mm256_loadu_si256(cp.add(k * QB) as *const __m256i),
        |c, q| {
            let (a, s) = (_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c));
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, s)
        },
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiles_q4_avx2(w: QRow, xs: &[Q8], out: &mut [f32]) {
    let (cp, ones) = (w.codes.as_ptr(), _mm256_set1_epi16(1));
    tiles_with(
        w,
        xs,
        out,
        |k| nibbles(cp.add(k * 16)),
        |a, q| _mm256_madd_epi16(_mm256_maddubs_epi16(a, q), ones),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiles_q8_avx2(w: QRow, xs: &[Q8], out: &mut [f32]) {
    let (cp, ones) = (w.codes.as_ptr(), _mm256_set1_epi16(1));
    tiles_with(
        w,
        xs,
        out,
        |k| _mm256_loadu_si256(cp.add(k * QB) as *const __m256i),
        |c, q| {
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c));
            _mm256_madd_epi16(p, ones)
        },
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_avx2(w: QRow, x: &Q8) -> f32 {
    let (cp, qp, ones) = (w.codes.as_ptr(), x.qs.as_ptr(), _mm256_set1_epi16(1));
    row(w, x, |k| {
        let q = _mm256_loadu_si256(qp.add(k * QB) as *const __m256i);
        _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles(cp.add(k * 16)), q), ones)
    })
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn q4_vnni(w: QRow, x: &Q8) -> f32 {
    if w.sub == 1 && x.d.len().is_multiple_of(8) {
        return q4_vnni512(w, x);
    }
    let (cp, qp) = (w.codes.as_ptr(), x.qs.as_ptr());
    row(w, x, |k| {
        let q = _mm256_loadu_si256(qp.add(k * QB) as *const __m256i);
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(cp.add(k * 16)), q)
    })
}

/// The codes of 4-bit blocks `k` and `k + 1` as bytes `[lo_k hi_k lo_k+1 hi_k+1]`: the high
/// nibbles shifted beside the low ones, then one 64-bit lane permute.
#[inline(always)]
unsafe fn nibbles512(cp: *const u8, k: usize) -> __m512i {
    let b = _mm256_loadu_si256(cp.add(k * 16) as *const __m256i);
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4));
    let order = _mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0);
    _mm512_and_si512(
        _mm512_permutexvar_epi64(order, both),
        _mm512_set1_epi8(0x0F),
    )
}

/// Lane indices taking scale `2j` into the low and `2j + 1` into the high eight lanes.
#[inline(always)]
unsafe fn pair_index(j: i32) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi32(2 * j)),
        _mm256_set1_epi32(2 * j + 1),
    )
}

/// One 4-bit row (block 32, whole groups of eight blocks) against `T` activation rows, two
/// blocks per 512-bit operation.
#[inline(always)]
unsafe fn tile512<const T: usize>(w: QRow, xs: &[Q8]) -> [f32; T] {
    let n = xs[0].d.len();
    let (cp, sp) = (w.codes.as_ptr(), w.scales.as_ptr());
    let idx = [pair_index(0), pair_index(1), pair_index(2), pair_index(3)];
    let mut acc = [_mm512_setzero_ps(); T];
    for k in (0..n).step_by(8) {
        let d = _mm256_cvtph_ps(_mm_loadu_si128(sp.add(k) as *const __m128i));
        let s8: [__m512; T] = std::array::from_fn(|t| {
            let dx = _mm256_loadu_ps(xs.get_unchecked(t).d.as_ptr().add(k));
            _mm512_castps256_ps512(_mm256_mul_ps(d, dx))
        });
        for (j, ix) in idx.iter().enumerate() {
            let wv = nibbles512(cp, k + 2 * j);
            for (t, a) in acc.iter_mut().enumerate() {
                let qp = xs.get_unchecked(t).qs.as_ptr().add((k + 2 * j) * QB);
                let p = _mm512_dpbusd_epi32(
                    _mm512_setzero_si512(),
                    wv,
                    _mm512_loadu_si512(qp as *const _),
                );
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(*ix, s8[t]), *a);
            }
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]) + offset_part(w, &xs[t]))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn tiles_q4_vnni512(w: QRow, xs: &[Q8], out: &mut [f32]) {
    let mut t = 0;
    while t + 4 <= xs.len() {
        out[t..t + 4].copy_from_slice(&tile512::<4>(w, &xs[t..t + 4]));
        t += 4;
    }
    while t < xs.len() {
        out[t] = tile512::<1>(w, &xs[t..t + 1])[0];
        t += 1;
    }
}

/// [`q4_vnni`] two blocks per 512-bit operation (block 32, whole groups of eight blocks): one row
/// of [`q4_vnni512_rows`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn q4_vnni512(w: QRow, x: &Q8) -> f32 {
    let mut out = [0.0];
    q4_vnni512_rows(&|_| w, x, &mut out);
    out[0]
}

/// 4-bit rows (block 32, whole groups of eight blocks) against one activation row, one after the
/// other in one call (decode), two blocks per 512-bit operation: the 32 code bytes of two blocks
/// become `[lo0 hi0 lo1 hi1]` by one 64-bit lane permute; block `k` takes its scale from lane `k` of
/// the eight converted at once. The constants are set up once per call rather than per row, and each
/// row's offsets sum in its main loop (in `offset_part`'s order) rather than in a second pass.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn q4_vnni512_rows<'a>(w: &dyn Fn(usize) -> QRow<'a>, x: &Q8, out: &mut [f32]) {
    let n = x.d.len();
    let (qp, dp, sp) = (x.qs.as_ptr(), x.d.as_ptr(), x.s.as_ptr());
    let idx = [pair_index(0), pair_index(1), pair_index(2), pair_index(3)];
    for (r, o) in out.iter_mut().enumerate() {
        let w = w(r);
        let (cp, wp) = (w.codes.as_ptr(), w.scales.as_ptr());
        let (op, f) = w.offsets.map_or((wp, 0.0), |(o, f)| (o.as_ptr(), f));
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut off = _mm256_setzero_ps();
        for k in (0..n).step_by(8) {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(k) as *const __m128i));
            let o8 = _mm256_cvtph_ps(_mm_loadu_si128(op.add(k) as *const __m128i));
            off = _mm256_fmadd_ps(o8, _mm256_loadu_ps(sp.add(k)), off);
            let s16 = _mm512_castps256_ps512(_mm256_mul_ps(d, _mm256_loadu_ps(dp.add(k))));
            for (j, ix) in idx.iter().enumerate() {
                let q = _mm512_loadu_si512(qp.add((k + 2 * j) * QB) as *const _);
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nibbles512(cp, k + 2 * j), q);
                let s = _mm512_permutexvar_ps(*ix, s16);
                if j % 2 == 0 {
                    a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, a0);
                } else {
                    a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, a1);
                }
            }
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + f * hsum(off);
    }
}

// Signed by signed: |w| as unsigned times x with w's sign.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_avx2(w: QRow, x: &Q8) -> f32 {
    let (cp, qp, ones) = (w.codes.as_ptr(), x.qs.as_ptr(), _mm256_set1_epi16(1));
    row(w, x, |k| {
        let c = _mm256_loadu_si256(cp.add(k * QB) as *const __m256i);
        let q = _mm256_loadu_si256(qp.add(k * QB) as *const __m256i);
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c));
        _mm256_madd_epi16(p, ones)
    })
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn q8_vnni(w: QRow, x: &Q8) -> f32 {
    let (cp, qp) = (w.codes.as_ptr(), x.qs.as_ptr());
    row(w, x, |k| {
        let c = _mm256_loadu_si256(cp.add(k * QB) as *const __m256i);
        let q = _mm256_loadu_si256(qp.add(k * QB) as *const __m256i);
        let (a, s) = (_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c));
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, s)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_avx2(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len() / 16 * 16;
    let (wp, xp) = (w.as_ptr() as *const u8, x.as_ptr());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..n).step_by(16) {
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(2 * i) as *const __m128i));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(2 * i + 16) as *const __m128i));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(i)), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(i + 8)), a1);
    }
    let tail: f32 = w[n..]
        .iter()
        .zip(&x[n..])
        .map(|(a, b)| a.to_f32() * b)
        .sum();
    hsum(_mm256_add_ps(a0, a1)) + tail
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    crate::quant::dot(a, b)
}
