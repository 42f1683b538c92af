//! GGUF v3 (also v2) reader and writer.
//!
//! Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
//! key/values, the tensor-info table, padding to `general.alignment` (default 32), then the tensor data.
//! Tensor offsets are relative to the start of the data section. ggml lists dimensions fastest first, so a
//! row-major `[rows, cols]` matrix has `dims = [cols, rows]`.
//!
//! The parser works on a byte slice and checks every length against what is left before it allocates, so
//! a corrupt count can never ask for absurd memory.

use crate::error::{Error, Result};
use crate::quant::GgmlType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata value types, with GGUF's type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Smallest encoded size of one value, used to bound array counts before allocating.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type and elements; every element has that type.
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type as i128, so callers need not care which width a writer chose.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A short human-readable rendering; long arrays are elided.
    pub fn display_short(&self) -> String {
        match self {
            Value::String(s) => format!("{s:?}"),
            Value::Array(t, items) => {
                let head: Vec<String> = items.iter().take(4).map(|v| v.display_short()).collect();
                let more = if items.len() > 4 { ", ..." } else { "" };
                format!("[{t:?}; {}] [{}{more}]", items.len(), head.join(", "))
            }
            Value::Bool(b) => b.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            other => other.as_int().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: fastest-varying dimension first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn n_bytes(&self) -> u64 {
        self.n_elements() / self.ty.block_len() as u64 * self.ty.block_bytes() as u64
    }
}

/// A parsed GGUF file that borrows its tensor data from the caller's bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
    data: &'a [u8],
}

impl<'a> Gguf<'a> {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor; bounds were checked at parse time.
    pub fn tensor_data(&self, info: &TensorInfo) -> &'a [u8] {
        let start = info.offset as usize;
        &self.data[start..start + info.n_bytes() as usize]
    }

    /// Parses a whole GGUF file held in memory. `file` names it in errors.
    pub fn parse(bytes: &'a [u8], file: &str) -> Result<Gguf<'a>> {
        Self::parse_in(bytes, file, bytes.len() as u64)
    }

    /// Parses the header (metadata and tensor table) from the first bytes of a file of `total` bytes
    /// still arriving: `None` until `prefix` holds the whole header. Counts and tensor ranges are
    /// checked against `total`. The result has no tensor data: read tensors from the stream at
    /// `data_offset + offset`, never with [`Gguf::tensor_data`].
    pub fn parse_header(prefix: &[u8], file: &str, total: u64) -> Result<Option<Gguf<'static>>> {
        match Gguf::parse_in(prefix, file, total) {
            Ok(g) => Ok(Some(Gguf {
                version: g.version,
                metadata: g.metadata,
                tensors: g.tensors,
                alignment: g.alignment,
                data_offset: g.data_offset,
                data: &[],
            })),
            // The header runs past what has arrived (but not past the file): wait for more.
            Err(Error::Format { msg, .. }) if msg == SHORT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `bytes` is the whole file when `total` is its length, else a prefix (header only).
    fn parse_in(bytes: &'a [u8], file: &str, total: u64) -> Result<Gguf<'a>> {
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            file,
            total,
        };
        let (version, n_tensors, n_kv) = r.preamble()?;
        let mut metadata = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            metadata.push(r.metadata_entry(i)?);
        }
        let alignment = alignment_of(&metadata, file)?;
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            tensors.push(r.tensor_info(i, alignment)?);
        }
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let data = data_section(bytes, file, total, data_offset, &tensors)?;
        let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::format(
                file,
                format!("tensor {:?}", w[0]),
                "appears twice",
            ));
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            data,
        })
    }
}

/// How a streamed header parse tells "not arrived yet" from a truncated file.
mod write;

pub use write::{write, write_to, TensorOut};

const SHORT: &str = "not arrived yet";

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
    /// The file's length; `buf` may be a prefix of it.
    total: u64,
}

impl<'a> Reader<'a> {
    /// Bytes left in the file (not only in `buf`), which bounds every count.
    fn remaining(&self) -> usize {
        (self.total as usize).saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if n <= self.remaining() && self.pos + n > self.buf.len() {
            return Err(Error::format(self.file, field, SHORT));
        }
        if n > self.remaining() {
            return Err(Error::format(
                self.file,
                field,
                format!(
                    "file is truncated at byte {} (needs {n} more bytes, {} left)",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn check_count(&self, count: u64, min_size: u64, field: &str) -> Result<()> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(Error::format(
                self.file,
                field,
                format!(
                    "count {count} cannot fit in the {} bytes left: truncated or corrupt",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, field)?.try_into().unwrap()))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, field)?.try_into().unwrap()))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.u64(field)?;
        self.check_count(len, 1, field)?;
        let bytes = self.take(len as usize, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::format(self.file, field, "string is not valid UTF-8"))
    }

    fn value(&mut self, ty: ValueType, field: &str, depth: u32) -> Result<Value> {
        macro_rules! num {
            ($t:ty, $v:ident) => {{
                let b = self.take(std::mem::size_of::<$t>(), field)?;
                Value::$v(<$t>::from_le_bytes(b.try_into().unwrap()))
            }};
        }
        Ok(match ty {
            ValueType::U8 => num!(u8, U8),
            ValueType::I8 => num!(i8, I8),
            ValueType::U16 => num!(u16, U16),
            ValueType::I16 => num!(i16, I16),
            ValueType::U32 => num!(u32, U32),
            ValueType::I32 => num!(i32, I32),
            ValueType::F32 => num!(f32, F32),
            ValueType::U64 => num!(u64, U64),
            ValueType::I64 => num!(i64, I64),
            ValueType::F64 => num!(f64, F64),
            ValueType::Bool => match self.take(1, field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::format(self.file, field, format!("bool byte is {b}"))),
            },
            ValueType::String => Value::String(self.string(field)?),
            ValueType::Array => {
                if depth > 8 {
                    return Err(Error::format(self.file, field, "arrays nested too deeply"));
                }
                let et = self.u32(field)?;
                let et = ValueType::from_u32(et).ok_or_else(|| {
                    Error::format(self.file, field, format!("unknown array element type {et}"))
                })?;
                let n = self.u64(field)?;
                self.check_count(n, et.min_size(), field)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(et, field, depth + 1)?);
                }
                Value::Array(et, items)
            }
        })
    }
}

impl Reader<'_> {
    /// Magic, version and the two counts, each count bounded by the bytes the file can hold.
    fn preamble(&mut self) -> Result<(u32, u64, u64)> {
        let file = self.file;
        let r = self;
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::format(
                file,
                "magic",
                format!("expected \"GGUF\", found {magic:02x?}: not a GGUF file"),
            ));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(
                file,
                "version",
                format!("GGUF version {version} is not supported (nibble reads versions 2 and 3)"),
            ));
        }
        let n_tensors = r.u64("tensor_count")?;
        let n_kv = r.u64("metadata_kv_count")?;
        // Each key/value takes at least 12 bytes and each tensor info at least 24.
        r.check_count(n_kv, 12, "metadata_kv_count")?;
        r.check_count(n_tensors, 24, "tensor_count")?;

        Ok((version, n_tensors, n_kv))
    }

    /// Metadata entry `i`: its key and typed value.
    fn metadata_entry(&mut self, i: u64) -> Result<(String, Value)> {
        let file = self.file;
        let r = self;
        let key = r.string(&format!("metadata[{i}].key"))?;
        let field = format!("metadata {key:?}");
        let ty = r.u32(&field)?;
        let ty = ValueType::from_u32(ty)
            .ok_or_else(|| Error::format(file, &field, format!("unknown value type {ty}")))?;
        let value = r.value(ty, &field, 0)?;
        Ok((key, value))
    }

    /// Tensor info `i`, its element and byte counts checked for overflow and whole blocks.
    fn tensor_info(&mut self, i: u64, alignment: u64) -> Result<TensorInfo> {
        let file = self.file;
        let r = self;
        let name = r.string(&format!("tensor_info[{i}].name"))?;
        let field = format!("tensor {name:?}");
        let n_dims = r.u32(&format!("{field}.n_dims"))?;
        if n_dims == 0 || n_dims > 4 {
            return Err(Error::format(
                file,
                format!("{field}.n_dims"),
                format!("{n_dims} dimensions (must be 1 to 4)"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&format!("{field}.dims[{d}]"))?);
        }
        let ty_id = r.u32(&format!("{field}.type"))?;
        let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
            Error::format(
                file,
                format!("{field}.type"),
                format!(
                    "unsupported tensor type {} ({ty_id}); nibble reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K and IQ4_NL",
                    crate::quant::ggml_type_name(ty_id)
                ),
            )
        })?;
        let offset = r.u64(&format!("{field}.offset"))?;
        // Element count must not overflow and must fill whole blocks.
        let mut n: u64 = 1;
        for &d in &dims {
            if d == 0 {
                return Err(Error::format(
                    file,
                    format!("{field}.dims"),
                    "a dimension is 0",
                ));
            }
            n = n.checked_mul(d).ok_or_else(|| {
                Error::format(file, format!("{field}.dims"), format!("{dims:?} overflows"))
            })?;
        }
        // The byte size must not overflow either; after this, n_bytes() is safe.
        if (n / ty.block_len() as u64)
            .checked_mul(ty.block_bytes() as u64)
            .is_none()
        {
            return Err(Error::format(
                file,
                format!("{field}.dims"),
                format!("{dims:?} is too large"),
            ));
        }
        if dims[0] % ty.block_len() as u64 != 0 {
            return Err(Error::format(
                file,
                format!("{field}.dims"),
                format!(
                    "row length {} is not a multiple of the {:?} block size {}",
                    dims[0],
                    ty,
                    ty.block_len()
                ),
            ));
        }
        if offset % alignment != 0 {
            return Err(Error::format(
                file,
                format!("{field}.offset"),
                format!("offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
        })
    }
}

/// `general.alignment`, or the default.
fn alignment_of(metadata: &[(String, Value)], file: &str) -> Result<u64> {
    Ok(
        match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_int() {
                Some(a) if a > 0 && a <= 1 << 20 && (a as u64).is_power_of_two() => a as u64,
                _ => {
                    return Err(Error::format(
                        file,
                        "general.alignment",
                        format!(
                            "must be a power of two up to 1 MiB, found {}",
                            v.display_short()
                        ),
                    ))
                }
            },
        },
    )
}

/// The tensor data of a whole file (empty for a header prefix), with every tensor's range checked
/// against the file's length.
fn data_section<'a>(
    bytes: &'a [u8],
    file: &str,
    total: u64,
    data_offset: u64,
    tensors: &[TensorInfo],
) -> Result<&'a [u8]> {
    let data_len = total.saturating_sub(data_offset);
    let data: &[u8] = if (bytes.len() as u64) < total {
        // A prefix: the ranges below are checked against the file's length instead.
        &[]
    } else if data_offset as usize <= bytes.len() {
        &bytes[data_offset as usize..]
    } else if tensors.is_empty() {
        &[]
    } else {
        return Err(Error::format(
            file,
            "tensor data",
            format!(
                "file is truncated: the data section starts at byte {data_offset} but the file has {} bytes",
                bytes.len()
            ),
        ));
    };
    for t in tensors {
        let end = t.offset.checked_add(t.n_bytes());
        if end.is_none_or(|e| e > data_len) {
            return Err(Error::format(
                file,
                format!("tensor {:?}", t.name),
                format!(
                    "data [{}..{}) runs past the end of the file (data section is {} bytes): truncated or corrupt",
                    t.offset,
                    t.offset.saturating_add(t.n_bytes()),
                    data_len
                ),
            ));
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let md = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("a.u8".into(), Value::U8(7)),
            ("a.i8".into(), Value::I8(-7)),
            ("a.u16".into(), Value::U16(700)),
            ("a.i16".into(), Value::I16(-700)),
            ("a.u32".into(), Value::U32(70000)),
            ("a.i32".into(), Value::I32(-70000)),
            ("a.f32".into(), Value::F32(1.5)),
            ("a.bool".into(), Value::Bool(true)),
            ("a.u64".into(), Value::U64(1 << 40)),
            ("a.i64".into(), Value::I64(-(1 << 40))),
            ("a.f64".into(), Value::F64(-2.25)),
            (
                "a.arr".into(),
                Value::Array(
                    ValueType::Array,
                    vec![Value::Array(
                        ValueType::String,
                        vec![Value::String("x".into())],
                    )],
                ),
            ),
            ("general.alignment".into(), Value::U32(64)),
        ];
        let d1: Vec<u8> = (0..4 * 8).map(|i| i as u8).collect();
        let d2: Vec<u8> = vec![9u8; 18 * 2];
        write(
            &md,
            &[
                TensorOut {
                    name: "t1".into(),
                    dims: vec![4, 2],
                    ty: GgmlType::F32,
                    data: &d1,
                },
                TensorOut {
                    name: "t2".into(),
                    dims: vec![32, 2],
                    ty: GgmlType::Q4_0,
                    data: &d2,
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_all_value_types_and_alignment() {
        let bytes = sample();
        let g = Gguf::parse(&bytes, "x.gguf").unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 64);
        assert_eq!(g.data_offset % 64, 0);
        assert_eq!(g.metadata.len(), 14);
        assert_eq!(g.get("a.i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(g.get("a.f64"), Some(&Value::F64(-2.25)));
        let t2 = g.tensor("t2").unwrap();
        assert_eq!(t2.offset % 64, 0);
        assert_eq!(g.tensor_data(t2), &[9u8; 36][..]);
        assert_eq!(g.tensor_data(g.tensor("t1").unwrap())[5], 5);
        // Re-encoding what was parsed gives the same bytes.
        let md = g.metadata.clone();
        let again = write(
            &md,
            &g.tensors
                .iter()
                .map(|t| TensorOut {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ty,
                    data: g.tensor_data(t),
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn every_truncation_is_a_clean_error() {
        let bytes = sample();
        for n in 0..bytes.len() {
            // Cutting only trailing padding of the last tensor is impossible here: its data ends the file.
            let err = Gguf::parse(&bytes[..n], "cut.gguf")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("cut.gguf: "), "{n}: {err}");
        }
    }

    #[test]
    fn bad_magic_version_and_type() {
        let mut b = sample();
        b[0] = b'X';
        let e = Gguf::parse(&b, "m.gguf").unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        let mut b = sample();
        b[4] = 9;
        let e = Gguf::parse(&b, "v.gguf").unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        // Patch t1's type (F32 = 0) to IQ2_XXS (16), which nibble does not read.
        let b = sample();
        let g = Gguf::parse(&b, "t").unwrap();
        drop(g);
        let needle = [b"t1".as_slice()].concat();
        let pos = b.windows(2).position(|w| w == needle.as_slice()).unwrap();
        let ty_pos = pos + 2 + 4 + 16;
        let mut b2 = b.clone();
        b2[ty_pos] = 16;
        let e = Gguf::parse(&b2, "t.gguf").unwrap_err().to_string();
        assert!(
            e.contains("tensor \"t1\".type") && e.contains("IQ2_XXS"),
            "{e}"
        );
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let e = Gguf::parse(&b, "h.gguf").unwrap_err().to_string();
        assert!(e.contains("tensor_count"), "{e}");
    }
}
