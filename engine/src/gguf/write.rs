//! Writing GGUF v3: metadata, the tensor-info table and aligned tensor data.

use super::{TensorInfo, Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// A tensor to write: name, ggml dims (fastest first), type and its encoded bytes.
pub struct TensorOut<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: &'a [u8],
}

/// Encodes a whole GGUF v3 file in memory.
pub fn write(metadata: &[(String, Value)], tensors: &[TensorOut]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_to(&mut out, metadata, tensors)?;
    Ok(out)
}

/// Streams a GGUF v3 file to `w`. `general.alignment` in `metadata`, if present, sets the alignment.
pub fn write_to(
    w: &mut impl std::io::Write,
    metadata: &[(String, Value)],
    tensors: &[TensorOut],
) -> Result<()> {
    let alignment = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_int())
        .map(|a| a as u64)
        .unwrap_or(DEFAULT_ALIGNMENT);
    if !alignment.is_power_of_two() {
        return Err(Error::Invalid(format!(
            "general.alignment {alignment} is not a power of two"
        )));
    }
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
        put_value(&mut out, v)?;
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let info = TensorInfo {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            offset,
        };
        if info.n_bytes() != t.data.len() as u64 {
            return Err(Error::Invalid(format!(
                "tensor {:?}: {} data bytes for dims {:?} of type {:?} (expected {})",
                t.name,
                t.data.len(),
                t.dims,
                t.ty,
                info.n_bytes()
            )));
        }
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(t.ty as u32).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len() as u64).div_ceil(alignment) * alignment;
    }
    let data_start = (out.len() as u64).div_ceil(alignment) * alignment;
    out.resize(data_start as usize, 0);
    let io = |e| Error::io("<gguf output>", e);
    w.write_all(&out).map_err(io)?;
    // Tensor data goes straight to the writer so a multi-GB model is never copied whole.
    let mut written = 0u64;
    for (t, off) in tensors.iter().zip(offsets) {
        let pad = vec![0u8; (off - written) as usize];
        w.write_all(&pad).map_err(io)?;
        w.write_all(t.data).map_err(io)?;
        written = off + t.data.len() as u64;
    }
    Ok(())
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(et, items) => {
            out.extend_from_slice(&(*et as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                if it.value_type() != *et {
                    return Err(Error::Invalid(format!(
                        "array of {et:?} holds a {:?}",
                        it.value_type()
                    )));
                }
                put_value(out, it)?;
            }
        }
    }
    Ok(())
}
