//! Qwen2 (and Qwen2.5): Llama's block with biases on the Q, K and V projections and RoPE over the two
//! halves of each head (GPT-NeoX's pairing); the classifier is usually tied to the embedding. Both
//! differences are `Config` questions (`qkv_bias`, `rope_neox`) that Llama's pass and tensor list ask,
//! so the family is its metadata prefix.

use super::llama::{forward, read_prefixed, tensors, write_prefixed};
use super::{Arch, Config, Family};
use crate::error::Result;
use crate::gguf::{Gguf, Value};

pub const FAMILY: Family = Family {
    arch: Arch::Qwen2,
    name: "qwen2",
    read_config,
    write_config,
    tensors,
    forward,
};

/// `qwen2.*` metadata as llama.cpp writes it.
pub fn read_config(g: &Gguf, file: &str) -> Result<Config> {
    read_prefixed(g, file, Arch::Qwen2, "qwen2")
}

pub fn write_config(c: &Config) -> Vec<(String, Value)> {
    write_prefixed(c, "qwen2")
}
