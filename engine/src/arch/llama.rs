//! Llama (as llama2.c, Llama 2 and Llama 3 lay it out): RMSNorm before attention and feed-forward,
//! grouped-query attention with adjacent-pair RoPE (Llama 3 divides its frequencies by the file's
//! `rope_freqs.weight`), a SwiGLU feed-forward, a classifier tied or not to the embedding. The Qwen
//! families are this block with what their `Config` answers: Q/K/V biases (`qkv_bias`), per-head Q/K
//! norms (`qk_norm`), NeoX RoPE (`rope_neox`) and a head size apart from `dim / n_heads`.

use super::{Arch, Config, Family, Meta, TensorId};
use crate::error::{Error, Result};
use crate::forward::{Act, Glu, Kernels};
use crate::gguf::{Gguf, Value};

pub const FAMILY: Family = Family {
    arch: Arch::Llama,
    name: "llama",
    read_config,
    write_config,
    tensors,
    forward,
};

/// The forward pass of one batch: `tokens` at positions `pos..`, read top to bottom as llama2.c's
/// `forward`. The logits of token `i` end up in row `i` of [`Act::Logits`].
pub fn forward(k: &mut dyn Kernels, c: &Config, tokens: &[u32], pos: usize) {
    k.embed(tokens, Act::X);
    for l in 0..c.n_layers {
        // Attention block.
        k.rmsnorm(Act::Xb, Act::X, TensorId::AttnNorm(l));
        k.qkv(l, Act::Xb);
        if c.qkv_bias() {
            k.add_bias(Act::Q, TensorId::BiasQ(l));
            k.add_bias(Act::K, TensorId::BiasK(l));
            k.add_bias(Act::V, TensorId::BiasV(l));
        }
        if c.qk_norm() {
            k.head_norm(Act::Q, TensorId::QNorm(l));
            k.head_norm(Act::K, TensorId::KNorm(l));
        }
        k.rope_qk(l, pos);
        k.kv_store(l, pos);
        k.attention(Act::Att, l, pos);
        k.matvec_add(Act::X, TensorId::Wo(l), Act::Att);

        // Feed-forward block (SwiGLU).
        k.rmsnorm(Act::Xb, Act::X, TensorId::FfnNorm(l));
        k.gate_up(
            Act::Hb,
            Act::Hb2,
            TensorId::Gate(l),
            TensorId::Up(l),
            Act::Xb,
            Glu::Silu,
        );
        k.matvec_add(Act::X, TensorId::Down(l), Act::Hb);
    }
    k.rmsnorm(Act::Xb, Act::X, TensorId::OutNorm);
    k.matvec(Act::Logits, TensorId::Output, Act::Xb);
}

/// All tensors in GGUF order; `Output` only when the classifier is not tied.
pub fn tensors(c: &Config, tied: bool) -> Vec<TensorId> {
    let mut v = vec![TensorId::TokEmbd];
    if c.rope_freqs {
        v.push(TensorId::RopeFreqs);
    }
    for l in 0..c.n_layers {
        v.extend([
            TensorId::AttnNorm(l),
            TensorId::Wq(l),
            TensorId::Wk(l),
            TensorId::Wv(l),
        ]);
        if c.qkv_bias() {
            v.extend([TensorId::BiasQ(l), TensorId::BiasK(l), TensorId::BiasV(l)]);
        }
        if c.qk_norm() {
            v.extend([TensorId::QNorm(l), TensorId::KNorm(l)]);
        }
        v.extend([
            TensorId::Wo(l),
            TensorId::FfnNorm(l),
            TensorId::Gate(l),
            TensorId::Up(l),
            TensorId::Down(l),
        ]);
    }
    v.push(TensorId::OutNorm);
    if !tied {
        v.push(TensorId::Output);
    }
    v
}

/// `llama.*` metadata as llama.cpp writes it.
pub fn read_config(g: &Gguf, file: &str) -> Result<Config> {
    read_prefixed(g, file, Arch::Llama, "llama")
}

/// `{prefix}.*` metadata, which the Llama-like families share. A missing vocabulary size is the
/// embedding's rows.
pub fn read_prefixed(g: &Gguf, file: &str, arch: Arch, prefix: &str) -> Result<Config> {
    let m = Meta { g, file };
    let key = |k: &str| format!("{prefix}.{k}");
    let n_heads = m.int(&key("attention.head_count"))?;
    let emb = g
        .tensor("token_embd.weight")
        .ok_or_else(|| Error::format(file, "tensor \"token_embd.weight\"", "missing"))?;
    let mut config = Config {
        arch,
        dim: m.int(&key("embedding_length"))?,
        hidden_dim: m.int(&key("feed_forward_length"))?,
        n_layers: m.int(&key("block_count"))?,
        n_heads,
        n_kv_heads: m.int_or(&key("attention.head_count_kv"), n_heads)?,
        vocab_size: match g.get(&key("vocab_size")) {
            Some(_) => m.int(&key("vocab_size"))?,
            None => *emb.dims.get(1).unwrap_or(&0) as usize,
        },
        seq_len: m.int(&key("context_length"))?,
        rope_theta: m.float_or(&key("rope.freq_base"), 10000.0)?,
        norm_eps: m.float_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
        rope_freqs: g.tensor("rope_freqs.weight").is_some(),
        head_dim: None,
        rope_attn_factor: 1.0,
        rope_scale: 1.0,
        swa: None,
        attn_softcap: None,
        final_softcap: None,
    };
    let key_length = key("attention.key_length");
    if g.get(&key_length).is_some() {
        let h = m.int(&key_length)?;
        if config.n_heads * h != config.dim {
            config.head_dim = Some(h);
        }
    }
    config.validate(file)?;
    let value_length = key("attention.value_length");
    if let Some(v) = g.get(&value_length) {
        if v.as_int() != Some(config.head_size() as i128) {
            return Err(Error::format(
                file,
                value_length,
                format!(
                    "{} but the key length (head size) is {}: different key and value head sizes are \
                     not supported",
                    v.display_short(),
                    config.head_size()
                ),
            ));
        }
    }
    let rope_dims = key("rope.dimension_count");
    if let Some(v) = g.get(&rope_dims) {
        if v.as_int() != Some(config.head_size() as i128) {
            return Err(Error::format(
                file,
                rope_dims,
                format!(
                    "{} but the head size is {}: partial RoPE is not supported",
                    v.display_short(),
                    config.head_size()
                ),
            ));
        }
    }
    Ok(config)
}

/// The metadata [`read_config`] reads.
pub fn write_config(c: &Config) -> Vec<(String, Value)> {
    write_prefixed(c, "llama")
}

/// The metadata [`read_prefixed`] reads.
pub fn write_prefixed(c: &Config, prefix: &str) -> Vec<(String, Value)> {
    let u = |k: &str, v: usize| (format!("{prefix}.{k}"), Value::U32(v as u32));
    vec![
        u("context_length", c.seq_len),
        u("embedding_length", c.dim),
        u("block_count", c.n_layers),
        u("feed_forward_length", c.hidden_dim),
        u("attention.head_count", c.n_heads),
        u("attention.head_count_kv", c.n_kv_heads),
        (format!("{prefix}.rope.freq_base"), Value::F32(c.rope_theta)),
        u("rope.dimension_count", c.head_size()),
        (
            format!("{prefix}.attention.layer_norm_rms_epsilon"),
            Value::F32(c.norm_eps),
        ),
        u("vocab_size", c.vocab_size),
        u("attention.key_length", c.head_size()),
        u("attention.value_length", c.head_size()),
    ]
}
