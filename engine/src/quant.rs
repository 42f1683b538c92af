//! Weight formats: f32, f16, block-wise q8_0, q4_0, q4_1 and ggml's K-quants (`kquant.rs`), shared by the
//! CPU path, the GPU upload and the GGUF reader/writer.
//!
//! In memory a matrix is *planar*, not ggml's interleaved 18-byte blocks, because WGSL storage buffers
//! hold 4-byte words: `words` holds the codes (8 nibbles or 4 bytes per u32, element `i` of a block in
//! word `i / 8` at bits `4 * (i % 8)` for 4-bit, word `i / 4` at byte `i % 4` for 8-bit), `scales` one f16
//! per block and `mins` one f16 per block for q4_1. Rows are whole blocks, so a row starts on a word.
//! At block size 32 the codes, scales and mins are exactly ggml's; only their order differs, and
//! [`QMatrix::to_ggml`] / [`QMatrix::from_ggml`] convert losslessly.

use crate::dtype::QK_K;
use crate::error::{Error, Result};
use crate::kquant::dequantize_block;
use half::f16;

pub use crate::dtype::{ggml_type_name, GgmlType, WType};

/// A row-major `[rows, cols]` weight matrix in the planar layout described at the top of this module.
#[derive(Debug, Clone, PartialEq)]
pub struct QMatrix {
    pub ty: WType,
    /// Elements per block for quantized types; 1 for f32 and f16.
    pub block: usize,
    pub rows: usize,
    pub cols: usize,
    /// f32 bits, f16 pairs (element `2k` in the low half), or packed codes.
    pub words: Vec<u32>,
    pub scales: Vec<f16>,
    pub mins: Vec<f16>,
}

impl QMatrix {
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols);
        QMatrix {
            ty: WType::F32,
            block: 1,
            rows,
            cols,
            words: data.into_iter().map(f32::to_bits).collect(),
            scales: Vec::new(),
            mins: Vec::new(),
        }
    }

    /// An all-zero matrix of `ty`, to be filled row by row with [`QMatrix::set_row`].
    pub fn zeros(ty: WType, block: usize, rows: usize, cols: usize) -> Self {
        let block = ty.block_for(block);
        if ty.is_quantized() || ty.is_k() {
            assert!(
                block.is_multiple_of(8) && cols.is_multiple_of(block),
                "cols {cols} not a multiple of block {block}"
            );
        }
        let n = rows * cols;
        let n_blocks = if ty.is_quantized() { n / block } else { 0 };
        QMatrix {
            ty,
            block,
            rows,
            cols,
            words: vec![0; ty.words(n)],
            scales: vec![f16::ZERO; n_blocks],
            mins: vec![f16::ZERO; if ty == WType::Q4_1 { n_blocks } else { 0 }],
        }
    }

    /// Quantizes `data` (row-major) to `ty` with `block` elements per block. The caller checks that
    /// `cols % block == 0` and that the data is finite (see [`check_finite`]).
    pub fn quantize(ty: WType, block: usize, rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols);
        let mut m = QMatrix::zeros(ty, block, rows, cols);
        for r in 0..rows {
            m.set_row(r, &data[r * cols..(r + 1) * cols]);
        }
        m
    }

    /// Grows (with zero rows) or shrinks the matrix to `rows` rows.
    pub fn resize_rows(&mut self, rows: usize) {
        let n = rows * self.cols;
        self.words.resize(self.ty.words(n), 0);
        if self.ty.is_quantized() {
            self.scales.resize(n / self.block, f16::ZERO);
            if self.ty == WType::Q4_1 {
                self.mins.resize(n / self.block, f16::ZERO);
            }
        }
        self.rows = rows;
    }

    /// Overwrites row `r` with `x` quantized to this matrix's type.
    pub fn set_row(&mut self, r: usize, x: &[f32]) {
        let cols = self.cols;
        assert_eq!(x.len(), cols);
        match self.ty {
            WType::F32 => {
                for (w, v) in self.words[r * cols..(r + 1) * cols].iter_mut().zip(x) {
                    *w = v.to_bits();
                }
            }
            WType::F16 => {
                for (c, &v) in x.iter().enumerate() {
                    let i = r * cols + c;
                    let shift = 16 * (i % 2);
                    let w = &mut self.words[i / 2];
                    *w = (*w & !(0xFFFF << shift)) | (f16::from_f32(v).to_bits() as u32) << shift;
                }
            }
            t if t.is_k() => {
                let gt = t.ggml(QK_K).expect("a K-quant");
                let per = t.words(QK_K);
                let bpr = cols / QK_K;
                let mut b = vec![0u8; per * 4];
                for (bi, xb) in x.chunks_exact(QK_K).enumerate() {
                    crate::kquant::quantize_block(gt, xb, &mut b[..gt.block_bytes()]);
                    let g = r * bpr + bi;
                    for (w, c) in self.words[g * per..(g + 1) * per]
                        .iter_mut()
                        .zip(b.chunks_exact(4))
                    {
                        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
            }
            ty => {
                let bpr = cols / self.block;
                let per = self.block * ty.code_bits() / 32;
                let mut codes = vec![0u8; self.block];
                for (bi, xb) in x.chunks_exact(self.block).enumerate() {
                    let g = r * bpr + bi;
                    let (d, min) = quantize_block(ty, xb, &mut codes);
                    self.scales[g] = d;
                    if ty == WType::Q4_1 {
                        self.mins[g] = min;
                    }
                    pack_codes(ty, &codes, &mut self.words[g * per..(g + 1) * per]);
                }
            }
        }
    }

    /// Exact bytes this matrix occupies: codes plus scales plus mins.
    pub fn n_bytes(&self) -> usize {
        match self.ty {
            WType::F32 => self.rows * self.cols * 4,
            WType::F16 => self.rows * self.cols * 2,
            _ => self.words.len() * 4 + (self.scales.len() + self.mins.len()) * 2,
        }
    }

    /// Dequantizes row `r` into `out` (`cols` long).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols;
        match self.ty {
            WType::F32 => {
                let w: &[f32] = bytemuck::cast_slice(&self.words);
                out.copy_from_slice(&w[r * cols..(r + 1) * cols]);
            }
            WType::F16 => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o = self.f16_at(r * cols + c);
                }
            }
            t if t.is_k() => {
                let bpr = cols / self.block;
                let mut y = [0.0f32; QK_K];
                for (bi, o) in out.chunks_exact_mut(QK_K).enumerate() {
                    self.k_block(r * bpr + bi, &mut y);
                    o.copy_from_slice(&y);
                }
            }
            _ => {
                let bpr = cols / self.block;
                for bi in 0..bpr {
                    let g = r * bpr + bi;
                    let (d, m) = self.block_params(g);
                    let words = self.block_words(g);
                    let out = &mut out[bi * self.block..(bi + 1) * self.block];
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = self.code(words, i) * d + m;
                    }
                }
            }
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            self.row_into(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
        out
    }

    /// The ggml bytes of K-quant super-block `g` (without the word padding).
    fn k_bytes(&self, g: usize) -> &[u8] {
        let gt = self.ty.ggml(QK_K).expect("a K-quant");
        let per = self.ty.words(QK_K);
        let words = &self.words[g * per..(g + 1) * per];
        &bytemuck::cast_slice::<u32, u8>(words)[..gt.block_bytes()]
    }

    fn k_block(&self, g: usize, y: &mut [f32; QK_K]) {
        let gt = self.ty.ggml(QK_K).expect("a K-quant");
        dequantize_block(gt, self.k_bytes(g), y);
    }

    fn f16_at(&self, i: usize) -> f32 {
        let w = self.words[i / 2];
        f16::from_bits((w >> (16 * (i % 2))) as u16).to_f32()
    }

    fn block_words(&self, g: usize) -> &[u32] {
        let per = self.block * self.ty.code_bits() / 32;
        &self.words[g * per..(g + 1) * per]
    }

    /// Scale and offset of block `g`: an element is `code * d + m`.
    fn block_params(&self, g: usize) -> (f32, f32) {
        let d = self.scales[g].to_f32();
        match self.ty {
            WType::Q4_1 => (d, self.mins[g].to_f32()),
            WType::Q4_0 => (d, -8.0 * d),
            _ => (d, 0.0),
        }
    }

    /// The raw code of element `i` in a block, as f32 (unsigned for 4-bit, signed for 8-bit).
    #[inline]
    fn code(&self, words: &[u32], i: usize) -> f32 {
        match self.ty {
            WType::Q8_0 => ((words[i / 4] >> (8 * (i % 4))) as u8 as i8) as f32,
            _ => ((words[i / 8] >> (4 * (i % 8))) & 15) as f32,
        }
    }

    /// `out[r] = sum_c W[r, c] * x[c]`, block by block, never materialising a dequantized matrix.
    /// Natively, large matrices are split by rows across threads.
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len(), self.cols);
        assert_eq!(out.len(), self.rows);
        // Per-block sums of x serve every row: sum((q*d + m) * x) = d * sum(q*x) + m * sum(x).
        let xsum: Vec<f32> = if self.ty.is_quantized() {
            x.chunks_exact(self.block).map(|c| c.iter().sum()).collect()
        } else {
            Vec::new()
        };
        let threads = matvec_threads(self.rows * self.cols);
        if threads <= 1 {
            return self.matvec_rows(x, &xsum, 0, out);
        }
        let chunk = self.rows.div_ceil(threads);
        std::thread::scope(|s| {
            for (i, o) in out.chunks_mut(chunk).enumerate() {
                let xsum = &xsum;
                s.spawn(move || self.matvec_rows(x, xsum, i * chunk, o));
            }
        });
    }

    /// Rows `first..first + out.len()` of the product.
    fn matvec_rows(&self, x: &[f32], xsum: &[f32], first: usize, out: &mut [f32]) {
        let cols = self.cols;
        match self.ty {
            WType::F32 => {
                let w: &[f32] = bytemuck::cast_slice(&self.words);
                for (i, o) in out.iter_mut().enumerate() {
                    let r = first + i;
                    *o = dot(&w[r * cols..(r + 1) * cols], x);
                }
            }
            WType::Q4_K | WType::Q5_K | WType::Q6_K => {
                let bpr = cols / QK_K;
                let mut y = [0.0f32; QK_K];
                for (i, o) in out.iter_mut().enumerate() {
                    let r = first + i;
                    let mut acc = 0.0f32;
                    for (bi, xs) in x.chunks_exact(QK_K).enumerate() {
                        self.k_block(r * bpr + bi, &mut y);
                        acc += dot(&y, xs);
                    }
                    *o = acc;
                }
            }
            WType::F16 => {
                let mut row = vec![0.0f32; cols];
                for (i, o) in out.iter_mut().enumerate() {
                    self.row_into(first + i, &mut row);
                    *o = dot(&row, x);
                }
            }
            WType::Q8_0 => {
                let bpr = cols / self.block;
                let per = self.block / 4;
                let mut codes = vec![0.0f32; self.block];
                for (i, o) in out.iter_mut().enumerate() {
                    let r = first + i;
                    let mut acc = 0.0f32;
                    for bi in 0..bpr {
                        let g = r * bpr + bi;
                        let words = &self.words[g * per..(g + 1) * per];
                        for (c, w) in codes.chunks_exact_mut(4).zip(words) {
                            for (k, v) in c.iter_mut().enumerate() {
                                *v = ((w >> (8 * k)) as u8 as i8) as f32;
                            }
                        }
                        let xs = &x[bi * self.block..(bi + 1) * self.block];
                        acc += self.scales[g].to_f32() * dot(&codes, xs);
                    }
                    *o = acc;
                }
            }
            WType::Q4_0 | WType::Q4_1 => {
                let bpr = cols / self.block;
                let per = self.block / 8;
                for (i, o) in out.iter_mut().enumerate() {
                    let r = first + i;
                    let mut acc = 0.0f32;
                    for bi in 0..bpr {
                        let g = r * bpr + bi;
                        let words = &self.words[g * per..(g + 1) * per];
                        let xs = &x[bi * self.block..(bi + 1) * self.block];
                        let mut qx = [0.0f32; 8];
                        for (w, x8) in words.iter().zip(xs.chunks_exact(8)) {
                            for k in 0..8 {
                                qx[k] += ((w >> (4 * k)) & 15) as f32 * x8[k];
                            }
                        }
                        let (d, m) = self.block_params(g);
                        acc += d * qx.iter().sum::<f32>() + m * xsum[bi];
                    }
                    *o = acc;
                }
            }
        }
    }

    /// The tensor's bytes in ggml's GGUF encoding; `None` when the type has no ggml equivalent at this
    /// block size.
    pub fn to_ggml(&self) -> Option<Vec<u8>> {
        let gt = self.ty.ggml(self.block)?;
        let mut out = Vec::with_capacity(self.rows * self.cols / gt.block_len() * gt.block_bytes());
        match self.ty {
            WType::F32 | WType::F16 => {
                let bytes: &[u8] = bytemuck::cast_slice(&self.words);
                out.extend_from_slice(&bytes[..self.n_bytes()]);
            }
            t if t.is_k() => {
                for g in 0..self.rows * self.cols / QK_K {
                    out.extend_from_slice(self.k_bytes(g));
                }
            }
            _ => {
                let n_blocks = self.rows * self.cols / 32;
                for g in 0..n_blocks {
                    let words = self.block_words(g);
                    out.extend_from_slice(&self.scales[g].to_le_bytes());
                    if self.ty == WType::Q4_1 {
                        out.extend_from_slice(&self.mins[g].to_le_bytes());
                    }
                    if self.ty == WType::Q8_0 {
                        out.extend_from_slice(bytemuck::cast_slice(words));
                    } else {
                        let nib = |i: usize| ((words[i / 8] >> (4 * (i % 8))) & 15) as u8;
                        for j in 0..16 {
                            out.push(nib(j) | nib(j + 16) << 4);
                        }
                    }
                }
            }
        }
        Some(out)
    }

    /// Reads ggml-encoded bytes of a `[rows, cols]` tensor.
    pub fn from_ggml(gt: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Self {
        let (ty, block) = gt.stored();
        assert_eq!(bytes.len(), rows * cols / gt.block_len() * gt.block_bytes());
        let mut m = QMatrix {
            ty,
            block,
            rows,
            cols,
            words: Vec::new(),
            scales: Vec::new(),
            mins: Vec::new(),
        };
        match gt {
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
                // Each super-block padded to whole words (Q6_K's 210 bytes take 53 words).
                let per = ty.words(QK_K);
                m.words.reserve(rows * cols / QK_K * per);
                let mut padded = vec![0u8; per * 4];
                for blk in bytes.chunks_exact(gt.block_bytes()) {
                    padded[..blk.len()].copy_from_slice(blk);
                    m.words.extend(
                        padded
                            .chunks_exact(4)
                            .map(|c| u32::from_le_bytes(c.try_into().unwrap())),
                    );
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => m.read_q5(gt, bytes),
            GgmlType::IQ4_NL => m.read_iq4_nl(bytes),
            GgmlType::BF16 => {
                m.words = (bytes.chunks_exact(2))
                    .map(|c| (u16::from_le_bytes([c[0], c[1]]) as u32) << 16)
                    .collect();
            }
            GgmlType::F32 | GgmlType::F16 => {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().div_ceil(4) * 4, 0);
                m.words = padded
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
            }
            _ => {
                let mut codes = [0u8; 32];
                let per = 32 * ty.code_bits() / 32;
                m.words.reserve(rows * cols / 32 * per);
                let mut packed = vec![0u32; per];
                for blk in bytes.chunks_exact(gt.block_bytes()) {
                    m.scales.push(f16::from_le_bytes([blk[0], blk[1]]));
                    let qs = match gt {
                        GgmlType::Q4_1 => {
                            m.mins.push(f16::from_le_bytes([blk[2], blk[3]]));
                            &blk[4..]
                        }
                        _ => &blk[2..],
                    };
                    if gt == GgmlType::Q8_0 {
                        codes.copy_from_slice(qs);
                    } else {
                        for j in 0..16 {
                            codes[j] = qs[j] & 15;
                            codes[j + 16] = qs[j] >> 4;
                        }
                    }
                    pack_codes(ty, &codes, &mut packed);
                    m.words.extend_from_slice(&packed);
                }
            }
        }
        m
    }

    /// Q5_0 and Q5_1 blocks into this Q8_0 (or F32) matrix. Each value's five bits: the low
    /// nibbles (values j and j + 16 share byte j) and bit j of the 32-bit qh. Q5_0 keeps its scale
    /// and the codes less 16 as Q8_0's signed bytes; Q5_1 becomes d * code + m in f32, as ggml
    /// dequantizes it.
    fn read_q5(&mut self, gt: GgmlType, bytes: &[u8]) {
        let q5 = gt == GgmlType::Q5_0;
        let mut codes = [0u8; 32];
        let mut packed = [0u32; 8];
        for blk in bytes.chunks_exact(gt.block_bytes()) {
            let d = f16::from_le_bytes([blk[0], blk[1]]);
            let at = if q5 { 2 } else { 4 };
            let qh = u32::from_le_bytes(blk[at..at + 4].try_into().unwrap());
            let qs = &blk[at + 4..];
            for j in 0..16 {
                let hi = |k: usize| (((qh >> k) & 1) << 4) as u8;
                codes[j] = (qs[j] & 15) | hi(j);
                codes[j + 16] = (qs[j] >> 4) | hi(j + 16);
            }
            if q5 {
                self.scales.push(d);
                for c in codes.iter_mut() {
                    *c = (*c as i8 - 16) as u8;
                }
                pack_codes(self.ty, &codes, &mut packed);
                self.words.extend_from_slice(&packed);
            } else {
                let (d, min) = (d.to_f32(), f16::from_le_bytes([blk[2], blk[3]]).to_f32());
                (self.words).extend(codes.iter().map(|&c| (c as f32 * d + min).to_bits()));
            }
        }
    }

    /// IQ4_NL blocks into this Q8_0 matrix: ggml's kvalues_iq4nl, which each nibble indexes
    /// (values j and j + 16 share byte j), become the codes under the block's scale.
    fn read_iq4_nl(&mut self, bytes: &[u8]) {
        const VALUES: [i8; 16] = [
            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
        ];
        let mut codes = [0u8; 32];
        let mut packed = [0u32; 8];
        for blk in bytes.chunks_exact(GgmlType::IQ4_NL.block_bytes()) {
            self.scales.push(f16::from_le_bytes([blk[0], blk[1]]));
            for (j, &q) in blk[2..].iter().enumerate() {
                codes[j] = VALUES[(q & 15) as usize] as u8;
                codes[j + 16] = VALUES[(q >> 4) as usize] as u8;
            }
            pack_codes(self.ty, &codes, &mut packed);
            self.words.extend_from_slice(&packed);
        }
    }
}

/// Writes a block's codes into its words in the planar packing.
fn pack_codes(ty: WType, codes: &[u8], words: &mut [u32]) {
    if ty == WType::Q8_0 {
        for (w, c) in words.iter_mut().zip(codes.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    } else {
        for (w, c) in words.iter_mut().zip(codes.chunks_exact(8)) {
            *w = c
                .iter()
                .enumerate()
                .fold(0u32, |w, (i, &q)| w | ((q as u32 & 15) << (4 * i)));
        }
    }
}

/// Quantizes one block, writing its codes; returns (scale, min). The arithmetic follows ggml's
/// reference quantizers (in f32, as gguf-py does), so block-32 output is bit-identical to theirs.
fn quantize_block(ty: WType, x: &[f32], codes: &mut [u8]) -> (f16, f16) {
    match ty {
        WType::Q4_0 => {
            // The signed value of largest magnitude, first one on ties.
            let mut max = 0.0f32;
            for &v in x {
                if v.abs() > max.abs() {
                    max = v;
                }
            }
            let d = max / -8.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = ((v * id + 8.5).trunc() as u8).min(15);
            }
            (f16::from_f32(d), f16::ZERO)
        }
        WType::Q4_1 => {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let min = x.iter().copied().fold(f32::INFINITY, f32::min);
            let d = (max - min) / 15.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = (((v - min) * id + 0.5).trunc() as u8).min(15);
            }
            (f16::from_f32(d), f16::from_f32(min))
        }
        WType::Q8_0 => {
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            for (c, &v) in codes.iter_mut().zip(x) {
                // f32::round is half away from zero, like ggml's roundf.
                *c = ((v * id).round() as i8) as u8;
            }
            (f16::from_f32(d), f16::ZERO)
        }
        _ => unreachable!("nibble does not quantize to {ty:?}"),
    }
}

/// How many threads a matvec of `n` weights gets: one below ~256K weights (spawning costs more than it
/// saves), and always one in wasm, which has no threads here.
fn matvec_threads(n: usize) -> usize {
    if cfg!(target_arch = "wasm32") || n < 1 << 18 {
        return 1;
    }
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let t = *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    t.min(n >> 17).max(1)
}

/// Rejects NaN or Inf before quantizing, naming the tensor.
pub fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "tensor {name:?}: element {i} is {} (weights must be finite to quantize)",
            data[i]
        )));
    }
    Ok(())
}

/// Plain dot product in chunks of 8 so the compiler vectorises it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn stored_bytes_counts_what_a_matrix_holds() {
        // The plan's accounting (dtype.rs) must equal the bytes a quantized matrix really holds,
        // odd f16 rows and every block size included.
        for ty in WType::ALL {
            for block in [32, 64, 128, 256] {
                let (rows, cols) = if ty.is_quantized() || ty.is_k() {
                    (3, 512)
                } else {
                    (3, 7)
                };
                let data: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
                let m = QMatrix::quantize(ty, block, rows, cols, &data);
                assert_eq!(
                    ty.stored_bytes(rows, cols, m.block),
                    m.n_bytes(),
                    "{} block {block}",
                    ty.name()
                );
            }
        }
    }

    #[test]
    fn ggml_round_trip_is_lossless() {
        let x = data(4 * 64, 3);
        for ty in [
            WType::Q4_0,
            WType::Q4_1,
            WType::Q8_0,
            WType::F16,
            WType::F32,
        ] {
            let m = QMatrix::quantize(ty, 32, 4, 64, &x);
            let g = m.to_ggml().unwrap();
            let back = QMatrix::from_ggml(ty.ggml(32).unwrap(), 4, 64, &g);
            assert_eq!(back, m, "{ty:?}");
        }
        let x = data(2 * 512, 4);
        for ty in [WType::Q4_K, WType::Q5_K, WType::Q6_K] {
            let m = QMatrix::quantize(ty, 32, 2, 512, &x);
            let g = m.to_ggml().unwrap();
            let back = QMatrix::from_ggml(ty.ggml(QK_K).unwrap(), 2, 512, &g);
            assert_eq!(back, m, "{ty:?}");
        }
    }

    #[test]
    fn matvec_matches_dequantized_dot() {
        let x = data(3 * 128, 5);
        let v = data(128, 6);
        for ty in [WType::Q4_0, WType::Q4_1, WType::Q8_0, WType::F16] {
            for block in [32, 64, 128] {
                let m = QMatrix::quantize(ty, block, 3, 128, &x);
                let mut out = vec![0.0; 3];
                m.matvec(&v, &mut out);
                let deq = m.to_f32();
                for r in 0..3 {
                    let want = dot(&deq[r * 128..(r + 1) * 128], &v);
                    assert!(
                        (out[r] - want).abs() < 1e-4,
                        "{ty:?} {block}: {} vs {want}",
                        out[r]
                    );
                }
            }
        }
    }

    /// nibble's K quantizers keep each sub-block's range and round the sub-block scales up, so a K type
    /// is at least about as accurate as the 32-block type with the same code bits and a float scale
    /// (Q4_K and Q5_K against q4_1, which also has a min; Q6_K against q8_0 scaled by 2^2 for its two
    /// fewer bits). Rounding 6-bit sub-block scales up costs at most 1/63 of the step of the widest
    /// sub-block, and Q5_K's 31 levels halve q4_1's 15-level step: hence the bounds 1.1 (Q4_K), 0.55
    /// (Q5_K) and 1.1 x 4 (Q6_K, 63 levels of a signed range against q8_0's 255). Data with sub-blocks
    /// of very different magnitude (scaled rows) is included, where 6-bit scales hurt most.
    #[test]
    fn k_quantizers_are_as_accurate_as_their_block_peers() {
        let rmse = |m: &QMatrix, x: &[f32]| {
            let y = m.to_f32();
            (x.iter()
                .zip(&y)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / x.len() as f32)
                .sqrt()
        };
        let mut x = data(8 * 512, 9);
        // Rows 4..8: sub-blocks whose magnitudes differ by up to 16x, and an all-zero sub-block.
        for (i, v) in x[4 * 512..].iter_mut().enumerate() {
            *v *= 1.0 + (i / 32 % 16) as f32;
        }
        x[7 * 512..7 * 512 + 32].fill(0.0);
        let q = |ty| QMatrix::quantize(ty, 32, 8, 512, &x);
        let (q41, q8) = (rmse(&q(WType::Q4_1), &x), rmse(&q(WType::Q8_0), &x));
        for (ty, peer, bound) in [
            (WType::Q4_K, q41, 1.1),
            (WType::Q5_K, q41, 0.55),
            (WType::Q6_K, q8, 4.4),
        ] {
            let e = rmse(&q(ty), &x);
            println!(
                "{ty:?}: rmse {e:.3e}, peer {peer:.3e}, ratio {:.3}",
                e / peer
            );
            assert!(e <= bound * peer, "{ty:?}: rmse {e} vs peer {peer}");
        }
        // The all-zero sub-block stays exactly zero.
        let y = q(WType::Q4_K).to_f32();
        assert!(y[7 * 512..7 * 512 + 32].iter().all(|&v| v == 0.0));
    }
}
