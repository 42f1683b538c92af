//! The Llama forward pass for one token, written once. Backends supply the kernels through [`Kernels`];
//! this function only says which kernel runs on which buffers, top to bottom, as llama2.c's `forward`.

use crate::model::{Config, TensorId};

/// Activation buffers every backend keeps, named by role.
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
}

impl Act {
    pub const ALL: [Act; 9] = [
        Act::X,
        Act::Xb,
        Act::Xb2,
        Act::Q,
        Act::K,
        Act::V,
        Act::Hb,
        Act::Hb2,
        Act::Logits,
    ];

    pub fn len(self, c: &Config) -> usize {
        match self {
            Act::X | Act::Xb | Act::Xb2 => c.dim,
            Act::Q => c.n_heads * c.head_size(),
            Act::K | Act::V => c.kv_dim(),
            Act::Hb | Act::Hb2 => c.hidden_dim,
            Act::Logits => c.vocab_size,
        }
    }
}

/// The operations of one decoding step. Each backend implements them with its own kernels and storage.
pub trait Kernels {
    /// `out = token_embd[token]`
    fn embed(&mut self, token: u32, out: Act);
    /// `out = x / rms(x) * w`
    fn rmsnorm(&mut self, out: Act, x: Act, w: TensorId);
    /// `out = W x`
    fn matvec(&mut self, out: Act, w: TensorId, x: Act);
    /// `out += W x` (a projection added to the residual stream; backends may fuse the add).
    fn matvec_add(&mut self, out: Act, w: TensorId, x: Act);
    /// Rotates adjacent pairs of every head of `x` by the angle for `pos`.
    fn rope(&mut self, x: Act, pos: usize);
    /// Stores `K` and `V` as the cache entries of `layer` at `pos`.
    fn kv_store(&mut self, layer: usize, pos: usize);
    /// `out` = softmax(Q K^T / sqrt(head_size)) V over the cached positions up to `pos`, per head,
    /// query heads sharing KV heads in groups.
    fn attention(&mut self, out: Act, layer: usize, pos: usize);
    /// `gate = silu(gate) * up`
    fn swiglu(&mut self, gate: Act, up: Act);
    /// `x += y`
    fn add(&mut self, x: Act, y: Act);
}

/// Runs one token at position `pos`; the logits end up in [`Act::Logits`].
pub fn forward(k: &mut impl Kernels, c: &Config, token: u32, pos: usize) {
    k.embed(token, Act::X);
    for l in 0..c.n_layers {
        // Attention block.
        k.rmsnorm(Act::Xb, Act::X, TensorId::AttnNorm(l));
        k.matvec(Act::Q, TensorId::Wq(l), Act::Xb);
        k.matvec(Act::K, TensorId::Wk(l), Act::Xb);
        k.matvec(Act::V, TensorId::Wv(l), Act::Xb);
        k.rope(Act::Q, pos);
        k.rope(Act::K, pos);
        k.kv_store(l, pos);
        k.attention(Act::Xb, l, pos);
        k.matvec_add(Act::X, TensorId::Wo(l), Act::Xb);

        // Feed-forward block (SwiGLU).
        k.rmsnorm(Act::Xb, Act::X, TensorId::FfnNorm(l));
        k.matvec(Act::Hb, TensorId::Gate(l), Act::Xb);
        k.matvec(Act::Hb2, TensorId::Up(l), Act::Xb);
        k.swiglu(Act::Hb, Act::Hb2);
        k.matvec_add(Act::X, TensorId::Down(l), Act::Hb);
    }
    k.rmsnorm(Act::Xb, Act::X, TensorId::OutNorm);
    k.matvec(Act::Logits, TensorId::Output, Act::Xb);
}
