//! The fast CPU backend's inner products. Rows of q4_0, q4_1 and q8_0 weights (blocks of any multiple of
//! 32) meet activations quantized to 8 bits in blocks of 32, once per product ([`Q8`]), and sum in
//! integers; f16 and f32 rows sum in f32. One implementation per instruction set, chosen at run time
//! natively and at compile time in wasm (SIMD128), the scalar one the reference for the others.

use half::f16;

/// Elements per activation block.
pub const QB: usize = 32;

/// The instruction set the products use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// x86-64 AVX2 with FMA and F16C: `maddubs` byte products.
    Avx2,
    /// x86-64 AVX-512 VNNI (256-bit, with VL): `dpbusd` byte products accumulated in one step.
    Avx512Vnni,
    /// wasm SIMD128, compiled in where the bundle enables it.
    Simd128,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Simd128];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Simd128 => "simd128",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s)
    }

    /// Whether this machine (or this wasm build) runs it.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            Isa::Simd128 => cfg!(all(target_arch = "wasm32", target_feature = "simd128")),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest available.
    pub fn best() -> Isa {
        [Isa::Avx512Vnni, Isa::Avx2, Isa::Simd128]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Scalar)
    }
}

/// Where element `i` of a block of 32 goes among the activation codes. A 4-bit weight block holds
/// element `2j` in the low and `2j + 1` in the high nibble of byte `j` (the planar layout of
/// `quant.rs`), so its activations are stored evens first, then odds: the low nibbles of the 16 bytes
/// meet the first 16 codes and the high nibbles the rest, with no shuffle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Natural,
    Nibble,
}

/// One activation row quantized in blocks of [`QB`]: `x ≈ d * code`, with `s = d * sum(codes)` per
/// block (for the weights' offsets: q4_0's -8 and q4_1's min).
#[derive(Debug, Default, Clone)]
pub struct Q8 {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

impl Q8 {
    /// Quantizes `x` (a multiple of [`QB`] long): each block's largest magnitude maps to 127, rounded
    /// to nearest, so an element's error is at most `d / 2 = max|x_block| / 254`.
    pub fn quantize(&mut self, x: &[f32], order: Order) {
        let n = x.len() / QB;
        self.qs.resize(n * QB, 0);
        self.d.resize(n, 0.0);
        self.s.resize(n, 0.0);
        for (b, xb) in x.chunks_exact(QB).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let q = &mut self.qs[b * QB..(b + 1) * QB];
            let mut sum = 0i32;
            for (i, v) in xb.iter().enumerate() {
                let c = (v * id).round() as i8;
                let at = match order {
                    Order::Natural => i,
                    Order::Nibble => i / 2 + (i % 2) * (QB / 2),
                };
                q[at] = c;
                sum += c as i32;
            }
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
    }
}

/// One quantized weight row: its code bytes and one f16 scale per weight block of `sub` (a power of
/// two) activation blocks, and the block offsets (q4_0's `-8 d`: `scales` with factor -8; q4_1's mins
/// with factor 1), applied through the activations' block sums `s`.
#[derive(Clone, Copy)]
pub struct QRow<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f16],
    pub sub: usize,
    pub offsets: Option<(&'a [f16], f32)>,
}

impl QRow<'_> {
    pub(super) fn shift(&self) -> u32 {
        self.sub.trailing_zeros()
    }

    /// `sum_k offset(k) * s_k`, the part of the product the offsets contribute.
    pub(super) fn offset_part(&self, x: &Q8) -> f32 {
        let Some((o, f)) = self.offsets else {
            return 0.0;
        };
        let sh = self.shift();
        let mut acc = 0.0f32;
        for (k, s) in x.s.iter().enumerate() {
            acc += o[k >> sh].to_f32() * s;
        }
        f * acc
    }
}

/// `sum_b d_b * sum_{k in b} d_x[k] * (codes . x_codes)[k]` plus the offsets for a 4-bit row (codes
/// 0..15).
pub fn q4(isa: Isa, w: QRow, x: &Q8) -> f32 {
    check(w, x, QB / 2);
    // SAFETY: the lengths were checked.
    unsafe { one(isa, true, w, x) }
}

/// The same for an 8-bit row (signed codes).
pub fn q8(isa: Isa, w: QRow, x: &Q8) -> f32 {
    check(w, x, QB);
    // SAFETY: the lengths were checked.
    unsafe { one(isa, false, w, x) }
}

/// One row against one activation row. The caller checked the lengths ([`check`]) and that the
/// instruction set is available (the decoder only selects one that is).
unsafe fn one(isa: Isa, four_bit: bool, w: QRow, x: &Q8) -> f32 {
    match (isa, four_bit) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, true) => super::x86::q4_avx2(w, x),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, false) => super::x86::q8_avx2(w, x),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, true) => super::x86::q4_vnni(w, x),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, false) => super::x86::q8_vnni(w, x),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        (Isa::Simd128, true) => super::wasm::q4_simd128(w, x),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        (Isa::Simd128, false) => super::wasm::q8_simd128(w, x),
        (_, true) => q4_scalar(w, x),
        (_, false) => q8_scalar(w, x),
    }
}

/// A 4-bit (`q4`) or 8-bit (`q8`) row against every row of `xs`: `out[t]` for `xs[t]`. The SIMD paths
/// unpack each weight block once for up to four activation rows (a prompt's batch).
pub fn rows(isa: Isa, four_bit: bool, w: QRow, xs: &[Q8], out: &mut [f32]) {
    assert_eq!(xs.len(), out.len());
    for x in xs {
        check(w, x, if four_bit { QB / 2 } else { QB });
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the lengths were checked above and the decoder only selects an available Isa.
        Isa::Avx2 | Isa::Avx512Vnni if xs.len() > 1 => unsafe {
            super::x86::tiles(isa, four_bit, w, xs, out)
        },
        _ => {
            for (o, x) in out.iter_mut().zip(xs) {
                // SAFETY: as above.
                *o = unsafe { one(isa, four_bit, w, x) };
            }
        }
    }
}

/// 4-bit rows `w(0)`, `w(1)`, ... against one activation row (decode): `out[i]` for row `w(i)`.
/// With AVX-512 VNNI, rows of block 32 in whole groups of eight blocks run in one call: at width
/// 2048 a row is only eight iterations, so per-row calls, setup and a second pass over the offsets
/// are a fair part of its time.
pub fn q4_many<'a>(isa: Isa, w: impl Fn(usize) -> QRow<'a>, x: &Q8, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && x.d.len().is_multiple_of(8) && !out.is_empty() && w(0).sub == 1 {
        let checked = |i: usize| {
            let r = w(i);
            check(r, x, QB / 2);
            assert_eq!(r.sub, 1);
            r
        };
        // SAFETY: every row's lengths are checked as it is taken; the decoder only selects an
        // available Isa.
        return unsafe { super::x86::q4_vnni512_rows(&checked, x, out) };
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = q4(isa, w(i), x);
    }
}

/// `w . x` for an f16 row and f32 activations.
pub fn f16_row(isa: Isa, w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: equal lengths checked; the Isa is available.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { super::x86::f16_avx2(w, x) },
        _ => {
            let mut buf = [0.0f32; 64];
            let mut acc = 0.0;
            for (wc, xc) in w.chunks(64).zip(x.chunks(64)) {
                let b = &mut buf[..wc.len()];
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(wc, b);
                acc += crate::quant::dot(b, xc);
            }
            acc
        }
    }
}

/// `w . x` in f32.
pub fn f32_row(isa: Isa, w: &[f32], x: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the Isa is available; `dot` itself checks nothing unsafe.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { super::x86::dot_avx2(w, x) },
        _ => crate::quant::dot(w, x),
    }
}

fn check(w: QRow, x: &Q8, bytes_per_block: usize) {
    let n = x.d.len();
    assert!(
        w.sub.is_power_of_two()
            && w.scales.len() * w.sub == n
            && w.offsets.is_none_or(|(o, _)| o.len() == w.scales.len())
            && w.codes.len() >= n * bytes_per_block
            && x.qs.len() >= n * QB,
        "row of {} scales x {} against {n} activation blocks",
        w.scales.len(),
        w.sub
    );
}

fn q4_scalar(w: QRow, x: &Q8) -> f32 {
    let mut acc = 0.0f32;
    for (b, d) in w.scales.iter().enumerate() {
        let mut part = 0.0f32;
        for k in b * w.sub..(b + 1) * w.sub {
            let codes = &w.codes[k * 16..(k + 1) * 16];
            let q = &x.qs[k * QB..(k + 1) * QB];
            let mut i = 0i32;
            for (j, c) in codes.iter().enumerate() {
                i += (c & 15) as i32 * q[j] as i32 + (c >> 4) as i32 * q[16 + j] as i32;
            }
            part += x.d[k] * i as f32;
        }
        acc += d.to_f32() * part;
    }
    acc + w.offset_part(x)
}

fn q8_scalar(w: QRow, x: &Q8) -> f32 {
    let mut acc = 0.0f32;
    for (b, d) in w.scales.iter().enumerate() {
        let mut part = 0.0f32;
        for k in b * w.sub..(b + 1) * w.sub {
            let codes = &w.codes[k * QB..(k + 1) * QB];
            let q = &x.qs[k * QB..(k + 1) * QB];
            let i: i32 = codes
                .iter()
                .zip(q)
                .map(|(&c, &q)| c as i8 as i32 * q as i32)
                .sum();
            part += x.d[k] * i as f32;
        }
        acc += d.to_f32() * part;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A random row of `n` blocks of `block` elements, its activations, and the exact product of the
    /// weights as stored with the activations as quantized (f64), the value every path must give.
    struct Case {
        codes: Vec<u8>,
        scales: Vec<f16>,
        mins: Vec<f16>,
        x: Vec<f32>,
    }

    fn case(rng: &mut rand_chacha::ChaCha8Rng, n: usize, block: usize, bits: usize) -> Case {
        let nb = n / block;
        Case {
            codes: (0..n * bits / 8).map(|_| rng.gen()).collect(),
            scales: (0..nb)
                .map(|_| f16::from_f32(rng.gen_range(-0.1..0.1)))
                .collect(),
            mins: (0..nb)
                .map(|_| f16::from_f32(rng.gen_range(-0.5..0.5)))
                .collect(),
            x: (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect(),
        }
    }

    /// Element `i` of the row as stored (planar layout of quant.rs).
    fn weight(c: &Case, i: usize, block: usize, bits: usize, q4_1: bool) -> f64 {
        let (b, d) = (i / block, c.scales[i / block].to_f64());
        if bits == 8 {
            return c.codes[i] as i8 as f64 * d;
        }
        let code = (c.codes[i / 2] >> (4 * (i % 2))) & 15;
        match q4_1 {
            true => code as f64 * d + c.mins[b].to_f64(),
            false => (code as f64 - 8.0) * d,
        }
    }

    /// The dequantized activations: code `j` of block `k` in `order`.
    fn dequant(x: &Q8, n: usize, order: Order) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let (k, e) = (i / QB, i % QB);
                let at = match order {
                    Order::Natural => e,
                    Order::Nibble => e / 2 + (e % 2) * (QB / 2),
                };
                x.qs[k * QB + at] as f64 * x.d[k] as f64
            })
            .collect()
    }

    /// Every path against the exact sum, for each kind, block size and activation-row count: error
    /// within f32 accumulation (1e-5 of the sum of |terms|; a wrong nibble or scale is ~1e-2).
    #[test]
    fn every_path_computes_the_exact_integer_product() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 512;
        for (bits, q4_1) in [(4, false), (4, true), (8, false)] {
            for block in [32, 64, 256] {
                let c = case(&mut rng, n, block, bits);
                let order = if bits == 4 {
                    Order::Nibble
                } else {
                    Order::Natural
                };
                let xs: Vec<Q8> = (0..6)
                    .map(|t| {
                        let mut q = Q8::default();
                        let x: Vec<f32> = c.x.iter().map(|v| v * (t + 1) as f32).collect();
                        q.quantize(&x, order);
                        q
                    })
                    .collect();
                let w = QRow {
                    codes: &c.codes,
                    scales: &c.scales,
                    sub: block / QB,
                    offsets: match (bits, q4_1) {
                        (8, _) => None,
                        (_, true) => Some((&c.mins, 1.0)),
                        _ => Some((&c.scales, -8.0)),
                    },
                };
                let want: Vec<(f64, f64)> = xs
                    .iter()
                    .map(|x| {
                        let xd = dequant(x, n, order);
                        (0..n).fold((0.0, 0.0), |(s, a), i| {
                            let t = weight(&c, i, block, bits, q4_1) * xd[i];
                            (s + t, a + t.abs())
                        })
                    })
                    .collect();
                for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                    for rows in [1, 4, 6] {
                        let mut out = vec![0.0f32; rows];
                        rows_fn(isa, bits == 4, w, &xs[..rows], &mut out);
                        for (t, (o, (s, a))) in out.iter().zip(&want).enumerate() {
                            assert!(
                                (*o as f64 - s).abs() <= 1e-5 * a,
                                "{bits}-bit q4_1 {q4_1} block {block} {} rows {rows} row {t}: \
                                 {o} vs {s}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }

    /// [`q4_many`] (many rows in one call where it can) against the exact sums, for rows of both
    /// 4-bit kinds, with the tolerance above.
    #[test]
    fn many_rows_in_one_call_compute_each_rows_product() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let n = 512;
        for (block, q4_1) in [(32, false), (32, true), (64, false)] {
            let cases: Vec<Case> = (0..5).map(|_| case(&mut rng, n, block, 4)).collect();
            let mut x = Q8::default();
            x.quantize(&cases[0].x, Order::Nibble);
            let xd = dequant(&x, n, Order::Nibble);
            let row = |i: usize| QRow {
                codes: &cases[i].codes,
                scales: &cases[i].scales,
                sub: block / QB,
                offsets: Some(match q4_1 {
                    true => (&cases[i].mins, 1.0),
                    false => (&cases[i].scales, -8.0),
                }),
            };
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let mut out = vec![0.0f32; cases.len()];
                q4_many(isa, row, &x, &mut out);
                for (r, o) in out.iter().enumerate() {
                    let (s, a) = (0..n).fold((0.0, 0.0), |(s, a), i| {
                        let t = weight(&cases[r], i, block, 4, q4_1) * xd[i];
                        (s + t, a + t.abs())
                    });
                    assert!(
                        (*o as f64 - s).abs() <= 1e-5 * a,
                        "block {block} q4_1 {q4_1} {} row {r}: {o} vs {s}",
                        isa.name()
                    );
                }
            }
        }
    }

    fn rows_fn(isa: Isa, four_bit: bool, w: QRow, xs: &[Q8], out: &mut [f32]) {
        rows(isa, four_bit, w, xs, out)
    }

    #[test]
    fn quantized_activations_round_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 7.0)
            .collect();
        for order in [Order::Natural, Order::Nibble] {
            let mut q = Q8::default();
            q.quantize(&x, order);
            let back = dequant(&q, 64, order);
            for (k, (a, b)) in x.iter().zip(&back).enumerate() {
                let d = q.d[k / QB] as f64;
                assert!(
                    (*a as f64 - b).abs() <= d / 2.0 + 1e-7,
                    "{order:?} {k}: {a} vs {b}"
                );
            }
            let sum: f64 = (0..QB).map(|i| q.qs[i] as f64).sum::<f64>() * q.d[0] as f64;
            assert!((sum - q.s[0] as f64).abs() < 1e-4);
        }
    }
}
