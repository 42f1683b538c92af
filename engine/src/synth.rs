//! The built-in model and the synthetic presets: deterministic Llamas drawn from a seed, so nothing
//! needs downloading and every shape a test or benchmark needs can be made in memory.

use crate::arch::{Arch, Class, Config, TensorId};
use crate::error::{Error, Result};
use crate::model::{Model, Tensor, Weights};
use crate::precision::{self, Fallback, WeightConfig};
use crate::quant::QMatrix;
use crate::tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

impl Model {
    /// A deterministic synthetic Llama with a byte-level vocabulary. Weights are uniform with variance
    /// 1/fan_in so activations stay near unit scale through the layers; each tensor has its own RNG
    /// stream so tensors can be generated independently.
    pub fn synthetic(preset: Preset, seed: u64) -> Model {
        let mut m = Model::synthetic_config(preset.config(), seed);
        m.name = format!("synthetic-{}-seed{seed}", preset.name());
        m
    }

    /// [`Model::synthetic`] of any shape (tests reach kernel paths that only some widths take).
    pub fn synthetic_config(config: Config, seed: u64) -> Model {
        let c = &config;
        let tokenizer = Tokenizer::byte_level(c.vocab_size);
        let weights = Weights::build(c, false, |id| Ok(synth_tensor(c, seed, id)))
            .expect("synthetic weights are infallible");
        Model {
            name: format!("synthetic-seed{seed}"),
            config,
            weights,
            tokenizer: Some(tokenizer),
        }
    }

    /// [`Model::synthetic`] stored as `weights` says, each tensor quantized as soon as it is drawn and
    /// tensors made on all cores, so a 7B model never exists in f32. Gives the same values as
    /// `synthetic` followed by `apply_weights`.
    pub fn synthetic_with(
        preset: Preset,
        seed: u64,
        weights: &WeightConfig,
    ) -> Result<(Model, Vec<Fallback>)> {
        weights.validate()?;
        let config = preset.config();
        let c = &config;
        let ids = TensorId::all(c, false);
        let order: Vec<usize> = (0..ids.len()).collect();
        let made = crate::par::map_indexed(&order, |i| match synth_tensor(c, seed, ids[i]) {
            Tensor::Matrix(m) => precision::restore(ids[i], &m, weights)
                .map(|(q, fb)| (Tensor::Matrix(q.unwrap_or(m)), fb.into_iter().collect())),
            norm => Ok((norm, vec![])),
        });
        let mut made: HashMap<TensorId, (Tensor, Vec<Fallback>)> = (ids.iter().copied())
            .zip(made)
            .map(|(id, r)| r.map(|t| (id, t)))
            .collect::<Result<_>>()?;
        let mut fallbacks = Vec::new();
        let w = Weights::build(c, false, |id| {
            let (t, fb) = made.remove(&id).expect("every tensor was made");
            fallbacks.extend(fb);
            Ok(t)
        })?;
        Ok((
            Model {
                name: format!("synthetic-{}-seed{seed}", preset.name()),
                config: config.clone(),
                weights: w,
                tokenizer: Some(Tokenizer::byte_level(config.vocab_size)),
            },
            fallbacks,
        ))
    }

    /// The built-in model: the `tiny` preset at seed 0, made in memory.
    pub fn builtin() -> Model {
        Model::synthetic(Preset::Tiny, 0)
    }
}

/// One synthetic tensor: uniform with variance 1/fan_in (embedding: unit variance), norms in [0.8, 1.2].
fn synth_tensor(c: &Config, seed: u64, id: TensorId) -> Tensor {
    let (rows, cols) = id.shape(c);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(tensor_stream(id));
    let n = rows * cols;
    if id.class() == Class::Norm {
        return Tensor::Norm((0..n).map(|_| rng.gen_range(0.8..1.2)).collect());
    }
    let a = if id == TensorId::TokEmbd {
        3f32.sqrt()
    } else {
        (3.0 / cols as f32).sqrt()
    };
    let v = (0..n).map(|_| rng.gen_range(-a..a)).collect();
    Tensor::Matrix(QMatrix::from_f32(rows, cols, v))
}

fn tensor_stream(id: TensorId) -> u64 {
    let (kind, l) = match id {
        TensorId::TokEmbd => (0, 0),
        TensorId::AttnNorm(l) => (1, l),
        TensorId::Wq(l) => (2, l),
        TensorId::Wk(l) => (3, l),
        TensorId::Wv(l) => (4, l),
        TensorId::Wo(l) => (5, l),
        TensorId::FfnNorm(l) => (6, l),
        TensorId::Gate(l) => (7, l),
        TensorId::Up(l) => (8, l),
        TensorId::Down(l) => (9, l),
        TensorId::OutNorm => (10, 0),
        TensorId::Output => (11, 0),
        TensorId::RopeFreqs => (12, 0),
        TensorId::BiasQ(l) => (13, l),
        TensorId::BiasK(l) => (14, l),
        TensorId::BiasV(l) => (15, l),
        TensorId::QNorm(l) => (16, l),
        TensorId::KNorm(l) => (17, l),
        TensorId::AttnPostNorm(l) => (18, l),
        TensorId::FfnPostNorm(l) => (19, l),
    };
    (l as u64) << 8 | kind
}

/// Synthetic model shapes. `tiny` is small enough for every test; the others have real Llama shapes
/// for memory and speed measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    Tiny,
    /// Qwen3's layout at the built-in model's size: per-head Q/K norms, NeoX RoPE, and heads of 128
    /// (Q 512 wide over a 256-wide residual).
    Qwen3Tiny,
    /// TinyLlama-1.1B's shape (Llama 2 architecture, 32000 vocabulary).
    Llama1b,
    /// Llama-2-7B's shape.
    Llama7b,
    /// Llama-3-8B's shape: 8 KV heads, a 14336-wide feed-forward, a 128256-token vocabulary,
    /// RoPE base 500000.
    Llama8b,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Preset> {
        Ok(match s {
            "tiny" => Preset::Tiny,
            "qwen3-tiny" => Preset::Qwen3Tiny,
            "llama-1b" => Preset::Llama1b,
            "llama-7b" => Preset::Llama7b,
            "llama-8b" => Preset::Llama8b,
            _ => {
                let known = "tiny, qwen3-tiny, llama-1b, llama-7b or llama-8b";
                let e = format!("unknown preset {s:?} (expected {known})");
                return Err(Error::Invalid(e));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Qwen3Tiny => "qwen3-tiny",
            Preset::Llama1b => "llama-1b",
            Preset::Llama7b => "llama-7b",
            Preset::Llama8b => "llama-8b",
        }
    }

    pub fn config(self) -> Config {
        let (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) = match self {
            Preset::Tiny => (256, 512, 2, 8, 4, 259, 512),
            Preset::Qwen3Tiny => (256, 512, 2, 4, 2, 259, 512),
            Preset::Llama1b => (2048, 5632, 22, 32, 4, 32000, 2048),
            Preset::Llama7b => (4096, 11008, 32, 32, 32, 32000, 4096),
            Preset::Llama8b => (4096, 14336, 32, 32, 8, 128256, 8192),
        };
        let qwen3 = self == Preset::Qwen3Tiny;
        Config {
            arch: if qwen3 { Arch::Qwen3 } else { Arch::Llama },
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            vocab_size,
            seq_len,
            rope_theta: if self == Preset::Llama8b {
                500000.0
            } else {
                10000.0
            },
            rope_freqs: false,
            norm_eps: 1e-5,
            // 4 heads of 128 (the others: dim / n_heads), sharing 2 KV heads.
            head_dim: qwen3.then_some(128),
            rope_attn_factor: 1.0,
            rope_scale: 1.0,
            swa: None,
            attn_softcap: None,
            final_softcap: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preset parses back from its name, and Llama-3-8B's shape is its own.
    #[test]
    fn presets_parse_from_their_names() {
        use Preset::*;
        for p in [Tiny, Qwen3Tiny, Llama1b, Llama7b, Llama8b] {
            assert_eq!(Preset::parse(p.name()).unwrap(), p);
        }
        let c = Llama8b.config();
        assert_eq!(
            (c.hidden_dim, c.n_kv_heads, c.vocab_size),
            (14336, 8, 128256)
        );
        assert_eq!(c.rope_theta, 500000.0);
        assert!(Preset::parse("llama-9b").is_err());
    }
}
