//! What every model family shares: the hyper-parameters ([`Config`]) and tensor roles ([`TensorId`],
//! named as llama.cpp names them in GGUF) with their classes. Which roles a model has, and what it does
//! with them, is its family's (`engine/src/arch/`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Upper bounds that reject corrupt headers before anything is allocated. They sit far above any
/// model that fits in a browser (or a GPU).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_VOCAB: usize = 1 << 20;
const MAX_CTX: usize = 1 << 22;

/// A model family, as `general.architecture` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Llama,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma2,
    Gemma3,
}

/// Hyper-parameters of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The family; absent in cache manifests written before families existed (all Llama).
    #[serde(default)]
    pub arch: Arch,
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub rope_theta: f32,
    pub norm_eps: f32,
    /// Whether RoPE's per-frequency divisors are a tensor of the file (`rope_freqs.weight`, Llama 3's
    /// long-context scaling).
    #[serde(default)]
    pub rope_freqs: bool,
    /// The head size where it is not `dim / n_heads` (`attention.key_length`; Qwen3's 128 with a
    /// 1024-wide residual and 16 heads), so Q and the attention output are `n_heads * head_size` wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RoPE's cos and sin are multiplied by this (so every score by its square): LongRoPE's
    /// attention factor (Phi-3.5's `rope.scaling.attn_factor`, as llama.cpp applies it); 1 elsewhere.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub rope_attn_factor: f32,
    /// Linear RoPE scaling of the global (not sliding-window) layers: their frequencies divided by
    /// it (Gemma 3 4B and up: 8); 1 elsewhere.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub rope_scale: f32,
    /// Layers that attend a sliding window of the last positions (Gemma's local layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swa: Option<Swa>,
    /// Soft-capping `cap * tanh(x / cap)` of every attention score (after scaling) and of every
    /// logit (Gemma 2: 50 and 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_softcap: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_softcap: Option<f32>,
}

/// `cap * tanh(x / cap)`, every backend's soft-capping (the GPU's WGSL spells the same formula).
pub fn softcap(x: f32, cap: f32) -> f32 {
    cap * (x / cap).tanh()
}

/// Sliding-window layers: of every `period` layers the first `period - 1` attend only the last
/// `window` positions (their own included) and rotate with base `rope_theta`, unscaled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Swa {
    pub window: usize,
    pub period: usize,
    pub rope_theta: f32,
}

fn one() -> f32 {
    1.0
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

impl Config {
    pub fn head_size(&self) -> usize {
        self.head_dim.unwrap_or(self.dim / self.n_heads)
    }

    /// Width of Q and of the attention output: `n_heads * head_size`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_size()
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
    }

    /// RoPE pairs element `i` of a head with `i + head_size / 2` (GPT-NeoX's layout, Qwen's), rather
    /// than adjacent elements (Llama's, whose converter permutes Q and K rows to it).
    pub fn rope_neox(&self) -> bool {
        matches!(
            self.arch,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 | Arch::Gemma2 | Arch::Gemma3
        )
    }

    /// Whether each head of Q and K is RMS-normalised before RoPE (Qwen3's `attn_q_norm`, `attn_k_norm`).
    pub fn qk_norm(&self) -> bool {
        matches!(self.arch, Arch::Qwen3 | Arch::Gemma3)
    }

    /// Whether `layer` attends a sliding window ([`Config::swa`]).
    pub fn is_local(&self, layer: usize) -> bool {
        self.swa
            .is_some_and(|s| s.period == 0 || layer % s.period < s.period - 1)
    }

    /// The first position `layer` attends from `pos`: the window's start on a local layer.
    pub fn first_attended(&self, layer: usize, pos: usize) -> usize {
        match self.swa {
            Some(s) if self.is_local(layer) => (pos + 1).saturating_sub(s.window),
            _ => 0,
        }
    }

    /// Gemma's block: the embedding scaled by sqrt(dim), an RMSNorm after attention and after the
    /// feed-forward (`post_attention_norm`, `post_ffw_norm`), a GELU-gated feed-forward.
    pub fn gemma(&self) -> bool {
        matches!(self.arch, Arch::Gemma2 | Arch::Gemma3)
    }

    /// Whether Q, K and V have biases.
    pub fn qkv_bias(&self) -> bool {
        self.arch == Arch::Qwen2
    }

    /// Checks the shape is a Llama the forward pass can run; `file` names the source in errors.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::format(file, field, msg));
        let checks: [(&str, usize, usize); 7] = [
            ("dim", self.dim, MAX_DIM),
            ("hidden_dim", self.hidden_dim, MAX_DIM * 4),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_heads", self.n_heads, MAX_DIM),
            ("n_kv_heads", self.n_kv_heads, MAX_DIM),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("seq_len", self.seq_len, MAX_CTX),
        ];
        for (field, v, max) in checks {
            if v == 0 || v > max {
                return bad(field, format!("{v} is outside 1..={max}"));
            }
        }
        if let Some(h) = self.head_dim {
            if h == 0 || h > MAX_DIM {
                return bad("head_dim", format!("{h} is outside 1..={MAX_DIM}"));
            }
        } else if !self.dim.is_multiple_of(self.n_heads) {
            return bad(
                "n_heads",
                format!(
                    "dim {} is not divisible by n_heads {}",
                    self.dim, self.n_heads
                ),
            );
        }
        if self.n_kv_heads > self.n_heads || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "n_kv_heads",
                format!(
                    "n_heads {} is not a multiple of n_kv_heads {}",
                    self.n_heads, self.n_kv_heads
                ),
            );
        }
        if !self.head_size().is_multiple_of(2) {
            return bad(
                "n_heads",
                format!("head size {} must be even for RoPE", self.head_size()),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(
                "rope_theta",
                format!("{} must be positive", self.rope_theta),
            );
        }
        if !(self.rope_attn_factor.is_finite() && self.rope_attn_factor > 0.0) {
            return bad(
                "rope_attn_factor",
                format!("{} must be positive", self.rope_attn_factor),
            );
        }
        if !(self.rope_scale.is_finite() && self.rope_scale > 0.0) {
            return bad(
                "rope_scale",
                format!("{} must be positive", self.rope_scale),
            );
        }
        for (field, cap) in [
            ("attn_softcap", self.attn_softcap),
            ("final_softcap", self.final_softcap),
        ] {
            if cap.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
                return bad(field, format!("{cap:?} must be positive"));
            }
        }
        if let Some(s) = self.swa {
            if s.window == 0 || !(s.rope_theta.is_finite() && s.rope_theta > 0.0) {
                return bad(
                    "swa",
                    format!(
                        "window {} and RoPE base {} must be positive",
                        s.window, s.rope_theta
                    ),
                );
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return bad(
                "norm_eps",
                format!("{} must be non-negative", self.norm_eps),
            );
        }
        Ok(())
    }

    /// Number of weights in the model (the classifier counted once when tied).
    pub fn n_params(&self, tied: bool) -> usize {
        let (d, h, kv, q) = (self.dim, self.hidden_dim, self.kv_dim(), self.q_dim());
        let qk_norm = if self.qk_norm() {
            2 * self.head_size()
        } else {
            0
        };
        let bias = if self.qkv_bias() { q + 2 * kv } else { 0 };
        let post_norms = if self.gemma() { 2 * d } else { 0 };
        let layer = 2 * d + d * q * 2 + d * kv * 2 + 3 * d * h + qk_norm + bias + post_norms;
        self.vocab_size * d * if tied { 1 } else { 2 } + self.n_layers * layer + d
    }
}

/// A role's rows in a GGUF file ([`TensorId::in_file`]): rows `row0..` of the file's tensor `name`,
/// which has `rows` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRows {
    pub name: String,
    pub row0: usize,
    pub rows: usize,
}

fn qkv_name(l: usize) -> String {
    format!("blk.{l}.attn_qkv.weight")
}

/// Tensor classes, used for memory accounting and per-class precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Embedding,
    Attention,
    FeedForward,
    Norm,
    Output,
}

/// Every tensor of a Llama, by role. The forward pass names weights this way; backends map ids to
/// their own storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TensorId {
    TokEmbd,
    AttnNorm(usize),
    Wq(usize),
    Wk(usize),
    Wv(usize),
    Wo(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
    OutNorm,
    Output,
    /// Llama 3's RoPE frequency divisors, `head_size / 2`.
    RopeFreqs,
    /// Qwen2's projection biases.
    BiasQ(usize),
    BiasK(usize),
    BiasV(usize),
    /// Qwen3's per-head RMSNorm weights of Q and K, `head_size`.
    QNorm(usize),
    KNorm(usize),
    /// Gemma's RMSNorm weights of the attention output and of the feed-forward output, `dim`.
    AttnPostNorm(usize),
    FfnPostNorm(usize),
}

impl TensorId {
    /// llama.cpp's GGUF name.
    pub fn gguf_name(self) -> String {
        match self {
            TensorId::TokEmbd => "token_embd.weight".into(),
            TensorId::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            TensorId::Wq(l) => format!("blk.{l}.attn_q.weight"),
            TensorId::Wk(l) => format!("blk.{l}.attn_k.weight"),
            TensorId::Wv(l) => format!("blk.{l}.attn_v.weight"),
            TensorId::Wo(l) => format!("blk.{l}.attn_output.weight"),
            TensorId::FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            TensorId::Gate(l) => format!("blk.{l}.ffn_gate.weight"),
            TensorId::Up(l) => format!("blk.{l}.ffn_up.weight"),
            TensorId::Down(l) => format!("blk.{l}.ffn_down.weight"),
            TensorId::OutNorm => "output_norm.weight".into(),
            TensorId::Output => "output.weight".into(),
            TensorId::RopeFreqs => "rope_freqs.weight".into(),
            TensorId::BiasQ(l) => format!("blk.{l}.attn_q.bias"),
            TensorId::BiasK(l) => format!("blk.{l}.attn_k.bias"),
            TensorId::BiasV(l) => format!("blk.{l}.attn_v.bias"),
            TensorId::QNorm(l) => format!("blk.{l}.attn_q_norm.weight"),
            TensorId::KNorm(l) => format!("blk.{l}.attn_k_norm.weight"),
            TensorId::AttnPostNorm(l) => format!("blk.{l}.post_attention_norm.weight"),
            TensorId::FfnPostNorm(l) => format!("blk.{l}.post_ffw_norm.weight"),
        }
    }

    /// Where this role's rows are in a GGUF file of model `c`. Most roles are a tensor of their own;
    /// llama.cpp's converter writes Phi-3's Q, K and V as one `attn_qkv` (which llama.cpp takes in
    /// any family, hence `fused_qkv`, the file's say), its gate and up as one `ffn_up` (gate first)
    /// and its RoPE divisors (for contexts up to the original one) as `rope_factors_short`.
    pub fn in_file(self, c: &Config, fused_qkv: bool) -> FileRows {
        let (rows, _) = self.shape(c);
        let (q, kv, h) = (c.q_dim(), c.kv_dim(), c.hidden_dim);
        let part = |name: String, row0, all| FileRows {
            name,
            row0,
            rows: all,
        };
        match self {
            TensorId::Wq(l) if fused_qkv => part(qkv_name(l), 0, q + 2 * kv),
            TensorId::Wk(l) if fused_qkv => part(qkv_name(l), q, q + 2 * kv),
            TensorId::Wv(l) if fused_qkv => part(qkv_name(l), q + kv, q + 2 * kv),
            TensorId::Gate(l) if c.arch == Arch::Phi3 => {
                part(TensorId::Up(l).gguf_name(), 0, 2 * h)
            }
            TensorId::Up(_) if c.arch == Arch::Phi3 => part(self.gguf_name(), h, 2 * h),
            TensorId::RopeFreqs if c.arch == Arch::Phi3 => {
                part("rope_factors_short.weight".into(), 0, rows)
            }
            _ => part(self.gguf_name(), 0, rows),
        }
    }

    pub fn class(self) -> Class {
        match self {
            TensorId::TokEmbd => Class::Embedding,
            TensorId::Wq(_) | TensorId::Wk(_) | TensorId::Wv(_) | TensorId::Wo(_) => {
                Class::Attention
            }
            TensorId::Gate(_) | TensorId::Up(_) | TensorId::Down(_) => Class::FeedForward,
            // Vectors, kept in f32: norms, biases, RoPE divisors.
            TensorId::AttnNorm(_)
            | TensorId::FfnNorm(_)
            | TensorId::OutNorm
            | TensorId::RopeFreqs
            | TensorId::BiasQ(_)
            | TensorId::BiasK(_)
            | TensorId::BiasV(_)
            | TensorId::QNorm(_)
            | TensorId::KNorm(_)
            | TensorId::AttnPostNorm(_)
            | TensorId::FfnPostNorm(_) => Class::Norm,
            TensorId::Output => Class::Output,
        }
    }

    /// The part of the model a tensor belongs to: its class, except that a norm belongs to what it
    /// normalises. The component cache stores a tensor with its part.
    pub fn part(self) -> Class {
        match self {
            TensorId::AttnNorm(_)
            | TensorId::BiasQ(_)
            | TensorId::BiasK(_)
            | TensorId::BiasV(_)
            | TensorId::QNorm(_)
            | TensorId::KNorm(_)
            | TensorId::AttnPostNorm(_) => Class::Attention,
            TensorId::FfnNorm(_) | TensorId::FfnPostNorm(_) => Class::FeedForward,
            TensorId::OutNorm => Class::Output,
            t => t.class(),
        }
    }

    pub fn layer(self) -> Option<usize> {
        match self {
            TensorId::AttnNorm(l)
            | TensorId::Wq(l)
            | TensorId::Wk(l)
            | TensorId::Wv(l)
            | TensorId::Wo(l)
            | TensorId::FfnNorm(l)
            | TensorId::Gate(l)
            | TensorId::Up(l)
            | TensorId::Down(l)
            | TensorId::BiasQ(l)
            | TensorId::BiasK(l)
            | TensorId::BiasV(l)
            | TensorId::QNorm(l)
            | TensorId::KNorm(l)
            | TensorId::AttnPostNorm(l)
            | TensorId::FfnPostNorm(l) => Some(l),
            _ => None,
        }
    }

    /// Row-major `[rows, cols]` shape; norms are `[1, dim]`.
    pub fn shape(self, c: &Config) -> (usize, usize) {
        let (d, h, kv, q) = (c.dim, c.hidden_dim, c.kv_dim(), c.q_dim());
        match self {
            TensorId::TokEmbd | TensorId::Output => (c.vocab_size, d),
            TensorId::AttnNorm(_)
            | TensorId::FfnNorm(_)
            | TensorId::OutNorm
            | TensorId::AttnPostNorm(_)
            | TensorId::FfnPostNorm(_) => (1, d),
            TensorId::Wq(_) => (q, d),
            TensorId::Wk(_) | TensorId::Wv(_) => (kv, d),
            TensorId::Wo(_) => (d, q),
            TensorId::Gate(_) | TensorId::Up(_) => (h, d),
            TensorId::Down(_) => (d, h),
            TensorId::RopeFreqs => (1, c.head_size() / 2),
            TensorId::BiasQ(_) => (1, q),
            TensorId::BiasK(_) | TensorId::BiasV(_) => (1, kv),
            TensorId::QNorm(_) | TensorId::KNorm(_) => (1, c.head_size()),
        }
    }
}
