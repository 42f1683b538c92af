//! Gemma 3 (text: Gemma-3-270M, 1B, and the 4B-27B language models): Llama's attention with
//! per-head Q/K norms, NeoX RoPE and a head size apart from `dim / n_heads`, and Gemma's own
//! block: the embedding scaled by sqrt(dim), RMSNorms after attention and after the feed-forward
//! as well as before, a GELU-gated feed-forward, and sliding-window layers (of every `period`
//! layers the first `period - 1` attend only the last `window` positions, with their own RoPE
//! base). llama.cpp's converter stores each norm weight as 1 + w, the factor Gemma's RMSNorm
//! multiplies by, so norms are plain RMSNorms here.
//!
//! What llama.cpp derives rather than reads is derived as it does (b10573): the local RoPE base
//! 10000 where `rope.freq_base_swa` is absent, a period of 6 where the pattern is, and the 27B's
//! attention scale 1 / sqrt(dim / n_heads) (62 layers) where the others take 1 / sqrt(head size);
//! nibble applies that scale as a factor on RoPE's cos and sin (`Config::rope_attn_factor`).

use super::llama::{read_prefixed, write_prefixed};
use super::{Arch, Config, Family, Meta, TensorId};
use crate::config::Swa;
use crate::error::{Error, Result};
use crate::forward::{Act, Glu, Kernels};
use crate::gguf::{Gguf, Value};

pub const FAMILY: Family = Family {
    arch: Arch::Gemma3,
    name: "gemma3",
    read_config,
    write_config,
    tensors,
    forward,
};

/// The forward pass of one batch, as llama.cpp's `gemma3` graph and transformers' Gemma3 run it.
pub fn forward(k: &mut dyn Kernels, c: &Config, tokens: &[u32], pos: usize) {
    k.embed(tokens, Act::X);
    k.scale(Act::X, (c.dim as f32).sqrt());
    for l in 0..c.n_layers {
        // Attention block, normalised before and after.
        k.rmsnorm(Act::Xb, Act::X, TensorId::AttnNorm(l));
        k.qkv(l, Act::Xb);
        if c.qk_norm() {
            k.head_norm(Act::Q, TensorId::QNorm(l));
            k.head_norm(Act::K, TensorId::KNorm(l));
        }
        k.rope_qk(l, pos);
        k.kv_store(l, pos);
        k.attention(Act::Att, l, pos);
        k.matvec(Act::Xb2, TensorId::Wo(l), Act::Att);
        k.rmsnorm(Act::Xb, Act::Xb2, TensorId::AttnPostNorm(l));
        k.add(Act::X, Act::Xb);

        // Feed-forward block (GELU-gated), normalised before and after.
        k.rmsnorm(Act::Xb, Act::X, TensorId::FfnNorm(l));
        k.gate_up(
            Act::Hb,
            Act::Hb2,
            TensorId::Gate(l),
            TensorId::Up(l),
            Act::Xb,
            Glu::Gelu,
        );
        k.matvec(Act::Xb2, TensorId::Down(l), Act::Hb);
        k.rmsnorm(Act::Xb, Act::Xb2, TensorId::FfnPostNorm(l));
        k.add(Act::X, Act::Xb);
    }
    k.rmsnorm(Act::Xb, Act::X, TensorId::OutNorm);
    k.matvec(Act::Logits, TensorId::Output, Act::Xb);
    if let Some(cap) = c.final_softcap {
        k.softcap(Act::Logits, cap);
    }
}

/// All tensors in GGUF order; `Output` only when the classifier is not tied.
pub fn tensors(c: &Config, tied: bool) -> Vec<TensorId> {
    let mut v = vec![TensorId::TokEmbd];
    for l in 0..c.n_layers {
        v.extend([
            TensorId::AttnNorm(l),
            TensorId::Wq(l),
            TensorId::Wk(l),
            TensorId::Wv(l),
        ]);
        if c.qk_norm() {
            v.extend([TensorId::QNorm(l), TensorId::KNorm(l)]);
        }
        v.extend([
            TensorId::Wo(l),
            TensorId::AttnPostNorm(l),
            TensorId::FfnNorm(l),
            TensorId::Gate(l),
            TensorId::Up(l),
            TensorId::Down(l),
            TensorId::FfnPostNorm(l),
        ]);
    }
    v.push(TensorId::OutNorm);
    if !tied {
        v.push(TensorId::Output);
    }
    v
}

/// What a Gemma generation's file may leave out, as llama.cpp fills it in.
pub struct Defaults {
    pub prefix: &'static str,
    pub arch: Arch,
    /// The window where the key is absent; `None`: no local layers then.
    pub window: Option<usize>,
    pub period: usize,
    /// The local layers' RoPE base where `rope.freq_base_swa` is absent; `None`: the global one.
    pub base_swa: Option<f32>,
    /// The layer count of the generation's 27B, whose scores are scaled by 1 / sqrt(dim / n_heads).
    pub layers_27b: usize,
}

const GEMMA3: Defaults = Defaults {
    prefix: "gemma3",
    arch: Arch::Gemma3,
    window: None,
    period: 6,
    base_swa: Some(10000.0),
    layers_27b: 62,
};

/// `gemma3.*` metadata as llama.cpp writes it. Gemma 3 caps no attention score (llama.cpp reads
/// no such key for it), so a file that asks is refused rather than run otherwise.
pub fn read_config(g: &Gguf, file: &str) -> Result<Config> {
    let key = "gemma3.attn_logit_softcapping";
    if g.get(key).is_some() {
        return Err(Error::format(
            file,
            key,
            "soft-capping Gemma 3's attention is not supported",
        ));
    }
    read_gemma(g, file, &GEMMA3)
}

/// A Gemma generation's metadata: Llama's keys, then the windows, RoPE scaling, soft-capping.
pub fn read_gemma(g: &Gguf, file: &str, d: &Defaults) -> Result<Config> {
    let mut c = read_prefixed(g, file, d.arch, d.prefix)?;
    let m = Meta { g, file };
    let key = |k: &str| format!("{}.{k}", d.prefix);
    // As llama.cpp: a window of 0 means no local layers.
    let window = match g.get(&key("attention.sliding_window")) {
        Some(v) if v.as_int() == Some(0) => None,
        Some(_) => Some(m.int(&key("attention.sliding_window"))?),
        None => d.window,
    };
    if let Some(window) = window {
        c.swa = Some(Swa {
            window,
            period: period(
                g,
                file,
                &key("attention.sliding_window_pattern"),
                c.n_layers,
                d.period,
            )?,
            rope_theta: m.float_or(
                &key("rope.freq_base_swa"),
                d.base_swa.unwrap_or(c.rope_theta),
            )?,
        });
    }
    let scaling = key("rope.scaling.type");
    match g.get(&scaling).map(|v| v.as_str()) {
        None | Some(Some("linear")) => {
            // As llama.cpp: a factor of 0 means none.
            let f = m.float_or(&key("rope.scaling.factor"), 1.0)?;
            c.rope_scale = if f == 0.0 { 1.0 } else { f };
        }
        Some(Some("none")) => {}
        Some(v) => {
            let v = v.map_or("not a string".to_string(), |s| format!("{s:?}"));
            return Err(Error::format(
                file,
                scaling,
                format!("{v} is not supported (linear is)"),
            ));
        }
    }
    for (k, cap) in [
        ("attn_logit_softcapping", &mut c.attn_softcap),
        ("final_logit_softcapping", &mut c.final_softcap),
    ] {
        if g.get(&key(k)).is_some() {
            *cap = Some(m.float_or(&key(k), 0.0)?);
        }
    }
    if c.n_layers == d.layers_27b {
        // The 27B: scores scaled by 1 / sqrt(dim / n_heads), as the fourth root on cos and sin.
        let per_head = (c.dim / c.n_heads) as f32;
        c.rope_attn_factor = (c.head_size() as f32 / per_head).powf(0.25);
    }
    c.validate(file)?;
    Ok(c)
}

/// The local layers' period: the pattern key's integer, 6 where it is absent, or a per-layer
/// array of flags that follows one period.
fn period(g: &Gguf, file: &str, key: &str, n_layers: usize, default: usize) -> Result<usize> {
    let Some(v) = g.get(key) else {
        return Ok(default);
    };
    if let Some(p) = v.as_int() {
        return usize::try_from(p).map_err(|_| Error::format(file, key, "negative"));
    }
    let flags: Option<Vec<bool>> = match v {
        Value::Array(_, items) => items
            .iter()
            .map(|i| match i {
                Value::Bool(b) => Some(*b),
                _ => i.as_int().map(|b| b != 0),
            })
            .collect(),
        _ => None,
    };
    let bad = || Error::format(file, key, format!("{} is not a period", v.display_short()));
    let flags = flags.ok_or_else(bad)?;
    let p = flags.iter().position(|&local| !local).map_or(0, |i| i + 1);
    let follows = (0..n_layers).all(|l| flags.get(l) == Some(&(p == 0 || l % p < p - 1)));
    if follows {
        Ok(p)
    } else {
        Err(bad())
    }
}

/// The metadata [`read_config`] reads.
pub fn write_config(c: &Config) -> Vec<(String, Value)> {
    write_gemma(c, "gemma3")
}

/// The metadata [`read_gemma`] reads.
pub fn write_gemma(c: &Config, prefix: &str) -> Vec<(String, Value)> {
    let mut md = write_prefixed(c, prefix);
    let mut put = |k: &str, v: Value| md.push((format!("{prefix}.{k}"), v));
    if let Some(s) = c.swa {
        put("attention.sliding_window", Value::U32(s.window as u32));
        put(
            "attention.sliding_window_pattern",
            Value::U32(s.period as u32),
        );
        put("rope.freq_base_swa", Value::F32(s.rope_theta));
    }
    if c.rope_scale != 1.0 {
        put("rope.scaling.type", Value::String("linear".into()));
        put("rope.scaling.factor", Value::F32(c.rope_scale));
    }
    if let Some(cap) = c.attn_softcap {
        put("attn_logit_softcapping", Value::F32(cap));
    }
    if let Some(cap) = c.final_softcap {
        put("final_logit_softcapping", Value::F32(cap));
    }
    md
}
