//! Gemma 2 (Gemma-2-2B, 9B, 27B): Gemma 3's block (`gemma3.rs`) without the per-head Q/K norms,
//! with every attention score soft-capped (`attn_logit_softcapping`, 50) and every logit
//! (`final_logit_softcapping`, 30), and every other layer local (a window of 4096) at the global
//! RoPE base. What a file leaves out is filled in as llama.cpp does (b10573): the window 4096, the
//! period 2, and the 27B's score scale (46 layers).

use super::gemma3::{forward, read_gemma, tensors, write_gemma, Defaults};
use super::{Arch, Config, Family};
use crate::error::Result;
use crate::gguf::{Gguf, Value};

pub const FAMILY: Family = Family {
    arch: Arch::Gemma2,
    name: "gemma2",
    read_config,
    write_config,
    tensors,
    forward,
};

const GEMMA2: Defaults = Defaults {
    prefix: "gemma2",
    arch: Arch::Gemma2,
    window: Some(4096),
    period: 2,
    base_swa: None,
    layers_27b: 46,
};

/// `gemma2.*` metadata as llama.cpp writes it.
pub fn read_config(g: &Gguf, file: &str) -> Result<Config> {
    let mut c = read_gemma(g, file, &GEMMA2)?;
    // llama.cpp's defaults where the file names no cap.
    c.attn_softcap.get_or_insert(50.0);
    c.final_softcap.get_or_insert(30.0);
    Ok(c)
}

pub fn write_config(c: &Config) -> Vec<(String, Value)> {
    write_gemma(c, "gemma2")
}
