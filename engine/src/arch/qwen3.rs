//! Qwen3: Qwen2's block without the Q/K/V biases, with an RMSNorm over each head of Q and K before
//! RoPE (`attn_q_norm`, `attn_k_norm`), and a head size set apart from `dim / n_heads`
//! (`attention.key_length`: Qwen3-0.6B has 16 heads of 128 over a 1024-wide residual). These are
//! `Config` questions (`qk_norm`, `head_size`) that Llama's pass and tensor list ask, so the family is
//! its metadata prefix.

use super::llama::{forward, read_prefixed, tensors, write_prefixed};
use super::{Arch, Config, Family};
use crate::error::Result;
use crate::gguf::{Gguf, Value};

pub const FAMILY: Family = Family {
    arch: Arch::Qwen3,
    name: "qwen3",
    read_config,
    write_config,
    tensors,
    forward,
};

/// `qwen3.*` metadata as llama.cpp writes it.
pub fn read_config(g: &Gguf, file: &str) -> Result<Config> {
    read_prefixed(g, file, Arch::Qwen3, "qwen3")
}

pub fn write_config(c: &Config) -> Vec<(String, Value)> {
    write_prefixed(c, "qwen3")
}
