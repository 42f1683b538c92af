//! The Llama model: its hyper-parameters, its tensors (named as llama.cpp names them), and loading from
//! llama2.c checkpoints and GGUF, writing to GGUF, and the deterministic synthetic presets.

use crate::error::{read_file, Error, Result};
use crate::gguf::{self, Gguf, TensorOut, Value};
use crate::quant::{GgmlType, QMatrix, WType};
use crate::tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Upper bounds that reject corrupt headers before anything is allocated. They sit far above any
/// Llama that fits in a browser (or a GPU).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_VOCAB: usize = 1 << 20;
const MAX_CTX: usize = 1 << 22;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub rope_theta: f32,
    pub norm_eps: f32,
}

impl Config {
    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
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
        if self.dim % self.n_heads != 0 {
            return bad(
                "n_heads",
                format!(
                    "dim {} is not divisible by n_heads {}",
                    self.dim, self.n_heads
                ),
            );
        }
        if self.n_kv_heads > self.n_heads || self.n_heads % self.n_kv_heads != 0 {
            return bad(
                "n_kv_heads",
                format!(
                    "n_heads {} is not a multiple of n_kv_heads {}",
                    self.n_heads, self.n_kv_heads
                ),
            );
        }
        if self.head_size() % 2 != 0 {
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
        let (d, h, kv) = (self.dim, self.hidden_dim, self.kv_dim());
        let layer = 2 * d + d * d * 2 + d * kv * 2 + 3 * d * h;
        self.vocab_size * d * if tied { 1 } else { 2 } + self.n_layers * layer + d
    }
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
        }
    }

    pub fn class(self) -> Class {
        match self {
            TensorId::TokEmbd => Class::Embedding,
            TensorId::Wq(_) | TensorId::Wk(_) | TensorId::Wv(_) | TensorId::Wo(_) => {
                Class::Attention
            }
            TensorId::Gate(_) | TensorId::Up(_) | TensorId::Down(_) => Class::FeedForward,
            TensorId::AttnNorm(_) | TensorId::FfnNorm(_) | TensorId::OutNorm => Class::Norm,
            TensorId::Output => Class::Output,
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
            | TensorId::Down(l) => Some(l),
            _ => None,
        }
    }

    /// Row-major `[rows, cols]` shape; norms are `[1, dim]`.
    pub fn shape(self, c: &Config) -> (usize, usize) {
        let (d, h, kv, q) = (c.dim, c.hidden_dim, c.kv_dim(), c.n_heads * c.head_size());
        match self {
            TensorId::TokEmbd | TensorId::Output => (c.vocab_size, d),
            TensorId::AttnNorm(_) | TensorId::FfnNorm(_) | TensorId::OutNorm => (1, d),
            TensorId::Wq(_) => (q, d),
            TensorId::Wk(_) | TensorId::Wv(_) => (kv, d),
            TensorId::Wo(_) => (d, q),
            TensorId::Gate(_) | TensorId::Up(_) => (h, d),
            TensorId::Down(_) => (d, h),
        }
    }

    /// All tensors in GGUF order; `Output` only when the classifier is not tied.
    pub fn all(c: &Config, tied: bool) -> Vec<TensorId> {
        let mut v = vec![TensorId::TokEmbd];
        for l in 0..c.n_layers {
            v.extend([
                TensorId::AttnNorm(l),
                TensorId::Wq(l),
                TensorId::Wk(l),
                TensorId::Wv(l),
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
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: QMatrix,
    pub wk: QMatrix,
    pub wv: QMatrix,
    pub wo: QMatrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: QMatrix,
    pub w_up: QMatrix,
    pub w_down: QMatrix,
}

#[derive(Debug, Clone)]
pub struct Weights {
    pub tok_embd: QMatrix,
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,
    /// `None` when the classifier shares the token embedding.
    pub output: Option<QMatrix>,
}

impl Weights {
    pub fn matrix(&self, id: TensorId) -> &QMatrix {
        match id {
            TensorId::TokEmbd => &self.tok_embd,
            TensorId::Wq(l) => &self.layers[l].wq,
            TensorId::Wk(l) => &self.layers[l].wk,
            TensorId::Wv(l) => &self.layers[l].wv,
            TensorId::Wo(l) => &self.layers[l].wo,
            TensorId::Gate(l) => &self.layers[l].w_gate,
            TensorId::Up(l) => &self.layers[l].w_up,
            TensorId::Down(l) => &self.layers[l].w_down,
            TensorId::Output => self.output.as_ref().unwrap_or(&self.tok_embd),
            other => panic!("{other:?} is a norm, not a matrix"),
        }
    }

    pub fn norm(&self, id: TensorId) -> &[f32] {
        match id {
            TensorId::AttnNorm(l) => &self.layers[l].attn_norm,
            TensorId::FfnNorm(l) => &self.layers[l].ffn_norm,
            TensorId::OutNorm => &self.out_norm,
            other => panic!("{other:?} is a matrix, not a norm"),
        }
    }

    pub fn matrix_mut(&mut self, id: TensorId) -> &mut QMatrix {
        match id {
            TensorId::TokEmbd => &mut self.tok_embd,
            TensorId::Wq(l) => &mut self.layers[l].wq,
            TensorId::Wk(l) => &mut self.layers[l].wk,
            TensorId::Wv(l) => &mut self.layers[l].wv,
            TensorId::Wo(l) => &mut self.layers[l].wo,
            TensorId::Gate(l) => &mut self.layers[l].w_gate,
            TensorId::Up(l) => &mut self.layers[l].w_up,
            TensorId::Down(l) => &mut self.layers[l].w_down,
            TensorId::Output => self.output.as_mut().unwrap_or(&mut self.tok_embd),
            other => panic!("{other:?} is a norm, not a matrix"),
        }
    }

    /// Weights with every tensor empty, to be filled by [`Weights::set`].
    pub fn empty(c: &Config, tied: bool) -> Weights {
        let empty = || QMatrix::from_f32(0, 0, vec![]);
        Weights {
            tok_embd: empty(),
            layers: (0..c.n_layers)
                .map(|_| Layer {
                    attn_norm: vec![],
                    wq: empty(),
                    wk: empty(),
                    wv: empty(),
                    wo: empty(),
                    ffn_norm: vec![],
                    w_gate: empty(),
                    w_up: empty(),
                    w_down: empty(),
                })
                .collect(),
            out_norm: vec![],
            output: (!tied).then(empty),
        }
    }

    /// Puts one tensor in its place; `file` names the source in the error when a norm and a matrix
    /// are swapped.
    pub fn set(&mut self, id: TensorId, t: Tensor, file: &str) -> Result<()> {
        match (t, id) {
            (Tensor::Norm(v), TensorId::AttnNorm(l)) => self.layers[l].attn_norm = v,
            (Tensor::Norm(v), TensorId::FfnNorm(l)) => self.layers[l].ffn_norm = v,
            (Tensor::Norm(v), TensorId::OutNorm) => self.out_norm = v,
            (Tensor::Matrix(m), id) if id.class() != Class::Norm => *self.matrix_mut(id) = m,
            _ => {
                return Err(Error::format(
                    file,
                    id.gguf_name(),
                    "norm and matrix swapped",
                ))
            }
        }
        Ok(())
    }

    /// Builds the weights from a function that yields each tensor, called in GGUF order.
    pub(crate) fn build(
        c: &Config,
        tied: bool,
        mut get: impl FnMut(TensorId) -> Result<Tensor>,
    ) -> Result<Weights> {
        let mut w = Weights::empty(c, tied);
        for id in TensorId::all(c, tied) {
            w.set(id, get(id)?, "model")?;
        }
        Ok(w)
    }

    /// Tensor `id` as a [`Tensor`] (a copy).
    pub fn tensor(&self, id: TensorId) -> Tensor {
        if id.class() == Class::Norm {
            Tensor::Norm(self.norm(id).to_vec())
        } else {
            Tensor::Matrix(self.matrix(id).clone())
        }
    }
}

/// One weight tensor: a matrix (any storage type) or a norm's f32 gains.
#[derive(Debug, Clone)]
pub enum Tensor {
    Matrix(QMatrix),
    Norm(Vec<f32>),
}

impl Tensor {
    pub fn n_bytes(&self) -> usize {
        match self {
            Tensor::Matrix(m) => m.n_bytes(),
            Tensor::Norm(v) => v.len() * 4,
        }
    }
}

/// What a load delivers, known before any tensor arrives: the shapes, and each matrix's final type
/// and block. A backend checks it against its limits before uploading anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub config: Config,
    /// Whether the classifier is a matrix of its own (else it reads the embedding).
    pub own_output: bool,
    pub matrices: Vec<(TensorId, WType, usize)>,
}

impl Plan {
    /// The plan of a model already in memory.
    pub fn of(m: &Model) -> Plan {
        let tied = m.tied();
        Plan {
            name: m.name.clone(),
            config: m.config.clone(),
            own_output: !tied,
            matrices: TensorId::all(&m.config, tied)
                .into_iter()
                .filter(|id| id.class() != Class::Norm)
                .map(|id| {
                    let q = m.weights.matrix(id);
                    (id, q.ty, q.block)
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: Option<Tokenizer>,
}

impl Model {
    pub fn tied(&self) -> bool {
        self.weights.output.is_none()
    }

    /// Loads a model by extension: `.gguf`, else a llama2.c checkpoint (which then needs `tokenizer`
    /// for text). A tokenizer given explicitly replaces one embedded in a GGUF.
    pub fn load(path: &Path, tokenizer: Option<&Path>) -> Result<Model> {
        let file = path.display().to_string();
        let bytes = read_file(path)?;
        let is_gguf_name = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let tok = match tokenizer {
            Some(tp) => Some((read_file(tp)?, tp.display().to_string())),
            None => None,
        };
        Model::from_bytes(
            &bytes,
            &file,
            is_gguf_name,
            tok.as_ref().map(|(b, f)| (b.as_slice(), f.as_str())),
        )
    }

    /// [`Model::load`] on bytes already in memory (a browser's fetch): GGUF by magic or when
    /// `gguf_name` says so, else a llama2.c checkpoint; then the tokenizer, if given.
    pub fn from_bytes(
        bytes: &[u8],
        file: &str,
        gguf_name: bool,
        tokenizer: Option<(&[u8], &str)>,
    ) -> Result<Model> {
        // A .gguf with a bad magic gets the GGUF parser's "magic" error, not a llama2.c one.
        let mut model = if bytes.starts_with(gguf::MAGIC) || gguf_name {
            Model::from_gguf(bytes, file)?
        } else {
            Model::from_llama2c(bytes, file)?
        };
        if let Some((tbytes, tfile)) = tokenizer {
            let tok = if tbytes.starts_with(gguf::MAGIC) {
                Tokenizer::from_gguf(&Gguf::parse(tbytes, tfile)?, tfile)?
            } else {
                Tokenizer::from_llama2c(tbytes, model.config.vocab_size, tfile)?
            };
            model.set_tokenizer(tok, tfile)?;
        }
        Ok(model)
    }

    pub fn set_tokenizer(&mut self, tok: Tokenizer, file: &str) -> Result<()> {
        if tok.vocab_size() != self.config.vocab_size {
            return Err(Error::format(
                file,
                "vocabulary",
                format!(
                    "{} tokens, but the model {} has a vocabulary of {}: the tokenizer does not match the model",
                    tok.vocab_size(),
                    self.name,
                    self.config.vocab_size
                ),
            ));
        }
        self.tokenizer = Some(tok);
        Ok(())
    }

    /// Reads a llama2.c legacy (v0) checkpoint: 7 i32s, then f32 weights in llama2.c order with the
    /// freq_cis tables (skipped) before an optional classifier.
    pub fn from_llama2c(bytes: &[u8], file: &str) -> Result<Model> {
        if bytes.len() < 28 {
            return Err(Error::format(
                file,
                "header",
                format!(
                    "file is truncated: {} bytes, but a llama2.c header is 28 bytes",
                    bytes.len()
                ),
            ));
        }
        let h: Vec<i32> = bytes[..28]
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let names = [
            "dim",
            "hidden_dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "vocab_size",
            "seq_len",
        ];
        for (i, (&v, n)) in h.iter().zip(names).enumerate() {
            if v == 0 || (v < 0 && i != 5) || v == i32::MIN {
                return Err(Error::format(
                    file,
                    n,
                    format!("{v} is not a valid value: not a llama2.c checkpoint, or corrupt"),
                ));
            }
        }
        let hint = |e: Error| match e {
            Error::Format { file, field, msg } => Error::Format {
                file,
                field,
                msg: format!("{msg} (read as a llama2.c checkpoint header: not one, or corrupt)"),
            },
            e => e,
        };
        let tied = h[5] > 0;
        let config = Config {
            dim: h[0] as usize,
            hidden_dim: h[1] as usize,
            n_layers: h[2] as usize,
            n_heads: h[3] as usize,
            n_kv_heads: h[4] as usize,
            vocab_size: h[5].unsigned_abs() as usize,
            seq_len: h[6] as usize,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        };
        config.validate(file).map_err(hint)?;
        let c = &config;
        let (d, hd, l, kv, hs) = (c.dim, c.hidden_dim, c.n_layers, c.kv_dim(), c.head_size());
        // Sections in file order: (name, floats). Sizes are bounded by validate(), so no overflow.
        // Sizes in u64 so a hostile header cannot overflow a 32-bit (wasm) usize.
        let (d, hd, l, kv, hs) = (d as u64, hd as u64, l as u64, kv as u64, hs as u64);
        let (vocab, seq) = (c.vocab_size as u64, c.seq_len as u64);
        let sections: Vec<(&str, u64)> = vec![
            ("token_embedding_table", vocab * d),
            ("rms_att_weight", l * d),
            ("wq", l * d * d),
            ("wk", l * d * kv),
            ("wv", l * d * kv),
            ("wo", l * d * d),
            ("rms_ffn_weight", l * d),
            ("w1", l * d * hd),
            ("w2", l * hd * d),
            ("w3", l * d * hd),
            ("rms_final_weight", d),
            ("freq_cis_real", seq * hs / 2),
            ("freq_cis_imag", seq * hs / 2),
            ("wcls", if tied { 0 } else { vocab * d }),
        ];
        let total: u64 = sections.iter().map(|s| s.1).sum::<u64>() * 4 + 28;
        let len = bytes.len() as u64;
        let mut pos = 28u64;
        for (name, n) in &sections {
            if len - pos < n * 4 {
                return Err(Error::format(
                    file,
                    name,
                    format!(
                        "file is truncated: {name} needs bytes {pos}..{} but the file has {len} (expected \
                         {total} bytes for this header)",
                        pos + n * 4,
                    ),
                ));
            }
            pos += n * 4;
        }
        if pos != len {
            return Err(Error::format(
                file,
                "size",
                format!(
                    "{} bytes remain after the last tensor (expected {total} bytes in all): the header \
                     contradicts the file size",
                    len - pos
                ),
            ));
        }
        // Every section is in bounds now; decode them.
        let mut data: Vec<Vec<f32>> = Vec::with_capacity(sections.len());
        let mut at = 28usize;
        for (_, n) in &sections {
            let end = at + *n as usize * 4;
            data.push(
                bytes[at..end]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            );
            at = end;
        }
        let sec =
            |i: usize, layer: usize, per: usize| data[i][layer * per..(layer + 1) * per].to_vec();
        let weights = Weights::build(c, tied, |id| {
            let (rows, cols) = id.shape(c);
            let n = rows * cols;
            let v = match id {
                TensorId::TokEmbd => data[0].clone(),
                TensorId::AttnNorm(l) => sec(1, l, n),
                TensorId::Wq(l) => sec(2, l, n),
                TensorId::Wk(l) => sec(3, l, n),
                TensorId::Wv(l) => sec(4, l, n),
                TensorId::Wo(l) => sec(5, l, n),
                TensorId::FfnNorm(l) => sec(6, l, n),
                TensorId::Gate(l) => sec(7, l, n),
                TensorId::Down(l) => sec(8, l, n),
                TensorId::Up(l) => sec(9, l, n),
                TensorId::OutNorm => data[10].clone(),
                TensorId::Output => data[13].clone(),
            };
            Ok(if id.class() == Class::Norm {
                Tensor::Norm(v)
            } else {
                Tensor::Matrix(QMatrix::from_f32(rows, cols, v))
            })
        })?;
        Ok(Model {
            name: file_stem(file),
            config,
            weights,
            tokenizer: None,
        })
    }

    /// Reads a llama-architecture GGUF with its tokenizer.
    pub fn from_gguf(bytes: &[u8], file: &str) -> Result<Model> {
        let g = Gguf::parse(bytes, file)?;
        let head = GgufModel::read(&g, file)?;
        let weights = Weights::build(&head.config, head.tied, |id| {
            let info = head.info(&g, id)?;
            head.tensor(id, info, g.tensor_data(info))
        })?;
        Ok(Model {
            name: head.name,
            config: head.config,
            weights,
            tokenizer: head.tokenizer,
        })
    }

    /// The GGUF metadata for this model (architecture keys and tokenizer).
    pub fn gguf_metadata(&self) -> Result<Vec<(String, Value)>> {
        let c = &self.config;
        let mut md: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("general.name".into(), Value::String(self.name.clone())),
            ("llama.context_length".into(), Value::U32(c.seq_len as u32)),
            ("llama.embedding_length".into(), Value::U32(c.dim as u32)),
            ("llama.block_count".into(), Value::U32(c.n_layers as u32)),
            (
                "llama.feed_forward_length".into(),
                Value::U32(c.hidden_dim as u32),
            ),
            (
                "llama.attention.head_count".into(),
                Value::U32(c.n_heads as u32),
            ),
            (
                "llama.attention.head_count_kv".into(),
                Value::U32(c.n_kv_heads as u32),
            ),
            ("llama.rope.freq_base".into(), Value::F32(c.rope_theta)),
            (
                "llama.rope.dimension_count".into(),
                Value::U32(c.head_size() as u32),
            ),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(c.norm_eps),
            ),
            ("llama.vocab_size".into(), Value::U32(c.vocab_size as u32)),
        ];
        if let Some(t) = &self.tokenizer {
            md.extend(t.to_gguf_metadata()?);
        }
        Ok(md)
    }

    /// Writes the model as GGUF v3 to `out`.
    pub fn write_gguf(&self, out: &mut impl std::io::Write) -> Result<()> {
        self.write_gguf_with(out, &[])
    }

    /// Writes the model as GGUF v3 with extra metadata entries appended.
    pub fn write_gguf_with(
        &self,
        out: &mut impl std::io::Write,
        extra: &[(String, Value)],
    ) -> Result<()> {
        let mut md = self.gguf_metadata()?;
        md.extend_from_slice(extra);
        let c = &self.config;
        let mut encoded: Vec<(TensorId, GgmlType, Vec<u8>)> = Vec::new();
        for id in TensorId::all(c, self.tied()) {
            let (ty, bytes) = if id.class() == Class::Norm {
                (
                    GgmlType::F32,
                    bytemuck::cast_slice(self.weights.norm(id)).to_vec(),
                )
            } else {
                let m = self.weights.matrix(id);
                let gt = m.ty.ggml(m.block).ok_or_else(|| {
                    Error::Invalid(format!(
                        "tensor {}: {} at block {} has no GGUF (ggml) type; only block 32 is ggml-compatible",
                        id.gguf_name(),
                        m.ty.name(),
                        m.block
                    ))
                })?;
                (gt, m.to_ggml().expect("ggml type exists"))
            };
            encoded.push((id, ty, bytes));
        }
        let tensors: Vec<TensorOut> = encoded
            .iter()
            .map(|(id, ty, bytes)| {
                let (rows, cols) = id.shape(c);
                TensorOut {
                    name: id.gguf_name(),
                    dims: if rows == 1 {
                        vec![cols as u64]
                    } else {
                        vec![cols as u64, rows as u64]
                    },
                    ty: *ty,
                    data: bytes,
                }
            })
            .collect();
        gguf::write_to(out, &md, &tensors)
    }

    /// A deterministic synthetic Llama with a byte-level vocabulary. Weights are uniform with variance
    /// 1/fan_in so activations stay near unit scale through the layers; each tensor has its own RNG
    /// stream so tensors can be generated independently.
    pub fn synthetic(preset: Preset, seed: u64) -> Model {
        let config = preset.config();
        let c = &config;
        let tokenizer = Tokenizer::byte_level(c.vocab_size);
        let weights = Weights::build(c, false, |id| Ok(synth_tensor(c, seed, id)))
            .expect("synthetic weights are infallible");
        Model {
            name: format!("synthetic-{}-seed{seed}", preset.name()),
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
        weights: &crate::precision::WeightConfig,
    ) -> Result<(Model, Vec<crate::precision::Fallback>)> {
        weights.validate()?;
        let config = preset.config();
        let c = &config;
        let ids = TensorId::all(c, false);
        // wasm32 has no threads here: the work runs inline.
        let threads = if cfg!(target_arch = "wasm32") {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let next = std::sync::atomic::AtomicUsize::new(0);
        type Made = (TensorId, Tensor, Vec<crate::precision::Fallback>);
        let results: std::sync::Mutex<Vec<Made>> = std::sync::Mutex::new(Vec::new());
        let failed: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        let work = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&id) = ids.get(i) else { break };
            let t = synth_tensor(c, seed, id);
            let made = match t {
                Tensor::Matrix(m) => crate::precision::restore(id, &m, weights)
                    .map(|(q, fb)| (Tensor::Matrix(q.unwrap_or(m)), fb.into_iter().collect())),
                norm => Ok((norm, vec![])),
            };
            match made {
                Ok((t, fb)) => results.lock().unwrap().push((id, t, fb)),
                Err(e) => {
                    *failed.lock().unwrap() = Some(e);
                    break;
                }
            }
        };
        if threads <= 1 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads.min(ids.len()) {
                    s.spawn(work);
                }
            });
        }
        if let Some(e) = failed.into_inner().unwrap() {
            return Err(e);
        }
        let mut made: HashMap<TensorId, (Tensor, Vec<crate::precision::Fallback>)> = results
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|(id, t, fb)| (id, (t, fb)))
            .collect();
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

    /// Converts every matrix to `ty` (f32/f16 here; quantized types go through the precision policy).
    pub fn cast_matrices(&mut self, ty: crate::quant::WType) {
        let c = self.config.clone();
        for id in TensorId::all(&c, self.tied()) {
            if id.class() != Class::Norm {
                let m = self.weights.matrix_mut(id);
                *m = QMatrix::quantize(ty, 32, m.rows, m.cols, &m.to_f32());
            }
        }
    }
}

/// One synthetic tensor: uniform with variance 1/fan_in (embedding: unit variance), norms in [0.8, 1.2].
/// What a GGUF header says about a Llama: everything but the tensor data, so a streamed load can
/// plan before the tensors arrive.
pub struct GgufModel {
    pub name: String,
    pub config: Config,
    pub tied: bool,
    pub tokenizer: Option<Tokenizer>,
    file: String,
}

impl GgufModel {
    pub fn read(g: &Gguf, file: &str) -> Result<GgufModel> {
        match g.get("general.architecture").and_then(Value::as_str) {
            Some("llama") => {}
            Some(a) => {
                return Err(Error::format(
                    file,
                    "general.architecture",
                    format!("{a:?} is not supported (nibble runs \"llama\")"),
                ))
            }
            None => return Err(Error::format(file, "general.architecture", "missing")),
        }
        let int = |key: &str| -> Result<usize> {
            let v = g
                .get(key)
                .ok_or_else(|| Error::format(file, key, "missing"))?;
            match v.as_int() {
                Some(i) if i > 0 && i <= u32::MAX as i128 => Ok(i as usize),
                _ => Err(Error::format(
                    file,
                    key,
                    format!("{} is not a positive integer", v.display_short()),
                )),
            }
        };
        let float = |key: &str, default: f32| -> Result<f32> {
            match g.get(key) {
                None => Ok(default),
                Some(v) => v.as_f64().map(|f| f as f32).ok_or_else(|| {
                    Error::format(file, key, format!("{} is not a number", v.display_short()))
                }),
            }
        };
        let dim = int("llama.embedding_length")?;
        let n_heads = int("llama.attention.head_count")?;
        let n_kv_heads = match g.get("llama.attention.head_count_kv") {
            None => n_heads,
            Some(_) => int("llama.attention.head_count_kv")?,
        };
        let emb = g
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::format(file, "tensor \"token_embd.weight\"", "missing"))?;
        let vocab_size = match g.get("llama.vocab_size") {
            Some(_) => int("llama.vocab_size")?,
            None => *emb.dims.get(1).unwrap_or(&0) as usize,
        };
        let config = Config {
            dim,
            hidden_dim: int("llama.feed_forward_length")?,
            n_layers: int("llama.block_count")?,
            n_heads,
            n_kv_heads,
            vocab_size,
            seq_len: int("llama.context_length")?,
            rope_theta: float("llama.rope.freq_base", 10000.0)?,
            norm_eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5)?,
        };
        config.validate(file)?;
        if let Some(v) = g.get("llama.rope.dimension_count") {
            if v.as_int() != Some(config.head_size() as i128) {
                return Err(Error::format(
                    file,
                    "llama.rope.dimension_count",
                    format!(
                        "{} but the head size is {}: partial RoPE is not supported",
                        v.display_short(),
                        config.head_size()
                    ),
                ));
            }
        }
        let tied = g.tensor("output.weight").is_none();
        let head = GgufModel {
            name: g
                .get("general.name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| file_stem(file)),
            tokenizer: None,
            config,
            tied,
            file: file.to_string(),
        };
        // Every tensor must be there with the shape the metadata implies, before any data is read.
        for id in TensorId::all(&head.config, tied) {
            head.info(g, id)?;
        }
        let tokenizer = if g.get("tokenizer.ggml.model").is_some() {
            let tok = Tokenizer::from_gguf(g, file)?;
            if tok.vocab_size() != head.config.vocab_size {
                return Err(Error::format(
                    file,
                    "tokenizer.ggml.tokens",
                    format!(
                        "{} tokens but the model's vocabulary is {}",
                        tok.vocab_size(),
                        head.config.vocab_size
                    ),
                ));
            }
            Some(tok)
        } else {
            None
        };
        Ok(GgufModel { tokenizer, ..head })
    }

    /// The table entry of tensor `id`, checked against the shape the metadata implies.
    pub fn info<'g>(&self, g: &'g Gguf, id: TensorId) -> Result<&'g gguf::TensorInfo> {
        let file = self.file.as_str();
        let name = id.gguf_name();
        let field = format!("tensor {name:?}");
        let t = g
            .tensor(&name)
            .ok_or_else(|| Error::format(file, &field, "missing"))?;
        let (rows, cols) = id.shape(&self.config);
        let want: Vec<u64> = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        // ggml allows trailing 1-sized dims.
        let mut dims = t.dims.clone();
        while dims.len() > want.len() && dims.last() == Some(&1) {
            dims.pop();
        }
        if dims != want {
            return Err(Error::format(
                file,
                &field,
                format!(
                    "dims {:?} contradict the metadata, which implies {want:?}",
                    t.dims
                ),
            ));
        }
        if id.class() == Class::Norm && !matches!(t.ty, GgmlType::F32 | GgmlType::F16) {
            return Err(Error::format(
                file,
                &field,
                "norm weights must be F32 or F16",
            ));
        }
        Ok(t)
    }

    /// Tensor `id` from its bytes (`n_bytes` of its table entry).
    pub fn tensor(&self, id: TensorId, info: &gguf::TensorInfo, data: &[u8]) -> Result<Tensor> {
        let (rows, cols) = id.shape(&self.config);
        if id.class() == Class::Norm {
            return Ok(Tensor::Norm(
                QMatrix::from_ggml(info.ty, 1, cols, data).to_f32(),
            ));
        }
        Ok(Tensor::Matrix(QMatrix::from_ggml(
            info.ty, rows, cols, data,
        )))
    }
}

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
    };
    (l as u64) << 8 | kind
}

fn file_stem(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_string())
}

/// Synthetic model shapes. `tiny` is small enough for every test; the others have real Llama shapes
/// for memory and speed measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    Tiny,
    /// TinyLlama-1.1B's shape (Llama 2 architecture, 32000 vocabulary).
    Llama1b,
    /// Llama-2-7B's shape.
    Llama7b,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Preset> {
        Ok(match s {
            "tiny" => Preset::Tiny,
            "llama-1b" => Preset::Llama1b,
            "llama-7b" => Preset::Llama7b,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown preset {s:?} (expected tiny, llama-1b or llama-7b)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Llama1b => "llama-1b",
            Preset::Llama7b => "llama-7b",
        }
    }

    pub fn config(self) -> Config {
        let (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) = match self {
            Preset::Tiny => (256, 512, 2, 8, 4, 259, 512),
            Preset::Llama1b => (2048, 5632, 22, 32, 4, 32000, 2048),
            Preset::Llama7b => (4096, 11008, 32, 32, 32, 32000, 4096),
        };
        Config {
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            vocab_size,
            seq_len,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        }
    }
}
