//! Vocabularies and their tokenizers, the one authority on `tokenizer.ggml.*`.
//!
//! SentencePiece (`tokenizer.ggml.model = "llama"`) as llama.cpp runs it ([`spm`]: special tokens
//! split out first, then llama2.c's dummy prefix space, UTF-8 code points looked up whole, bytes
//! without a piece as `<0xNN>` tokens, pairs merged greedily by best score). Pieces are kept with plain spaces (as llama2.c's `tokenizer.bin` stores them);
//! GGUF stores SentencePiece's `▁` instead, and the GGUF loader/writer converts, so both sources give the
//! same ids. Byte-level BPE (`"gpt2"`) is [`bpe`].

pub mod bpe;
pub mod chat;
mod spm;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value, ValueType};
use bpe::Bpe;
use std::collections::HashMap;

/// SentencePiece token types as GGUF stores them in `tokenizer.ggml.token_type`.
pub const TYPE_NORMAL: i32 = 1;
pub const TYPE_UNKNOWN: i32 = 2;
pub const TYPE_CONTROL: i32 = 3;
pub const TYPE_USER_DEFINED: i32 = 4;
pub const TYPE_UNUSED: i32 = 5;
pub const TYPE_BYTE: i32 = 6;

const SPACE_MARK: &str = "\u{2581}";

#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub pieces: Vec<Vec<u8>>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub bos: u32,
    pub eos: u32,
    /// Whether a sequence starts with BOS (`tokenizer.ggml.add_bos_token`; SentencePiece vocabularies do).
    pub add_bos: bool,
    /// `tokenizer.chat_template`, kept for the file it is written back to.
    pub chat_template: Option<String>,
    lookup: HashMap<Vec<u8>, u32>,
    byte_ids: [Option<u32>; 256],
    /// A byte-level BPE vocabulary's tokenizer; `None` for SentencePiece.
    bpe: Option<Bpe>,
    /// SentencePiece: whether a text fragment that starts the text or follows a special token gets
    /// a leading space (`tokenizer.ggml.add_space_prefix`, true unless the file says false).
    pub add_space_prefix: bool,
    /// SentencePiece: special tokens that strip the whitespace after them (llama.cpp's rule for
    /// Phi-3 vocabularies); set through `set_rstrip`, which keeps the matcher in step.
    rstrip: Vec<u32>,
    specials: spm::Specials,
}

impl Tokenizer {
    pub fn new(
        pieces: Vec<Vec<u8>>,
        scores: Vec<f32>,
        types: Vec<i32>,
        bos: u32,
        eos: u32,
    ) -> Self {
        let mut lookup = HashMap::with_capacity(pieces.len());
        let mut byte_ids = [None; 256];
        for (i, p) in pieces.iter().enumerate() {
            // First occurrence wins, as in llama2.c's sorted lookup of unique pieces.
            lookup.entry(p.clone()).or_insert(i as u32);
            if let Some(b) = parse_byte_piece(p) {
                byte_ids[b as usize].get_or_insert(i as u32);
            }
        }
        let specials = spm::Specials::of(&pieces, &types, &[]);
        Tokenizer {
            specials,
            pieces,
            scores,
            types,
            bos,
            eos,
            add_bos: true,
            chat_template: None,
            lookup,
            byte_ids,
            bpe: None,
            add_space_prefix: true,
            rstrip: Vec::new(),
        }
    }

    /// Sets which special tokens strip the whitespace after them.
    pub fn set_rstrip(&mut self, ids: Vec<u32>) {
        self.specials = spm::Specials::of(&self.pieces, &self.types, &ids);
        self.rstrip = ids;
    }

    /// The byte-level BPE tokenizer, if this is one.
    pub fn bpe(&self) -> Option<&Bpe> {
        self.bpe.as_ref()
    }

    /// `tokenizer.ggml.model`.
    pub fn model_name(&self) -> &'static str {
        if self.bpe.is_some() {
            "gpt2"
        } else {
            "llama"
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// A byte-level vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then unused padding up to
    /// `vocab_size`. Any text encodes, one token per byte.
    pub fn byte_level(vocab_size: usize) -> Self {
        assert!(vocab_size >= 259);
        let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
        let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL];
        for b in 0..=255u8 {
            pieces.push(format!("<0x{b:02X}>").into_bytes());
            types.push(TYPE_BYTE);
        }
        for i in pieces.len()..vocab_size {
            pieces.push(format!("<unused{i}>").into_bytes());
            types.push(TYPE_UNUSED);
        }
        let scores = vec![0.0; vocab_size];
        Tokenizer::new(pieces, scores, types, 1, 2)
    }

    /// Reads llama2.c's `tokenizer.bin`: i32 max_token_length, then per token f32 score, i32 length, bytes.
    /// llama2.c does not store the vocabulary size, so the model's is passed in.
    pub fn from_llama2c(bytes: &[u8], vocab_size: usize, file: &str) -> Result<Self> {
        let mut pos = 0usize;
        let mut take = |n: usize, field: &str| -> Result<&[u8]> {
            if bytes.len() - pos < n {
                return Err(Error::format(
                    file,
                    field,
                    format!(
                        "file is truncated at byte {pos} (needs {n} more bytes, {} left); a tokenizer with \
                         fewer pieces than the model's vocabulary ({vocab_size}) does not match the model",
                        bytes.len() - pos
                    ),
                ));
            }
            let s = &bytes[pos..pos + n];
            pos += n;
            Ok(s)
        };
        let max_len = i32::from_le_bytes(take(4, "max_token_length")?.try_into().unwrap());
        if max_len <= 0 || max_len > 1 << 16 {
            return Err(Error::format(
                file,
                "max_token_length",
                format!("{max_len} is not a plausible piece length"),
            ));
        }
        let mut pieces = Vec::with_capacity(vocab_size.min(bytes.len() / 8));
        let mut scores = Vec::with_capacity(pieces.capacity());
        for i in 0..vocab_size {
            let field = format!("token[{i}]");
            let score = f32::from_le_bytes(take(4, &field)?.try_into().unwrap());
            let len = i32::from_le_bytes(take(4, &field)?.try_into().unwrap());
            if len < 0 || len > max_len {
                return Err(Error::format(
                    file,
                    &field,
                    format!("length {len} is outside 0..={max_len} (max_token_length)"),
                ));
            }
            pieces.push(take(len as usize, &field)?.to_vec());
            scores.push(score);
        }
        if pos != bytes.len() {
            return Err(Error::format(
                file,
                "vocabulary",
                format!(
                    "{} bytes remain after {vocab_size} pieces: the tokenizer has more pieces than the model's \
                     vocabulary ({vocab_size}) and does not match the model",
                    bytes.len() - pos
                ),
            ));
        }
        // llama2.c's export fixes 0 = <unk>, 1 = <s>, 2 = </s>; byte pieces are typed for GGUF export.
        let types = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| match i {
                0 => TYPE_UNKNOWN,
                1 | 2 => TYPE_CONTROL,
                _ if parse_byte_piece(p).is_some() => TYPE_BYTE,
                _ => TYPE_NORMAL,
            })
            .collect();
        Ok(Tokenizer::new(pieces, scores, types, 1, 2))
    }

    /// Reads `tokenizer.ggml.*` from GGUF metadata.
    pub fn from_gguf(g: &Gguf, file: &str) -> Result<Self> {
        let is_bpe = match g.get("tokenizer.ggml.model").and_then(Value::as_str) {
            Some("llama") => false,
            Some("gpt2") => true,
            Some(other) => {
                return Err(Error::format(
                    file,
                    "tokenizer.ggml.model",
                    format!(
                        "{other:?} is not supported (nibble reads SentencePiece \"llama\" and byte-level BPE \"gpt2\" vocabularies)"
                    ),
                ))
            }
            None => {
                return Err(Error::format(
                    file,
                    "tokenizer.ggml.model",
                    "missing: the file has no tokenizer",
                ))
            }
        };
        let field = "tokenizer.ggml.tokens";
        let tokens = match g.get(field) {
            Some(Value::Array(ValueType::String, v)) => v,
            _ => {
                return Err(Error::format(
                    file,
                    field,
                    "missing or not an array of strings",
                ))
            }
        };
        let n = tokens.len();
        let pieces: Vec<Vec<u8>> = tokens
            .iter()
            .map(|t| {
                let s = t.as_str().unwrap_or_default();
                if is_bpe {
                    s.as_bytes().to_vec()
                } else {
                    s.replace(SPACE_MARK, " ").into_bytes()
                }
            })
            .collect();
        let scores = per_token(g, file, "tokenizer.ggml.scores", n, "numbers", |v| {
            v.as_f64().unwrap_or(0.0) as f32
        })?
        .unwrap_or_else(|| vec![0.0; n]);
        let types = per_token(g, file, "tokenizer.ggml.token_type", n, "integers", |v| {
            v.as_int().unwrap_or(TYPE_NORMAL as i128) as i32
        })?
        .unwrap_or_else(|| vec![TYPE_NORMAL; n]);
        let id = |key: &str, default: u32| -> Result<u32> {
            match g.get(key) {
                None => Ok(default),
                Some(v) => match v.as_int() {
                    Some(i) if i >= 0 && (i as usize) < n => Ok(i as u32),
                    _ => Err(Error::format(
                        file,
                        key,
                        format!("{} is not a token id below {n}", v.display_short()),
                    )),
                },
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id", 1)?;
        let eos = id("tokenizer.ggml.eos_token_id", 2)?;
        let bpe = if is_bpe {
            Some(bpe_from_gguf(g, file, &pieces, &types)?)
        } else {
            None
        };
        let mut t = Tokenizer::new(pieces, scores, types, bos, eos);
        // llama.cpp's default: SentencePiece vocabularies start with BOS, BPE ones do not.
        t.add_bos = match g.get("tokenizer.ggml.add_bos_token") {
            None => !is_bpe,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(Error::format(
                    file,
                    "tokenizer.ggml.add_bos_token",
                    format!("{} is not a boolean", v.display_short()),
                ))
            }
        };
        t.chat_template = g
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string);
        t.bpe = bpe;
        if !is_bpe {
            t.read_spm_settings(g, file)?;
        }
        Ok(t)
    }

    /// The whole vocabulary as bytes (the component cache's entry): any piece bytes, unlike GGUF's
    /// UTF-8 strings.
    pub fn to_bytes(&self, v: &mut Vec<u8>) {
        let put = |v: &mut Vec<u8>, b: &[u8]| {
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
        };
        for x in [self.pieces.len() as u32, self.bos, self.eos] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for ((p, s), ty) in self.pieces.iter().zip(&self.scores).zip(&self.types) {
            put(v, p);
            v.extend_from_slice(&s.to_le_bytes());
            v.extend_from_slice(&ty.to_le_bytes());
        }
        v.push(self.add_bos as u8);
        put(v, self.chat_template.as_deref().unwrap_or("").as_bytes());
        let (pre, merges) = match &self.bpe {
            Some(b) => (b.pre_name.as_str(), b.merges.as_slice()),
            None => ("", &[][..]),
        };
        put(v, pre.as_bytes());
        v.extend_from_slice(&(merges.len() as u32).to_le_bytes());
        for m in merges {
            put(v, m.as_bytes());
        }
        v.push(self.add_space_prefix as u8);
        v.extend_from_slice(&(self.rstrip.len() as u32).to_le_bytes());
        for id in &self.rstrip {
            v.extend_from_slice(&id.to_le_bytes());
        }
    }

    /// Reads [`Tokenizer::to_bytes`]; `file` names the source in errors.
    pub fn from_bytes(b: &[u8], file: &str) -> Result<Tokenizer> {
        let mut r = ByteReader { b, pos: 0, file };
        let (n, bos, eos) = (r.u32("pieces")?, r.u32("bos")?, r.u32("eos")?);
        let (mut pieces, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            pieces.push(r.bytes("piece")?.to_vec());
            scores.push(f32::from_bits(r.u32("score")?));
            types.push(r.u32("type")? as i32);
        }
        let add_bos = r.take(1, "add_bos")?[0] != 0;
        let template = r.string("chat_template")?;
        let pre = r.string("pre")?;
        let n_merges = r.u32("merges")?;
        let merges = (0..n_merges)
            .map(|_| r.string("merge"))
            .collect::<Result<Vec<_>>>()?;
        let bpe = match pre.as_str() {
            "" => None,
            p => Some(Bpe::new(&pieces, &types, merges, p, file)?),
        };
        let mut t = Tokenizer::new(pieces, scores, types, bos, eos);
        t.add_bos = add_bos;
        t.chat_template = (!template.is_empty()).then_some(template);
        t.bpe = bpe;
        t.add_space_prefix = r.take(1, "add_space_prefix")?[0] != 0;
        let n = r.u32("rstrip")?;
        let rstrip = (0..n).map(|_| r.u32("rstrip id")).collect::<Result<_>>()?;
        t.set_rstrip(rstrip);
        Ok(t)
    }

    /// The GGUF metadata entries for this vocabulary.
    pub fn to_gguf_metadata(&self) -> Result<Vec<(String, Value)>> {
        let tokens = self
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let s = std::str::from_utf8(p).map_err(|_| {
                    Error::Invalid(format!(
                        "token {i} is not valid UTF-8 and cannot be stored in GGUF"
                    ))
                })?;
                Ok(Value::String(if self.bpe.is_some() {
                    s.to_string()
                } else {
                    s.replace(' ', SPACE_MARK)
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut md = vec![
            (
                "tokenizer.ggml.model".into(),
                Value::String(self.model_name().into()),
            ),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(ValueType::String, tokens),
            ),
            (
                "tokenizer.ggml.scores".into(),
                Value::Array(
                    ValueType::F32,
                    self.scores.iter().map(|&s| Value::F32(s)).collect(),
                ),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(
                    ValueType::I32,
                    self.types.iter().map(|&t| Value::I32(t)).collect(),
                ),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(self.bos)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(self.eos)),
            (
                "tokenizer.ggml.add_bos_token".into(),
                Value::Bool(self.add_bos),
            ),
        ];
        match &self.bpe {
            Some(b) => {
                md.push((
                    "tokenizer.ggml.pre".into(),
                    Value::String(b.pre_name.clone()),
                ));
                let merges = b.merges.iter().map(|m| Value::String(m.clone())).collect();
                md.push((
                    "tokenizer.ggml.merges".into(),
                    Value::Array(ValueType::String, merges),
                ));
            }
            None => md.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(0))),
        }
        if self.bpe.is_none() && !self.add_space_prefix {
            md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
        }
        if let Some(t) = &self.chat_template {
            md.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
        }
        Ok(md)
    }

    /// Encodes `text`, after BOS where `bos` asks and the vocabulary starts sequences with it
    /// ([`Tokenizer::add_bos`]). SentencePiece: [`spm`]; byte-level BPE: [`Bpe::encode`]. Special
    /// tokens written in the text are matched whole in both.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        let mut toks = Vec::with_capacity(text.len() + 3);
        if bos && self.add_bos {
            toks.push(self.bos);
        }
        let mut ids: Vec<u32> = Vec::with_capacity(text.len() + 1);
        if let Some(b) = &self.bpe {
            ids = b.encode(text)?;
        } else {
            self.encode_spm(text, &mut ids);
        }
        toks.extend(ids);
        if eos {
            toks.push(self.eos);
        }
        Ok(toks)
    }

    /// The bytes a token contributes after `prev`: byte pieces become their byte, and the leading space
    /// of the first piece after BOS is dropped (the dummy prefix).
    /// A BPE token is its bytes, special tokens their text (as Hugging Face's decode).
    pub fn decode_piece(&self, prev: u32, token: u32) -> &[u8] {
        if let Some(b) = &self.bpe {
            return b.raw(token);
        }
        let Some(p) = self.pieces.get(token as usize) else {
            return b"";
        };
        if let Some(b) = parse_byte_piece(p) {
            // A byte-level dummy prefix is a lone space token right after BOS.
            if self.add_space_prefix && prev == self.bos && b == b' ' {
                return b"";
            }
            return &BYTES[b as usize..b as usize + 1];
        }
        if matches!(
            self.types.get(token as usize),
            Some(&TYPE_CONTROL) | Some(&TYPE_UNKNOWN)
        ) {
            return b"";
        }
        if self.add_space_prefix && prev == self.bos && p.first() == Some(&b' ') {
            return &p[1..];
        }
        p
    }

    /// Decodes a token sequence to text (invalid UTF-8 is replaced, not an error).
    pub fn decode(&self, tokens: &[u32]) -> String {
        let mut out = Vec::new();
        let mut prev = self.bos;
        for &t in tokens {
            out.extend_from_slice(self.decode_piece(prev, t));
            prev = t;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// An array of `n` values, one per token, if present.
fn per_token<T>(
    g: &Gguf,
    file: &str,
    key: &str,
    n: usize,
    what: &str,
    f: impl Fn(&Value) -> T,
) -> Result<Option<Vec<T>>> {
    match g.get(key) {
        Some(Value::Array(_, v)) if v.len() == n => Ok(Some(v.iter().map(f).collect())),
        Some(_) => Err(Error::format(
            file,
            key,
            format!("must be an array of {n} {what}, one per token"),
        )),
        None => Ok(None),
    }
}

/// The BPE half of `tokenizer.ggml.*`: merges and the pre-tokenizer's name.
fn bpe_from_gguf(g: &Gguf, file: &str, pieces: &[Vec<u8>], types: &[i32]) -> Result<Bpe> {
    let merges = match g.get("tokenizer.ggml.merges") {
        Some(Value::Array(ValueType::String, v)) => v
            .iter()
            .map(|m| m.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => {
            return Err(Error::format(
                file,
                "tokenizer.ggml.merges",
                "missing or not an array of strings (a BPE vocabulary needs its merges)",
            ))
        }
    };
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::format(
                file,
                "tokenizer.ggml.pre",
                "missing: a BPE vocabulary needs its pre-tokenizer's name",
            )
        })?;
    Bpe::new(pieces, types, merges, pre, file)
}

struct ByteReader<'a> {
    b: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos + n).ok_or_else(|| {
            Error::format(
                self.file,
                field,
                format!("truncated at byte {} (needs {n})", self.pos),
            )
        })?;
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, field)?.try_into().unwrap()))
    }
    fn bytes(&mut self, field: &str) -> Result<&'a [u8]> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }
    fn string(&mut self, field: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(self.bytes(field)?).into_owned())
    }
}

static BYTES: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

/// `<0xNN>` → NN.
fn parse_byte_piece(p: &[u8]) -> Option<u8> {
    if p.len() == 6 && p.starts_with(b"<0x") && p[5] == b'>' {
        u8::from_str_radix(std::str::from_utf8(&p[3..5]).ok()?, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Tokenizer {
        let mut t = Tokenizer::byte_level(259);
        for (p, s) in [
            (" ", -1.0),
            ("h", -1.0),
            ("i", -1.0),
            ("hi", -0.5),
            (" hi", -0.2),
        ] {
            t.pieces.push(p.as_bytes().to_vec());
            t.scores.push(s);
            t.types.push(TYPE_NORMAL);
        }
        Tokenizer::new(t.pieces, t.scores, t.types, 1, 2)
    }

    #[test]
    fn merges_by_best_score_and_falls_back_to_bytes() {
        let t = toy();
        let ids = t.encode("hi\u{e9}", true, false).unwrap();
        // " hi" merged, then é as two byte tokens.
        assert_eq!(ids, vec![1, 263, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&ids), "hi\u{e9}");
        assert_eq!(t.encode("", true, true).unwrap(), vec![1, 2]);
    }

    #[test]
    fn byte_level_round_trips_any_text() {
        let t = Tokenizer::byte_level(300);
        let s = "Grüße, 世界!\n\ttab";
        let ids = t.encode(s, true, false).unwrap();
        assert_eq!(ids.len(), 1 + 1 + s.len());
        assert_eq!(t.decode(&ids), s);
    }
}
