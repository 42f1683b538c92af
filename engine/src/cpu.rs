//! The f32 CPU backend: the oracle every other backend and configuration is checked against.

use crate::forward::{forward, Act, Kernels};
use crate::model::{Config, Model, TensorId};
use crate::quant::dot;
use crate::Decoder;

/// CPU state for one sequence: activations and an f32 KV cache.
pub struct CpuDecoder<'m> {
    model: &'m Model,
    acts: Vec<Vec<f32>>,
    /// `[layer][pos * kv_dim]`, grown as positions arrive so a huge declared context costs nothing
    /// until it is used.
    key_cache: Vec<Vec<f32>>,
    value_cache: Vec<Vec<f32>>,
    scores: Vec<f32>,
}

impl<'m> CpuDecoder<'m> {
    pub fn new(model: &'m Model) -> Self {
        let c = &model.config;
        CpuDecoder {
            model,
            acts: Act::ALL.iter().map(|a| vec![0.0; a.len(c)]).collect(),
            key_cache: vec![Vec::new(); c.n_layers],
            value_cache: vec![Vec::new(); c.n_layers],
            scores: Vec::new(),
        }
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
    fn embed(&mut self, token: u32, out: Act) {
        let m = &self.model.weights.tok_embd;
        m.row_into(token as usize, &mut self.acts[out as usize]);
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

    fn rope(&mut self, x: Act, pos: usize) {
        let c = &self.model.config;
        let hs = c.head_size();
        let v = &mut self.acts[x as usize];
        for i in (0..v.len()).step_by(2) {
            let hd = (i % hs) as f32;
            let freq = 1.0 / c.rope_theta.powf(hd / hs as f32);
            let (sin, cos) = (pos as f32 * freq).sin_cos();
            let (a, b) = (v[i], v[i + 1]);
            v[i] = a * cos - b * sin;
            v[i + 1] = a * sin + b * cos;
        }
    }

    fn kv_store(&mut self, layer: usize, pos: usize) {
        let kv = self.model.config.kv_dim();
        for (cache, act) in [
            (&mut self.key_cache, Act::K),
            (&mut self.value_cache, Act::V),
        ] {
            let cache = &mut cache[layer];
            cache.resize((pos + 1) * kv, 0.0);
            cache[pos * kv..].copy_from_slice(&self.acts[act as usize]);
        }
    }

    fn attention(&mut self, out: Act, layer: usize, pos: usize) {
        let c = &self.model.config;
        let (hs, kv) = (c.head_size(), c.kv_dim());
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hs as f32).sqrt();
        let mut o = std::mem::take(&mut self.acts[out as usize]);
        let q_all = &self.acts[Act::Q as usize];
        self.scores.resize(pos + 1, 0.0);
        let scores = &mut self.scores[..=pos];
        let (keys, values) = (&self.key_cache[layer], &self.value_cache[layer]);
        for h in 0..c.n_heads {
            let q = &q_all[h * hs..(h + 1) * hs];
            let kvh = (h / group) * hs;
            for (t, s) in scores.iter_mut().enumerate() {
                let k = &keys[t * kv + kvh..][..hs];
                *s = dot(q, k) * scale;
            }
            softmax(scores);
            let oh = &mut o[h * hs..(h + 1) * hs];
            oh.fill(0.0);
            for (t, &p) in scores.iter().enumerate() {
                let v = &values[t * kv + kvh..][..hs];
                for (a, b) in oh.iter_mut().zip(v) {
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

    fn add(&mut self, x: Act, y: Act) {
        let (x, y) = self.pair(x, y);
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }
}

impl Decoder for CpuDecoder<'_> {
    fn config(&self) -> &Config {
        &self.model.config
    }

    fn step(&mut self, token: u32, pos: usize) -> crate::Result<&[f32]> {
        let c = &self.model.config;
        if token as usize >= c.vocab_size {
            return Err(crate::Error::Invalid(format!(
                "token {token} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        if pos >= c.seq_len {
            return Err(crate::Error::Invalid(format!(
                "position {pos} is past the model's context of {}",
                c.seq_len
            )));
        }
        let model = self.model;
        forward(self, &model.config, token, pos);
        Ok(self.act(Act::Logits))
    }

    fn backend(&self) -> String {
        "cpu".into()
    }
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
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
