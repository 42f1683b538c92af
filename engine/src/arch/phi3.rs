//! Phi-3 (Phi-3-mini, Phi-3.5-mini): Llama's block with NeoX RoPE and an untied classifier, stored
//! as llama.cpp's converter writes it: Q, K and V in one `attn_qkv`, gate and up in one `ffn_up`
//! ([`crate::config::TensorId::in_file`] finds each role's rows, so the pass is Llama's).
//!
//! LongRoPE (the 128K-context files): every RoPE frequency is divided by a per-pair factor, short
//! ones up to the original context and long ones past it, and cos and sin are multiplied by an
//! attention factor. Switching to the long factors would change the rotation of every key already
//! cached, so nibble keeps the short factors and the original context (`rope.scaling.
//! original_context_length`), as transformers does up to it and llama.cpp does with a context no
//! longer than it (its default); a `--window` lets decoding go on past it. Phi-3-mini-4k's declared
//! sliding window (2047) is not applied, as llama.cpp does not apply it (b10573).

use super::llama::{forward, read_prefixed, tensors, write_prefixed};
use super::{Arch, Config, Family, Meta};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

pub const FAMILY: Family = Family {
    arch: Arch::Phi3,
    name: "phi3",
    read_config,
    write_config,
    tensors,
    forward,
};

const ATTN_FACTOR: &str = "phi3.rope.scaling.attn_factor";
const ORIGINAL_CONTEXT: &str = "phi3.rope.scaling.original_context_length";

/// `phi3.*` metadata as llama.cpp writes it.
pub fn read_config(g: &Gguf, file: &str) -> Result<Config> {
    let mut c = read_prefixed(g, file, Arch::Phi3, "phi3")?;
    let m = Meta { g, file };
    c.rope_freqs = g.tensor("rope_factors_short.weight").is_some();
    c.rope_attn_factor = m.float_or(ATTN_FACTOR, 1.0)?;
    if !(c.rope_attn_factor.is_finite() && c.rope_attn_factor > 0.0) {
        return Err(Error::format(
            file,
            ATTN_FACTOR,
            format!("{} must be positive", c.rope_attn_factor),
        ));
    }
    if c.rope_freqs {
        c.seq_len = c.seq_len.min(m.int_or(ORIGINAL_CONTEXT, c.seq_len)?);
    }
    Ok(c)
}

/// The metadata [`read_config`] reads. The context written is the one nibble runs, the original
/// one, with the short factors only: llama.cpp run on the file with a longer context (it pads its
/// context to 256) rotates without factors, as it would with the long ones on the original file;
/// both are past what nibble runs.
pub fn write_config(c: &Config) -> Vec<(String, Value)> {
    let mut md = write_prefixed(c, "phi3");
    if c.rope_attn_factor != 1.0 {
        md.push((ATTN_FACTOR.into(), Value::F32(c.rope_attn_factor)));
    }
    if c.rope_freqs {
        md.push((ORIGINAL_CONTEXT.into(), Value::U32(c.seq_len as u32)));
    }
    md
}
