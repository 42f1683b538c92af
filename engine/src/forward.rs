//! The operations of a forward pass. Each model family writes its pass once (`engine/src/arch/`) over
//! [`Kernels`] and backends supply the kernels, so a pass only says which kernel runs on which buffers,
//! top to bottom, as llama2.c's `forward`.
//!
//! A pass runs a *batch*: consecutive tokens at positions `pos0..pos0 + n`, one row per token in every
//! activation buffer. Decoding is a batch of one; a backend with matrix-matrix kernels runs a prompt in
//! batches (the GPU), and one without runs it token by token (the CPU oracle, [`Kernels::max_rows`] 1).
//! Every row is stored in the KV cache before any row attends, and each row attends only up to its own
//! position, so a batch computes exactly what its tokens one at a time would.

use crate::config::{Config, TensorId};

/// GELU's tanh form, as PyTorch's `gelu(approximate="tanh")` computes it: every backend's
/// reference (the GPU's WGSL spells the same formula).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// RoPE's angular frequency of each pair of a head, `1 / theta^(2f / head_size)`, divided by the
/// model's `rope_freqs.weight` entry where it has one. A local (sliding-window) layer takes its own
/// base ([`crate::config::Swa`]); a global one is divided by [`Config::rope_scale`]. Every
/// backend's angles come from here.
pub fn rope_freqs(c: &Config, divisors: Option<&[f32]>, local: bool) -> Vec<f32> {
    let hs = c.head_size();
    let (theta, scale) = match c.swa {
        Some(s) if local => (s.rope_theta, 1.0),
        _ => (c.rope_theta, c.rope_scale),
    };
    (0..hs / 2)
        .map(|f| {
            let freq = 1.0 / theta.powf((2 * f) as f32 / hs as f32);
            let freq = divisors.map_or(freq, |d| freq / d[f]);
            if scale == 1.0 {
                freq
            } else {
                freq / scale
            }
        })
        .collect()
}

/// [`rope_freqs`] of the global layers and, where the model has local ones, of those.
pub fn rope_tables(c: &Config, divisors: Option<&[f32]>) -> [Vec<f32>; 2] {
    let local = if c.swa.is_some() {
        rope_freqs(c, divisors, true)
    } else {
        Vec::new()
    };
    [rope_freqs(c, divisors, false), local]
}

/// RoPE's (cos, sin) for a pair of frequency `freq` at position `pos`, times the model's attention
/// factor ([`Config::rope_attn_factor`]). Every backend rotates by these.
pub fn rope_cos_sin(c: &Config, pos: usize, freq: f32) -> (f32, f32) {
    let (sin, cos) = (pos as f32 * freq).sin_cos();
    let m = c.rope_attn_factor;
    if m == 1.0 {
        (cos, sin)
    } else {
        (cos * m, sin * m)
    }
}

/// The gate's activation of a gated feed-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Glu {
    /// `silu(g) = g / (1 + e^-g)` (SwiGLU: Llama, Qwen, Phi-3).
    Silu,
    /// GELU's tanh form ([`gelu_tanh`]; Gemma).
    Gelu,
}

/// Activation buffers every backend keeps, named by role; each holds one row per token of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// The residual stream, `dim`.
    X,
    /// Normalised input / attention output, `dim`.
    Xb,
    /// Scratch for a projection before it is added to the residual, `dim`.
    Xb2,
    /// Query, `n_heads * head_size`.
    Q,
    /// Key and value of the current token, `kv_dim`.
    K,
    V,
    /// Feed-forward gate and up projections, `hidden_dim`.
    Hb,
    Hb2,
    /// Classifier output, `vocab_size`.
    Logits,
    /// Attention output, `n_heads * head_size` (wider than `dim` where the head size is set apart).
    Att,
}

impl Act {
    pub const ALL: [Act; 10] = [
        Act::X,
        Act::Xb,
        Act::Xb2,
        Act::Q,
        Act::K,
        Act::V,
        Act::Hb,
        Act::Hb2,
        Act::Logits,
        Act::Att,
    ];

    pub fn len(self, c: &Config) -> usize {
        match self {
            Act::X | Act::Xb | Act::Xb2 => c.dim,
            Act::Q | Act::Att => c.q_dim(),
            Act::K | Act::V => c.kv_dim(),
            Act::Hb | Act::Hb2 => c.hidden_dim,
            Act::Logits => c.vocab_size,
        }
    }
}

/// The operations of one pass. Each backend implements them with its own kernels and storage. Every
/// operation applies to each row of the batch that [`Kernels::embed`] started.
pub trait Kernels {
    /// The largest batch this backend takes in one pass.
    fn max_rows(&self) -> usize {
        1
    }
    /// Starts a batch: row `i` of `out` = `token_embd[tokens[i]]`.
    fn embed(&mut self, tokens: &[u32], out: Act);
    /// `out = x / rms(x) * w`
    fn rmsnorm(&mut self, out: Act, x: Act, w: TensorId);
    /// `out = W x`
    fn matvec(&mut self, out: Act, w: TensorId, x: Act);
    /// `Q, K, V = Wq x, Wk x, Wv x` for `layer`. A backend may run the three as one kernel and, where
    /// the family puts nothing between them and RoPE (no biases, no head norms, adjacent pairs), rotate
    /// Q and K there too, its next [`Kernels::rope_qk`] then doing nothing.
    fn qkv(&mut self, layer: usize, x: Act) {
        self.matvec(Act::Q, TensorId::Wq(layer), x);
        self.matvec(Act::K, TensorId::Wk(layer), x);
        self.matvec(Act::V, TensorId::Wv(layer), x);
    }
    /// `out += W x` (a projection added to the residual stream; backends may fuse the add).
    fn matvec_add(&mut self, out: Act, w: TensorId, x: Act);
    /// `x += b` on every row, `b` a vector tensor (a projection's bias).
    fn add_bias(&mut self, x: Act, b: TensorId);
    /// RMSNorm of each head of `x` in place, `w` of `head_size` weights (Qwen3's Q and K norms).
    fn head_norm(&mut self, x: Act, w: TensorId);
    /// RoPE: rotates the pairs of every head of `Q` and of `K` (adjacent, or the two halves where
    /// [`Config::rope_neox`]), row `i` by the angles for position `pos0 + i` with `layer`'s
    /// frequencies ([`rope_freqs`]). One operation for both, as a pass only ever rotates the two
    /// together (the GPU in one kernel).
    fn rope_qk(&mut self, layer: usize, pos0: usize);
    /// Stores row `i` of `K` and `V` as the cache entries of `layer` at `pos0 + i`.
    fn kv_store(&mut self, layer: usize, pos0: usize);
    /// Row `i` of `out` = softmax(Q K^T / sqrt(head_size)) V over the cached positions up to
    /// `pos0 + i` (from [`Config::first_attended`] on a sliding-window layer), per head, query
    /// heads sharing KV heads in groups; each score soft-capped where [`Config::attn_softcap`].
    fn attention(&mut self, out: Act, layer: usize, pos0: usize);
    /// `gate = silu(gate) * up`
    fn swiglu(&mut self, gate: Act, up: Act);
    /// `gate = gelu(gate) * up`, GELU's tanh form (Gemma's `gelu_pytorch_tanh`, ggml's `gelu`).
    fn geglu(&mut self, gate: Act, up: Act);
    /// `x *= s` (Gemma's embedding scale).
    fn scale(&mut self, x: Act, s: f32);
    /// `x = cap * tanh(x / cap)` ([`crate::config::softcap`]; Gemma 2's logits).
    fn softcap(&mut self, x: Act, cap: f32);
    /// A gated feed-forward's first half: `out = act(Wg x) * (Wu x)` with `act` SiLU (SwiGLU) or
    /// GELU (Gemma), `scratch` free for `Wu x`. Backends may compute both products in one kernel;
    /// the default is the three operations.
    fn gate_up(&mut self, out: Act, scratch: Act, gate: TensorId, up: TensorId, x: Act, act: Glu) {
        self.matvec(out, gate, x);
        self.matvec(scratch, up, x);
        self.glu(out, scratch, act);
    }
    /// `gate = act(gate) * up`: `swiglu` or `geglu`.
    fn glu(&mut self, gate: Act, up: Act, act: Glu) {
        match act {
            Glu::Silu => self.swiglu(gate, up),
            Glu::Gelu => self.geglu(gate, up),
        }
    }
    /// `x += y`
    fn add(&mut self, x: Act, y: Act);
}
