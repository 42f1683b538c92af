//! The fast CPU backend: the oracle's forward pass on kernels built for speed, behind the same
//! [`Kernels`] and [`Decoder`] traits. Quantized weights meet activations quantized once per product to
//! 8 bits in blocks of 32 ([`dot::Q8`]) and sum in integers with the machine's SIMD ([`dot::Isa`]);
//! rows are split over a persistent thread pool; a prompt runs in batches of positions (each weight row
//! read once per batch) and only its last position's logits are computed. The oracle (`cpu.rs`) stays
//! the reference; this backend is checked against it with a tolerance derived from the 8-bit rounding
//! (`scenario::Tolerance::for_backend`, engine/tests/fast.rs).

pub mod dot;
mod pool;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::arch::forward;
use crate::config::softcap;
use crate::cpu::{inv_rms, softmax};
use crate::forward::{gelu_tanh, rope_cos_sin, rope_tables, Act, Kernels};
use crate::kv::{KvCache, KvConfig};
use crate::model::{Config, Model, TensorId};
use crate::quant::{QMatrix, WType};
use crate::{Decoder, Fut, Result};
use dot::{Isa, Order, QRow, Q8, QB};
use half::f16;
use pool::Pool;

/// Threads and instruction set of a fast CPU decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastOptions {
    pub threads: usize,
    pub isa: Isa,
}

impl Default for FastOptions {
    /// Every core natively, one thread in wasm; the best instruction set the machine has.
    fn default() -> Self {
        let threads = if cfg!(target_arch = "wasm32") {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        FastOptions {
            threads,
            isa: Isa::best(),
        }
    }
}

impl FastOptions {
    pub fn label(&self) -> String {
        let t = if self.threads == 1 {
            "thread"
        } else {
            "threads"
        };
        format!("{}, {} {t}", self.isa.name(), self.threads)
    }
}

/// Positions a prompt batch holds at most.
pub const MAX_ROWS: usize = 64;

pub struct FastDecoder<'m> {
    model: &'m Model,
    opts: FastOptions,
    pool: Pool,
    /// Rows of the batch in flight, and the most a batch may hold with this KV configuration.
    rows: usize,
    max_rows: usize,
    acts: Vec<Vec<f32>>,
    kv: KvCache,
    positions: Vec<usize>,
    keys: Vec<f32>,
    values: Vec<f32>,
    /// RoPE's frequencies of global and local layers (`forward::rope_tables`).
    freqs: [Vec<f32>; 2],
    /// The quantized rows of one activation, reused while it is unchanged (Q, K and V read one input).
    xq: Vec<Q8>,
    xq_of: Option<(Act, Order)>,
    /// Product results by weight row before they are laid out by token.
    tmp: Vec<f32>,
    /// Compute the classifier for the last row only (a prompt's batch).
    last_logits_only: bool,
}

impl<'m> FastDecoder<'m> {
    pub fn new(model: &'m Model, kv: KvConfig, opts: FastOptions) -> Result<Self> {
        if !opts.isa.available() {
            return Err(crate::Error::Invalid(format!(
                "instruction set {} is not available on this machine",
                opts.isa.name()
            )));
        }
        let c = &model.config;
        // A batch stores all its rows before any attends: exact only where no row's store can evict
        // or requantize what an earlier row reads (no window ring, no KIVI key groups).
        let max_rows = if kv.window.is_none() && kv.k != crate::dtype::KvType::Kivi4 {
            MAX_ROWS
        } else {
            1
        };
        Ok(FastDecoder {
            model,
            opts,
            pool: Pool::new(opts.threads)?,
            rows: 0,
            max_rows,
            // A batch computes the classifier for its last row only, so logits take one row.
            acts: Act::ALL
                .iter()
                .map(|&a| {
                    let rows = if a == Act::Logits { 1 } else { max_rows };
                    vec![0.0; rows * a.len(c)]
                })
                .collect(),
            kv: KvCache::new(c, kv)?,
            positions: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            freqs: rope_tables(
                c,
                c.rope_freqs
                    .then(|| model.weights.norm(TensorId::RopeFreqs)),
            ),
            xq: Vec::new(),
            xq_of: None,
            tmp: Vec::new(),
            last_logits_only: false,
        })
    }

    fn c(&self) -> &'m Config {
        &self.model.config
    }

    /// Rows `0..rows` of activation `a`.
    fn rows_of(&mut self, a: Act) -> &mut [f32] {
        let n = self.rows * a.len(&self.model.config);
        &mut self.acts[a as usize][..n]
    }

    /// A mutable activation and a different read-only one, `rows` rows each.
    fn pair(&mut self, out: Act, x: Act) -> (&mut [f32], &[f32]) {
        let c = self.c();
        let (no, nx) = (self.rows * out.len(c), self.rows * x.len(c));
        let (o, i) = (out as usize, x as usize);
        assert_ne!(o, i, "kernel output aliases its input");
        if o < i {
            let (a, b) = self.acts.split_at_mut(i);
            (&mut a[o][..no], &b[0][..nx])
        } else {
            let (a, b) = self.acts.split_at_mut(o);
            (&mut b[0][..no], &a[i][..nx])
        }
    }

    fn changed(&mut self) {
        self.xq_of = None;
    }

    /// Runs `tokens` at `pos0..` as one batch.
    fn pass(&mut self, tokens: &[u32], pos0: usize, last_only: bool) -> Result<()> {
        let c = self.c();
        for (i, &t) in tokens.iter().enumerate() {
            crate::cpu::check_input(c, &self.kv.config, t, pos0 + i)?;
        }
        self.last_logits_only = last_only;
        let pool = self.pool.clone();
        pool.run(|| forward(self, c, tokens, pos0));
        Ok(())
    }

    /// The logits of the batch's last row.
    fn last_logits(&self) -> &[f32] {
        &self.acts[Act::Logits as usize]
    }

    /// `out = W x` for every row (or only the last, for the classifier of a prompt).
    fn product(&mut self, out: Act, w: TensorId, x: Act) {
        let m = self.model.weights.matrix(w);
        let c = self.c();
        let cols = x.len(c);
        let first = if out == Act::Logits {
            assert!(
                self.last_logits_only || self.rows == 1,
                "logits of a whole batch"
            );
            self.rows - 1
        } else {
            0
        };
        let n = self.rows - first;
        let order = match m.ty {
            WType::Q4_0 | WType::Q4_1 if m.block.is_multiple_of(QB) => Some(Order::Nibble),
            WType::Q8_0 if m.block.is_multiple_of(QB) => Some(Order::Natural),
            _ => None,
        };
        if let Some(o) = order {
            if self.xq_of != Some((x, o)) {
                let xs = &self.acts[x as usize];
                self.xq.resize_with(self.rows, Q8::default);
                for (t, q) in self.xq.iter_mut().enumerate() {
                    q.quantize(&xs[t * cols..(t + 1) * cols], o);
                }
                self.xq_of = Some((x, o));
            }
        }
        let rhs = match order {
            Some(_) => Rhs::Q8(&self.xq[first..self.rows]),
            None => Rhs::F32(&self.acts[x as usize][first * cols..self.rows * cols]),
        };
        self.tmp.resize(m.rows * n, 0.0);
        let isa = self.opts.isa;
        self.pool
            .rows(&mut self.tmp, n, m.rows * cols * n, |r0, o| {
                products(m, isa, &rhs, r0, o, n);
            });
        // The classifier's one row holds the last position's logits.
        let at = if out == Act::Logits { 0 } else { first };
        let dst = &mut self.acts[out as usize][at * m.rows..(at + n) * m.rows];
        if n == 1 {
            dst.copy_from_slice(&self.tmp);
        } else {
            for (r, chunk) in self.tmp.chunks_exact(n).enumerate() {
                for (t, v) in chunk.iter().enumerate() {
                    dst[t * m.rows + r] = *v;
                }
            }
        }
    }

    /// Attention of row `t` (position `pos`) against keys and values `0..=pos` laid out by position.
    /// Row `t`'s attention over key and value rows `first..=pos`.
    fn attend(
        &self,
        t: usize,
        (first, pos): (usize, usize),
        kv_rows: (&[f32], &[f32]),
        o: &mut [f32],
    ) {
        let c = self.c();
        let (keys, values) = kv_rows;
        let (hs, kv) = (c.head_size(), c.kv_dim());
        let group = c.n_heads / c.n_kv_heads;
        let sqrt_hs = (hs as f32).sqrt();
        let q_all = &self.acts[Act::Q as usize][t * c.q_dim()..(t + 1) * c.q_dim()];
        let isa = self.opts.isa;
        let n = pos + 1 - first;
        self.pool.chunks(o, hs, 2 * n * c.q_dim(), |h, oh| {
            let q = &q_all[h * hs..(h + 1) * hs];
            let kvh = (h / group) * hs;
            let cap = c.attn_softcap;
            let mut scores: Vec<f32> = (first..=pos)
                .map(|p| {
                    let s = dot::f32_row(isa, q, &keys[p * kv + kvh..][..hs]) / sqrt_hs;
                    cap.map_or(s, |cap| softcap(s, cap))
                })
                .collect();
            softmax(&mut scores);
            oh.fill(0.0);
            for (p, &s) in (first..=pos).zip(&scores) {
                for (a, b) in oh.iter_mut().zip(&values[p * kv + kvh..][..hs]) {
                    *a += s * b;
                }
            }
        });
    }
}

/// The activations a product reads: quantized rows, or f32 rows `cols` long.
enum Rhs<'a> {
    Q8(&'a [Q8]),
    F32(&'a [f32]),
}

/// Row `r` of a q4_0, q4_1 or q8_0 matrix as the integer products read it.
fn qrow(m: &QMatrix, r: usize) -> QRow<'_> {
    let bpr = m.cols / m.block;
    let per = m.block * m.ty.code_bits() / 32;
    let scales = &m.scales[r * bpr..(r + 1) * bpr];
    QRow {
        codes: bytemuck::cast_slice(&m.words[r * bpr * per..(r + 1) * bpr * per]),
        scales,
        sub: m.block / QB,
        offsets: match m.ty {
            WType::Q4_0 => Some((scales, -8.0)),
            WType::Q4_1 => Some((&m.mins[r * bpr..(r + 1) * bpr], 1.0)),
            _ => None,
        },
    }
}

/// Weight rows `r0..` of `m` against every row of `rhs`: `out[i * n + t]` for weight row `r0 + i`.
fn products(m: &QMatrix, isa: Isa, rhs: &Rhs, r0: usize, out: &mut [f32], n: usize) {
    let cols = m.cols;
    if let (WType::Q4_0 | WType::Q4_1, Rhs::Q8([x])) = (m.ty, rhs) {
        return dot::q4_many(isa, |i| qrow(m, r0 + i), x, out);
    }
    let mut row = Vec::new();
    for (i, o) in out.chunks_exact_mut(n).enumerate() {
        let r = r0 + i;
        match (m.ty, rhs) {
            (WType::Q4_0 | WType::Q4_1 | WType::Q8_0, Rhs::Q8(xs)) => {
                dot::rows(isa, m.ty != WType::Q8_0, qrow(m, r), xs, o);
            }
            (WType::F32, Rhs::F32(xs)) => {
                let w: &[f32] = bytemuck::cast_slice(&m.words[r * cols..(r + 1) * cols]);
                for (o, x) in o.iter_mut().zip(xs.chunks_exact(cols)) {
                    *o = dot::f32_row(isa, w, x);
                }
            }
            // With F16C the conversion rides along the products; elsewhere (wasm) the row is
            // converted whole first, as below.
            (WType::F16, Rhs::F32(xs)) if n == 1 && matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) => {
                let h: &[f16] = bytemuck::cast_slice(&m.words);
                o[0] = dot::f16_row(isa, &h[r * cols..(r + 1) * cols], xs);
            }
            // f16 rows of a batch, K-quants and blocks that are no multiple of 32: the row converted
            // once, then f32 products.
            (ty, Rhs::F32(xs)) => {
                row.resize(cols, 0.0);
                // half's slice conversion uses F16C; without it (wasm) it is slower than
                // `row_into`'s element-wise one.
                if ty == WType::F16 && matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
                    let h: &[f16] = bytemuck::cast_slice(&m.words);
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(
                        &h[r * cols..(r + 1) * cols],
                        &mut row,
                    );
                } else {
                    m.row_into(r, &mut row);
                }
                for (o, x) in o.iter_mut().zip(xs.chunks_exact(cols)) {
                    *o = dot::f32_row(isa, &row, x);
                }
            }
            (_, Rhs::Q8(_)) => unreachable!("activations are quantized only for q4/q8 rows"),
        }
    }
}

impl Kernels for FastDecoder<'_> {
    fn max_rows(&self) -> usize {
        self.max_rows
    }

    fn embed(&mut self, tokens: &[u32], out: Act) {
        self.changed();
        self.rows = tokens.len();
        let m = self.model.weights.matrix(TensorId::TokEmbd);
        let dim = self.c().dim;
        let o = self.rows_of(out);
        for (row, &t) in o.chunks_exact_mut(dim).zip(tokens) {
            m.row_into(t as usize, row);
        }
    }

    fn rmsnorm(&mut self, out: Act, x: Act, w: TensorId) {
        self.changed();
        let (eps, dim) = (self.c().norm_eps, self.c().dim);
        let weight = self.model.weights.norm(w);
        if out == x {
            for v in self.rows_of(out).chunks_exact_mut(dim) {
                let s = inv_rms(v, eps);
                for (a, w) in v.iter_mut().zip(weight) {
                    *a = w * (s * *a);
                }
            }
            return;
        }
        let (o, x) = self.pair(out, x);
        for (o, x) in o.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
            let s = inv_rms(x, eps);
            for ((o, a), w) in o.iter_mut().zip(x).zip(weight) {
                *o = w * (s * a);
            }
        }
    }

    fn matvec(&mut self, out: Act, w: TensorId, x: Act) {
        if self.xq_of.is_some_and(|(a, _)| a == out) {
            self.changed();
        }
        self.product(out, w, x);
    }

    fn matvec_add(&mut self, out: Act, w: TensorId, x: Act) {
        self.matvec(Act::Xb2, w, x);
        self.add(out, Act::Xb2);
    }

    fn add_bias(&mut self, x: Act, b: TensorId) {
        self.changed();
        let b = self.model.weights.norm(b);
        for row in self.rows_of(x).chunks_exact_mut(b.len()) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    }

    fn head_norm(&mut self, x: Act, w: TensorId) {
        self.changed();
        let c = self.c();
        let (eps, weight) = (c.norm_eps, self.model.weights.norm(w));
        for head in self.rows_of(x).chunks_exact_mut(c.head_size()) {
            let s = inv_rms(head, eps);
            for (a, w) in head.iter_mut().zip(weight) {
                *a = w * (s * *a);
            }
        }
    }

    fn rope_qk(&mut self, layer: usize, pos0: usize) {
        self.changed();
        let which = self.c().is_local(layer) as usize;
        let freqs = std::mem::take(&mut self.freqs[which]);
        for x in [Act::Q, Act::K] {
            let c = self.c();
            let (hs, len, neox) = (c.head_size(), x.len(c), c.rope_neox());
            for (t, row) in self.rows_of(x).chunks_exact_mut(len).enumerate() {
                let pos = pos0 + t;
                for head in row.chunks_exact_mut(hs) {
                    for (f, freq) in freqs.iter().enumerate() {
                        let (i, j) = if neox {
                            (f, f + hs / 2)
                        } else {
                            (2 * f, 2 * f + 1)
                        };
                        let (cos, sin) = rope_cos_sin(c, pos, *freq);
                        let (a, b) = (head[i], head[j]);
                        head[i] = a * cos - b * sin;
                        head[j] = a * sin + b * cos;
                    }
                }
            }
        }
        self.freqs[which] = freqs;
    }

    fn kv_store(&mut self, layer: usize, pos0: usize) {
        let kv = self.c().kv_dim();
        let (k, v) = (&self.acts[Act::K as usize], &self.acts[Act::V as usize]);
        for t in 0..self.rows {
            let r = t * kv..(t + 1) * kv;
            self.kv.store(layer, pos0 + t, &k[r.clone()], &v[r]);
        }
    }

    fn attention(&mut self, out: Act, layer: usize, pos0: usize) {
        self.changed();
        let qd = self.c().q_dim();
        let mut o = std::mem::take(&mut self.acts[out as usize]);
        let (mut keys, mut values) = (
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.values),
        );
        let last = pos0 + self.rows - 1;
        let direct = self.kv.f32_rows(layer).is_some();
        if !direct {
            self.kv.config.attended(last, &mut self.positions);
            self.kv
                .gather(layer, last, &self.positions, &mut keys, &mut values);
        }
        for t in 0..self.rows {
            let oh = &mut o[t * qd..(t + 1) * qd];
            // Rows are positions but with a window (models with local layers take none).
            let rows = (self.c().first_attended(layer, pos0 + t), pos0 + t);
            match self.kv.f32_rows(layer) {
                Some(kv) => self.attend(t, rows, kv, oh),
                // Gathered at the batch's last position: without a window a prefix per row; with one,
                // batches are single rows and the gathered positions are exactly the row's.
                None if self.kv.config.window.is_some() => {
                    self.attend(t, (0, self.positions.len() - 1), (&keys, &values), oh)
                }
                None => self.attend(t, rows, (&keys, &values), oh),
            }
        }
        self.keys = keys;
        self.values = values;
        self.acts[out as usize] = o;
    }

    fn swiglu(&mut self, gate: Act, up: Act) {
        self.changed();
        let (g, u) = self.pair(gate, up);
        for (g, u) in g.iter_mut().zip(u) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    }

    fn geglu(&mut self, gate: Act, up: Act) {
        self.changed();
        let (g, u) = self.pair(gate, up);
        for (g, u) in g.iter_mut().zip(u) {
            *g = gelu_tanh(*g) * u;
        }
    }

    fn scale(&mut self, x: Act, s: f32) {
        self.changed();
        for v in self.rows_of(x).iter_mut() {
            *v *= s;
        }
    }

    fn softcap(&mut self, x: Act, cap: f32) {
        self.changed();
        for v in self.rows_of(x).iter_mut() {
            *v = softcap(*v, cap);
        }
    }

    fn add(&mut self, x: Act, y: Act) {
        self.changed();
        let (x, y) = self.pair(x, y);
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }
}

impl Decoder for FastDecoder<'_> {
    fn config(&self) -> &Config {
        self.c()
    }

    fn step(&mut self, token: u32, pos: usize) -> Fut<'_, &[f32]> {
        let r = self.pass(&[token], pos, false);
        Box::pin(std::future::ready(r.map(|()| self.last_logits())))
    }

    fn prefill<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> Fut<'a, &'a [f32]> {
        let mut r = if tokens.is_empty() {
            Err(crate::Error::Invalid("empty prompt".into()))
        } else {
            Ok(())
        };
        let rows = self.max_rows;
        for (i, chunk) in tokens.chunks(rows).enumerate() {
            if r.is_ok() {
                r = self.pass(chunk, pos0 + i * rows, true);
            }
        }
        Box::pin(std::future::ready(r.map(|()| self.last_logits())))
    }

    fn prefill_argmax<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> Fut<'a, u32> {
        Box::pin(async move { Ok(crate::eval::argmax(self.prefill(tokens, pos0).await?)) })
    }

    fn prefill_method(&self) -> String {
        format!(
            "batches of up to {} positions per pass, the classifier on the last only ({})",
            self.max_rows,
            self.opts.label()
        )
    }

    fn decode_method(&self) -> String {
        format!("token by token ({})", self.opts.label())
    }

    fn backend(&self) -> String {
        crate::cpu::backend_name()
    }

    fn rewinds(&self) -> bool {
        self.kv.config.rewinds()
    }

    fn reset(&mut self) {
        self.kv.reset();
    }

    fn kv_bytes(&self) -> usize {
        self.kv.bytes()
    }

    fn context_limit(&self) -> usize {
        self.kv.config.context_limit(self.c())
    }
}
