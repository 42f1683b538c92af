//! The Llama model: its hyper-parameters, its tensors (named as llama.cpp names them), and loading from
//! llama2.c checkpoints and GGUF, writing to GGUF, and the deterministic synthetic presets.

use crate::error::{read_file, Error, Result};
use crate::gguf::{self, Gguf, TensorOut, Value};
use crate::quant::{GgmlType, QMatrix, WType};
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub use crate::config::{Class, Config, TensorId};

/// A model's tensors by role. The family decides which roles exist ([`TensorId::all`]); a tied
/// classifier has no tensor of its own and reads the embedding.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<TensorId, Tensor>,
    tied: bool,
}

impl Weights {
    /// Whether the classifier reads the token embedding.
    pub fn tied(&self) -> bool {
        self.tied
    }

    /// Gives the classifier a copy of the embedding (the precision policy stores them differently).
    pub fn untie(&mut self) {
        if self.tied {
            let emb = self.tensors[&TensorId::TokEmbd].clone();
            self.tensors.insert(TensorId::Output, emb);
            self.tied = false;
        }
    }

    fn key(&self, id: TensorId) -> TensorId {
        if id == TensorId::Output && self.tied {
            TensorId::TokEmbd
        } else {
            id
        }
    }

    pub fn matrix(&self, id: TensorId) -> &QMatrix {
        match self.tensors.get(&self.key(id)) {
            Some(Tensor::Matrix(m)) => m,
            Some(Tensor::Norm(_)) => panic!("{id:?} is a norm, not a matrix"),
            None => panic!("{id:?} is not a tensor of this model"),
        }
    }

    pub fn norm(&self, id: TensorId) -> &[f32] {
        match self.tensors.get(&id) {
            Some(Tensor::Norm(v)) => v,
            Some(Tensor::Matrix(_)) => panic!("{id:?} is a matrix, not a norm"),
            None => panic!("{id:?} is not a tensor of this model"),
        }
    }

    pub fn matrix_mut(&mut self, id: TensorId) -> &mut QMatrix {
        let key = self.key(id);
        match self.tensors.get_mut(&key) {
            Some(Tensor::Matrix(m)) => m,
            Some(Tensor::Norm(_)) => panic!("{id:?} is a norm, not a matrix"),
            None => panic!("{id:?} is not a tensor of this model"),
        }
    }

    /// Weights with no tensor yet, to be filled by [`Weights::set`].
    pub fn empty(_c: &Config, tied: bool) -> Weights {
        Weights {
            tensors: HashMap::new(),
            tied,
        }
    }

    /// Puts one tensor in its place; `file` names the source in the error when a norm and a matrix
    /// are swapped.
    pub fn set(&mut self, id: TensorId, t: Tensor, file: &str) -> Result<()> {
        let is_norm = matches!(t, Tensor::Norm(_));
        if is_norm != (id.class() == Class::Norm) {
            return Err(Error::format(
                file,
                id.gguf_name(),
                "norm and matrix swapped",
            ));
        }
        self.tensors.insert(self.key(id), t);
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
        self.tensors[&self.key(id)].clone()
    }
}

/// One weight tensor: a matrix (any storage type) or a norm's f32 gains.
#[derive(Debug, Clone, PartialEq)]
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
        self.weights.tied()
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

    /// Reads a llama-architecture GGUF with its tokenizer.
    pub fn from_gguf(bytes: &[u8], file: &str) -> Result<Model> {
        let g = Gguf::parse(bytes, file)?;
        let head = GgufModel::read(&g, file)?;
        let weights = Weights::build(&head.config, head.tied, |id| {
            let (info, rows) = head.locate(&g, id)?;
            let data = g.tensor_data(info);
            head.tensor(id, info, &data[rows.start as usize..rows.end as usize])
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
        let family = c.arch.family();
        let mut md: Vec<(String, Value)> = vec![
            (
                "general.architecture".into(),
                Value::String(family.name.into()),
            ),
            ("general.name".into(), Value::String(self.name.clone())),
        ];
        md.extend((family.write_config)(c));
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
        // Roles llama.cpp reads from one tensor (Phi-3's gate and up) are written as one, rows in
        // order; Q, K and V stay apart, which llama.cpp takes in every family.
        struct Merged {
            first: TensorId,
            name: String,
            dims: Vec<u64>,
            ty: GgmlType,
            data: Vec<u8>,
        }
        let mut merged: Vec<Merged> = Vec::new();
        for (id, ty, data) in encoded {
            let (rows, cols) = id.shape(c);
            let at = id.in_file(c, false);
            match merged.last_mut() {
                Some(m) if at.row0 > 0 && m.name == at.name => {
                    if m.ty != ty {
                        return Err(Error::Invalid(format!(
                            "{}: {:?} is {:?} and {id:?} {ty:?}, but GGUF gives the tensor holding \
                             both one type",
                            m.name, m.first, m.ty
                        )));
                    }
                    m.data.extend_from_slice(&data);
                    m.dims[1] += rows as u64;
                }
                _ => merged.push(Merged {
                    first: id,
                    name: at.name,
                    dims: if rows == 1 {
                        vec![cols as u64]
                    } else {
                        vec![cols as u64, rows as u64]
                    },
                    ty,
                    data,
                }),
            }
        }
        let tensors: Vec<TensorOut> = merged
            .iter()
            .map(|m| TensorOut {
                name: m.name.clone(),
                dims: m.dims.clone(),
                ty: m.ty,
                data: &m.data,
            })
            .collect();
        gguf::write_to(out, &md, &tensors)
    }
}

/// What a GGUF header says about a Llama: everything but the tensor data, so a streamed load can
/// plan before the tensors arrive.
pub struct GgufModel {
    pub name: String,
    pub config: Config,
    pub tied: bool,
    pub tokenizer: Option<Tokenizer>,
    file: String,
    /// Whether the file stores each layer's Q, K and V as one `attn_qkv` ([`TensorId::in_file`]).
    fused_qkv: bool,
}

impl GgufModel {
    pub fn read(g: &Gguf, file: &str) -> Result<GgufModel> {
        let config = (crate::arch::from_gguf(g, file)?.read_config)(g, file)?;
        let tied = g.tensor("output.weight").is_none();
        let head = GgufModel {
            fused_qkv: g.tensor("blk.0.attn_qkv.weight").is_some(),
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

    /// The table entry of the file tensor holding `id`, checked against the shape the metadata
    /// implies, and the byte range of `id`'s rows within that tensor's data.
    pub fn locate<'g>(
        &self,
        g: &'g Gguf,
        id: TensorId,
    ) -> Result<(&'g gguf::TensorInfo, std::ops::Range<u64>)> {
        let at = id.in_file(&self.config, self.fused_qkv);
        let t = self.info(g, id)?;
        let row_bytes = t.n_bytes() / at.rows as u64;
        let (rows, _) = id.shape(&self.config);
        let start = at.row0 as u64 * row_bytes;
        Ok((t, start..start + rows as u64 * row_bytes))
    }

    /// The table entry of the file tensor holding `id` ([`TensorId::in_file`]), checked against
    /// the shape the metadata implies.
    pub fn info<'g>(&self, g: &'g Gguf, id: TensorId) -> Result<&'g gguf::TensorInfo> {
        let file = self.file.as_str();
        let at = id.in_file(&self.config, self.fused_qkv);
        let name = at.name;
        let field = format!("tensor {name:?}");
        let t = g
            .tensor(&name)
            .ok_or_else(|| Error::format(file, &field, "missing"))?;
        let (_, cols) = id.shape(&self.config);
        let rows = at.rows;
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
        if id.class() == Class::Norm
            && !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        {
            return Err(Error::format(
                file,
                &field,
                "norm weights must be F32, F16 or BF16",
            ));
        }
        Ok(t)
    }

    /// Tensor `id` from the bytes of its rows ([`GgufModel::locate`]).
    pub fn tensor(&self, id: TensorId, info: &gguf::TensorInfo, data: &[u8]) -> Result<Tensor> {
        let (rows, cols) = id.shape(&self.config);
        let at = id.in_file(&self.config, self.fused_qkv);
        // Blocks are numbered as in the file's tensor, which may hold other roles' rows first.
        let first = at.row0 * cols / info.ty.block_len();
        // A block whose scale is not a number makes every value of it garbage: refuse the file.
        let (bb, fields) = (info.ty.block_bytes(), info.ty.scale_fields());
        for (i, b) in data.chunks_exact(bb).enumerate() {
            for &(off, what) in fields {
                let v = half::f16::from_le_bytes([b[off], b[off + 1]]);
                if !v.is_finite() {
                    return Err(Error::format(
                        &self.file,
                        format!("tensor {:?}", at.name),
                        format!(
                            "block {} ({:?}): its scale {what} is {v} (a corrupt block)",
                            first + i,
                            info.ty
                        ),
                    ));
                }
            }
        }
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

pub(crate) fn file_stem(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_string())
}
