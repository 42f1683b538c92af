//! The f32 CPU backend: the oracle every other backend and configuration is checked against.

use crate::arch::forward;
use crate::config::softcap;
use crate::forward::{gelu_tanh, rope_cos_sin, rope_tables, Act, Kernels};
use crate::kv::{KvCache, KvConfig};
use crate::model::{Config, Model, TensorId};
use crate::quant::dot;
use crate::Decoder;

/// CPU state for one sequence: activations and a KV cache. With the default [`KvConfig`] (f32, no window)
/// and f32 weights this is the oracle.
pub struct CpuDecoder<'m> {
    model: &'m Model,
    acts: Vec<Vec<f32>>,
    /// Grown as positions arrive, so a huge declared context costs nothing until it is used.
    kv: KvCache,
    /// Positions attended at the current step, and their keys and values gathered as f32 rows.
    positions: Vec<usize>,
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    /// RoPE's frequency per pair of a head, global layers' then local ones' (`forward::rope_tables`),
    /// computed once.
    freqs: [Vec<f32>; 2],
}

impl<'m> CpuDecoder<'m> {
    /// The oracle: f32 KV cache, no window.
    pub fn new(model: &'m Model) -> Self {
        Self::with_kv(model, KvConfig::default()).expect("the default KV config is valid")
    }

    pub fn with_kv(model: &'m Model, kv: KvConfig) -> crate::Result<Self> {
        let c = &model.config;
        Ok(CpuDecoder {
            model,
            acts: Act::ALL.iter().map(|a| vec![0.0; a.len(c)]).collect(),
            kv: KvCache::new(c, kv)?,
            positions: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            scores: Vec::new(),
            freqs: rope_tables(
                c,
                c.rope_freqs
                    .then(|| model.weights.norm(TensorId::RopeFreqs)),
            ),
        })
    }

    fn act(&self, a: Act) -> &[f32] {
        &self.acts[a as usize]
    }

    /// A mutable buffer and a different read-only one.
    fn pair(&mut self, out: Act, x: Act) -> (&mut [f32], &[f32]) {
        let (o, i) = (out as usize, x as usize);
        assert_ne!(o, i, "kernel output aliases its input");
        if o < i {
            let (a, b) = self.acts.split_at_mut(i);
            (&mut a[o], &b[0])
        } else {
            let (a, b) = self.acts.split_at_mut(o);
            (&mut b[0], &a[i])
        }
    }
}

impl Kernels for CpuDecoder<'_> {
    fn embed(&mut self, tokens: &[u32], out: Act) {
        // The oracle runs one token per pass (max_rows is 1), as llama2.c does.
        let m = self.model.weights.matrix(TensorId::TokEmbd);
        m.row_into(tokens[0] as usize, &mut self.acts[out as usize]);
    }

    fn rmsnorm(&mut self, out: Act, x: Act, w: TensorId) {
        let eps = self.model.config.norm_eps;
        let weight = self.model.weights.norm(w);
        let (o, x) = if out == x {
            let v = &mut self.acts[out as usize];
            let s = inv_rms(v, eps);
            for (a, w) in v.iter_mut().zip(weight) {
                *a *= s * w;
            }
            return;
        } else {
            self.pair(out, x)
        };
        let s = inv_rms(x, eps);
        for ((o, a), w) in o.iter_mut().zip(x).zip(weight) {
            *o = w * (s * a);
        }
    }

    fn matvec(&mut self, out: Act, w: TensorId, x: Act) {
        let m = self.model.weights.matrix(w);
        let (o, x) = self.pair(out, x);
        m.matvec(x, o);
    }

    fn matvec_add(&mut self, out: Act, w: TensorId, x: Act) {
        // Through Xb2 so the sum rounds exactly as `matvec` then `add` would.
        self.matvec(Act::Xb2, w, x);
        self.add(out, Act::Xb2);
    }

    fn add_bias(&mut self, x: Act, b: TensorId) {
        let b = self.model.weights.norm(b);
        for (v, b) in self.acts[x as usize].iter_mut().zip(b) {
            *v += b;
        }
    }

    fn head_norm(&mut self, x: Act, w: TensorId) {
        let c = &self.model.config;
        let (eps, weight) = (c.norm_eps, self.model.weights.norm(w));
        for head in self.acts[x as usize].chunks_exact_mut(c.head_size()) {
            let s = inv_rms(head, eps);
            for (a, w) in head.iter_mut().zip(weight) {
                *a = w * (s * *a);
            }
        }
    }

    fn rope_qk(&mut self, layer: usize, pos: usize) {
        let c = &self.model.config;
        let hs = c.head_size();
        let neox = c.rope_neox();
        let freqs = &self.freqs[c.is_local(layer) as usize];
        for x in [Act::Q, Act::K] {
            for head in self.acts[x as usize].chunks_exact_mut(hs) {
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

    fn kv_store(&mut self, layer: usize, pos: usize) {
        let (k, v) = (&self.acts[Act::K as usize], &self.acts[Act::V as usize]);
        self.kv.store(layer, pos, k, v);
    }

    fn attention(&mut self, out: Act, layer: usize, pos: usize) {
        let c = &self.model.config;
        let (hs, kv) = (c.head_size(), c.kv_dim());
        let group = c.n_heads / c.n_kv_heads;
        // Divide like llama2.c (a reciprocal multiply rounds differently).
        let sqrt_hs = (hs as f32).sqrt();
        self.kv.config.attended(pos, &mut self.positions);
        let first = c.first_attended(layer, pos);
        self.positions.retain(|&p| p >= first);
        self.kv.gather(
            layer,
            pos,
            &self.positions,
            &mut self.keys,
            &mut self.values,
        );
        let n = self.positions.len();
        self.scores.resize(n, 0.0);
        let mut o = std::mem::take(&mut self.acts[out as usize]);
        let q_all = &self.acts[Act::Q as usize];
        for h in 0..c.n_heads {
            let q = &q_all[h * hs..(h + 1) * hs];
            let kvh = (h / group) * hs;
            for (t, s) in self.scores.iter_mut().enumerate() {
                *s = dot(q, &self.keys[t * kv + kvh..][..hs]) / sqrt_hs;
                if let Some(cap) = c.attn_softcap {
                    *s = softcap(*s, cap);
                }
            }
            softmax(&mut self.scores);
            let oh = &mut o[h * hs..(h + 1) * hs];
            oh.fill(0.0);
            for (t, &p) in self.scores.iter().enumerate() {
                for (a, b) in oh.iter_mut().zip(&self.values[t * kv + kvh..][..hs]) {
                    *a += p * b;
                }
            }
        }
        self.acts[out as usize] = o;
    }

    fn swiglu(&mut self, gate: Act, up: Act) {
        let (g, u) = self.pair(gate, up);
        for (g, u) in g.iter_mut().zip(u) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    }

    fn geglu(&mut self, gate: Act, up: Act) {
        let (g, u) = self.pair(gate, up);
        for (g, u) in g.iter_mut().zip(u) {
            *g = gelu_tanh(*g) * u;
        }
    }

    fn scale(&mut self, x: Act, s: f32) {
        for v in self.acts[x as usize].iter_mut() {
            *v *= s;
        }
    }

    fn softcap(&mut self, x: Act, cap: f32) {
        for v in self.acts[x as usize].iter_mut() {
            *v = softcap(*v, cap);
        }
    }

    fn add(&mut self, x: Act, y: Act) {
        let (x, y) = self.pair(x, y);
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }
}

impl CpuDecoder<'_> {
    /// [`Decoder::step`] without the future: the CPU answers at once.
    pub fn step_now(&mut self, token: u32, pos: usize) -> crate::Result<&[f32]> {
        check_input(&self.model.config, &self.kv.config, token, pos)?;
        let model = self.model;
        forward(self, &model.config, &[token], pos);
        Ok(self.act(Act::Logits))
    }
}

impl Decoder for CpuDecoder<'_> {
    fn config(&self) -> &Config {
        &self.model.config
    }

    fn step(&mut self, token: u32, pos: usize) -> crate::Fut<'_, &[f32]> {
        Box::pin(std::future::ready(self.step_now(token, pos)))
    }

    fn backend(&self) -> String {
        backend_name()
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
        self.kv.config.context_limit(&self.model.config)
    }
}

/// A CPU backend's name: the same code compiled to wasm runs in a browser's CPU path.
pub(crate) fn backend_name() -> String {
    if cfg!(target_arch = "wasm32") {
        "wasm-cpu".into()
    } else {
        "cpu".into()
    }
}

/// A token and position a CPU decoder can take: inside the vocabulary, and inside the context
/// unless a window lets decoding go on.
pub(crate) fn check_input(c: &Config, kv: &KvConfig, token: u32, pos: usize) -> crate::Result<()> {
    if token as usize >= c.vocab_size {
        return Err(crate::Error::Invalid(format!(
            "token {token} is outside the vocabulary of {}",
            c.vocab_size
        )));
    }
    kv.check_position(c, pos)
}

pub(crate) fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ss + eps).sqrt()
}

/// In-place softmax with max subtraction.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}
