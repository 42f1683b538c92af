//! The packed format of a cache entry, the one authority on it: the seal (magic, format, key,
//! length, SHA-256) around a payload, the keys, and each component's tensors and tokenizer as bytes.

use super::{Component, Key, FORMAT};
use crate::config::TensorId;
use crate::model::Tensor;
use crate::precision::WeightConfig;
use crate::quant::{QMatrix, WType};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use sha2::{Digest, Sha256};

const MAGIC: [u8; 4] = *b"NCMP";
const HEADER: usize = 4 + 4 + 32 + 8 + 32;

/// Wraps `payload` as a cache entry: magic, format, its key, length and SHA-256, then the payload.
pub fn seal(key: &Key, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of an entry read back for `key`, or why it does not verify.
pub fn unseal<'a>(key: &Key, bytes: &'a [u8]) -> std::result::Result<&'a [u8], String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "truncated: {} bytes, the header alone is {HEADER}",
            bytes.len()
        ));
    }
    if bytes[..4] != MAGIC {
        return Err("bad magic".into());
    }
    let format = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    if format != FORMAT {
        return Err(format!("format {format}, this build reads {FORMAT}"));
    }
    if bytes[8..40] != key.0 {
        return Err("the entry holds another key".into());
    }
    let len = u64::from_le_bytes(bytes[40..48].try_into().unwrap());
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "truncated: payload of {} bytes, the header says {len}",
            payload.len()
        ));
    }
    if Sha256::digest(payload)[..] != bytes[48..80] {
        return Err("payload hash mismatch".into());
    }
    Ok(payload)
}

/// The payload of an entry [`unseal`] already accepted (verifying is a SHA-256 over the whole entry:
/// once per read is enough).
pub(super) fn verified_payload(entry: &[u8]) -> &[u8] {
    &entry[HEADER..]
}

pub(super) fn parse_key(hex: &str) -> Result<Key> {
    let bad = || {
        Error::format(
            "cache manifest",
            "component key",
            format!("{hex:?} is not 64 hex digits"),
        )
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(Key(k))
}

/// The key of `comp`: its source tensors (as loaded, before precision is applied) and the type and
/// block each will have.
pub(super) fn component_key(
    comp: Component,
    tensors: &[(TensorId, Tensor)],
    tokenizer: Option<&Tokenizer>,
    cfg: &WeightConfig,
) -> Key {
    let mut h = Sha256::new();
    h.update(b"nibble component");
    h.update(FORMAT.to_le_bytes());
    h.update(comp.name().as_bytes());
    if comp == Component::Tokenizer {
        if let Some(t) = tokenizer {
            let mut v = Vec::new();
            encode_tokenizer(&mut v, t);
            h.update(&v);
        }
    }
    for (id, t) in tensors {
        h.update(id.gguf_name().as_bytes());
        match t {
            Tensor::Norm(n) => h.update(bytemuck::cast_slice::<f32, u8>(n)),
            Tensor::Matrix(q) => {
                let (ty, block) = cfg.target(*id, q);
                h.update([ty.code() as u8]);
                h.update((block as u64).to_le_bytes());
                matrix_bytes(q, &mut |b| h.update(b));
            }
        }
    }
    Key(h.finalize().into())
}

/// A matrix as bytes: type, block, shape, then its planar arrays as stored.
pub(super) fn matrix_bytes(q: &QMatrix, put: &mut dyn FnMut(&[u8])) {
    put(&[q.ty.code() as u8]);
    for v in [
        q.block,
        q.rows,
        q.cols,
        q.words.len(),
        q.scales.len(),
        q.mins.len(),
    ] {
        put(&(v as u64).to_le_bytes());
    }
    put(bytemuck::cast_slice(&q.words));
    put(bytemuck::cast_slice(&q.scales));
    put(bytemuck::cast_slice(&q.mins));
}

pub(super) fn encode_tokenizer(v: &mut Vec<u8>, t: &Tokenizer) {
    t.to_bytes(v);
}

/// The packed payload of `comp`: its final tensors, or the tokenizer.
pub(super) fn encode_component(
    comp: Component,
    tensors: &[(TensorId, Tensor)],
    tokenizer: Option<&Tokenizer>,
) -> Vec<u8> {
    let mut v = Vec::new();
    if comp == Component::Tokenizer {
        if let Some(t) = tokenizer {
            encode_tokenizer(&mut v, t);
        }
        return v;
    }
    for (_, t) in tensors {
        match t {
            Tensor::Norm(n) => {
                v.push(255);
                v.extend_from_slice(&(n.len() as u64).to_le_bytes());
                v.extend_from_slice(bytemuck::cast_slice(n));
            }
            Tensor::Matrix(q) => matrix_bytes(q, &mut |b| v.extend_from_slice(b)),
        }
    }
    v
}

/// Reads a verified payload; `file` names the entry in errors (a verified entry that does not parse
/// means a bug or a format change without a FORMAT bump).
pub(super) struct Reader<'a> {
    pub b: &'a [u8],
    pub file: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::format(
                self.file,
                field,
                format!("needs {n} bytes, {} left", self.b.len()),
            ));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, f: &str) -> Result<u8> {
        Ok(self.take(1, f)?[0])
    }
    fn u64(&mut self, f: &str) -> Result<usize> {
        let v = u64::from_le_bytes(self.take(8, f)?.try_into().unwrap());
        usize::try_from(v).map_err(|_| Error::format(self.file, f, "does not fit this platform"))
    }
    fn array<T: bytemuck::Pod>(&mut self, n: usize, f: &str) -> Result<Vec<T>> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::format(self.file, f, "length overflows"))?;
        Ok(bytemuck::pod_collect_to_vec(self.take(bytes, f)?))
    }
}

pub(super) fn decode_tensor(rd: &mut Reader, name: &str) -> Result<Tensor> {
    let code = rd.u8(name)?;
    if code == 255 {
        let n = rd.u64(name)?;
        return Ok(Tensor::Norm(rd.array::<f32>(n, name)?));
    }
    let ty = WType::from_code(code as u32)
        .ok_or_else(|| Error::format(rd.file, name, format!("unknown type code {code}")))?;
    let (block, rows, cols) = (rd.u64(name)?, rd.u64(name)?, rd.u64(name)?);
    let (nw, ns, nm) = (rd.u64(name)?, rd.u64(name)?, rd.u64(name)?);
    let want_words = (rows as u128 * cols as u128 * ty.code_bits() as u128).div_ceil(32);
    if nw as u128 != want_words {
        return Err(Error::format(
            rd.file,
            name,
            format!("{nw} code words for a {rows}x{cols} {} matrix", ty.name()),
        ));
    }
    Ok(Tensor::Matrix(QMatrix {
        ty,
        block,
        rows,
        cols,
        words: rd.array::<u32>(nw, name)?,
        scales: rd.array::<half::f16>(ns, name)?,
        mins: rd.array::<half::f16>(nm, name)?,
    }))
}

pub(super) fn decode_tokenizer(rd: &mut Reader) -> Result<Tokenizer> {
    let t = Tokenizer::from_bytes(rd.b, rd.file)?;
    rd.b = &[];
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    /// The packed layout is pinned to its FORMAT: payloads of the built-in model's vocabulary and
    /// of a q4_0 attention component, hashed. A layout change that keeps FORMAT fails here (bump
    /// FORMAT, so old entries miss instead of failing to parse, and pin the new hash).
    #[test]
    fn the_packed_layout_is_pinned_to_its_format() {
        let m = Model::builtin();
        let (q4, _) = m
            .with_weights(
                &crate::measure::RunConfig::parse("weights=q4_0")
                    .unwrap()
                    .weights,
            )
            .unwrap();
        let comp = Component::Attention(0);
        let tensors: Vec<(TensorId, Tensor)> = comp
            .tensors(&q4.config, !q4.tied())
            .into_iter()
            .map(|id| (id, q4.weights.tensor(id)))
            .collect();
        let mut h = Sha256::new();
        h.update(encode_component(
            Component::Tokenizer,
            &[],
            m.tokenizer.as_ref(),
        ));
        h.update(encode_component(comp, &tensors, None));
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            (FORMAT, got.as_str()),
            (
                4,
                "6e99952b4f617bd75f4ee333c9937a84881243826058405c8c298840a25041d9"
            )
        );
    }
}
