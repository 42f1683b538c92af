//! Qwen2 (and Qwen2.5): Llama's block with biases on the Q, K and V projections and RoPE over the two
//! halves of each head (GPT-NeoX's pairing); the classifier is usually tied to the embedding.

use super::llama::{read_prefixed, tensors, write_prefixed};
use super::{Arch, Config, Family, TensorId};
use crate::error::Result;
use crate::forward::{Act, Kernels};
use crate::gguf::{Gguf, Value};

pub const FAMILY: Family = Family {
    arch: Arch::Qwen2,
    name: "qwen2",
    read_config,
    write_config,
    tensors,
    forward,
};

/// The forward pass of one batch, as [`super::llama::forward`] with the projection biases.
pub fn forward(k: &mut dyn Kernels, c: &Config, tokens: &[u32], pos: usize) {
    k.embed(tokens, Act::X);
    for l in 0..c.n_layers {
        // Attention block.
        k.rmsnorm(Act::Xb, Act::X, TensorId::AttnNorm(l));
        k.matvec(Act::Q, TensorId::Wq(l), Act::Xb);
        k.matvec(Act::K, TensorId::Wk(l), Act::Xb);
        k.matvec(Act::V, TensorId::Wv(l), Act::Xb);
        k.add_bias(Act::Q, TensorId::BiasQ(l));
        k.add_bias(Act::K, TensorId::BiasK(l));
        k.add_bias(Act::V, TensorId::BiasV(l));
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

/// `qwen2.*` metadata as llama.cpp writes it.
pub fn read_config(g: &Gguf, file: &str) -> Result<Config> {
    read_prefixed(g, file, Arch::Qwen2, "qwen2")
}

pub fn write_config(c: &Config) -> Vec<(String, Value)> {
    write_prefixed(c, "qwen2")
}
