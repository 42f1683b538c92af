//! Storage types: the one authority on their codes, block sizes and bytes.
//!
//! Three enums, each with its table: [`GgmlType`] (ggml's type ids, as GGUF files number them),
//! [`WType`] (nibble's weight element types; its [`WType::code`] is the number the component cache and
//! the GPU kernels use) and [`KvType`] (the KV cache's row types). The WGSL constants the kernels switch
//! on are generated from these tables ([`wgsl_constants`]) and prepended to every shader, so no number is
//! typed twice.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Elements per block of every quantized type nibble reads from ggml, and of the KV cache's blocks.
pub const QK: usize = 32;

/// Elements per super-block of ggml's K-quants (Q4_K, Q5_K, Q6_K).
pub const QK_K: usize = 256;

/// Tensor types as ggml numbers them in GGUF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    /// Read and re-stored without loss (see [`GgmlType::wtype`]): llama-quantize writes them where
    /// a K-quant does not fit a row (Q4_K_M and Q5_K_M files of models whose width is not a
    /// multiple of 256, such as Qwen2.5-0.5B and SmolLM2).
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    /// Block-32 codes into a fixed table of 16 values in -127..=113: Q8_0 with the table's values
    /// as codes and the same scale holds it exactly (see [`GgmlType::wtype`]).
    IQ4_NL = 20,
    /// f32's upper 16 bits; widened to F32 exactly (see [`GgmlType::wtype`]).
    BF16 = 30,
}

impl GgmlType {
    pub const ALL: [GgmlType; 12] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::BF16,
    ];

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u32 == id)
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
            _ => QK,
        }
    }

    /// Byte offsets in a block of its f16 scales (and mins): `d` (and `dmin` or `m`).
    pub fn scale_fields(self) -> &'static [(usize, &'static str)] {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => &[(0, "d")],
            GgmlType::Q4_1 | GgmlType::Q5_1 => &[(0, "d"), (2, "m")],
            GgmlType::Q4_K | GgmlType::Q5_K => &[(0, "d"), (2, "dmin")],
            GgmlType::Q6_K => &[(208, "d")],
        }
    }

    /// Bytes per block in the GGUF encoding.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 | GgmlType::IQ4_NL => 2 + QK / 2,
            GgmlType::Q4_1 => 4 + QK / 2,
            // d (and m), 32 fifth bits, the low nibbles.
            GgmlType::Q5_0 => 2 + 4 + QK / 2,
            GgmlType::Q5_1 => 4 + 4 + QK / 2,
            GgmlType::Q8_0 => 2 + QK,
            // d, dmin, 12 bytes of 6-bit scales and mins, then the codes (and Q5_K's high bits).
            GgmlType::Q4_K => 4 + 12 + QK_K / 2,
            GgmlType::Q5_K => 4 + 12 + QK_K / 8 + QK_K / 2,
            // Low nibbles, high 2-bit pairs, 16 signed 8-bit scales, d.
            GgmlType::Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// The weight type a tensor of this type is stored as. Q5_0's values are its scale times
    /// integers in -16..=15, which Q8_0 holds exactly with the same scale; Q5_1 adds a minimum, which
    /// no 8-bit type here has, so its values are stored as F32 (each one as ggml computes it); so
    /// are BF16's, f32's upper halves (F16 would round them).
    pub fn wtype(self) -> WType {
        match self {
            GgmlType::F32 | GgmlType::Q5_1 | GgmlType::BF16 => WType::F32,
            GgmlType::F16 => WType::F16,
            GgmlType::Q4_0 => WType::Q4_0,
            GgmlType::Q4_1 => WType::Q4_1,
            GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => WType::Q8_0,
            GgmlType::Q4_K => WType::Q4_K,
            GgmlType::Q5_K => WType::Q5_K,
            GgmlType::Q6_K => WType::Q6_K,
        }
    }

    /// The type and block a tensor of this type is stored with ([`GgmlType::wtype`]).
    pub fn stored(self) -> (WType, usize) {
        let ty = self.wtype();
        (ty, ty.block_for(self.block_len()))
    }
}

/// ggml's names for type ids, so an error can say "Q4_K" instead of "12".
pub fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// A weight element type, independent of block size. The discriminant is its code in the component
/// cache and in the GPU kernels (`KIND_*` in WGSL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(non_camel_case_types)]
#[serde(rename_all = "lowercase")]
pub enum WType {
    F32 = 0,
    F16 = 1,
    Q8_0 = 2,
    Q4_0 = 3,
    Q4_1 = 4,
    /// ggml's K-quants, read from GGUF files and kept as their super-blocks (see [`WType::is_k`]).
    Q4_K = 5,
    Q5_K = 6,
    Q6_K = 7,
}

impl WType {
    pub const ALL: [WType; 8] = [
        WType::F32,
        WType::F16,
        WType::Q8_0,
        WType::Q4_0,
        WType::Q4_1,
        WType::Q4_K,
        WType::Q5_K,
        WType::Q6_K,
    ];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "q8" => WType::Q8_0,
            "q4" => WType::Q4_0,
            l => Self::ALL
                .into_iter()
                .find(|t| t.name() == l)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "unknown weight type {s:?} (expected f32, f16, q8_0, q4_0, q4_1, q4_k, q5_k \
                         or q6_k)"
                    ))
                })?,
        })
    }

    /// Elements per block when stored as this type, `block` being the one asked for: the super-block
    /// for K-quants, `block` for the other quantized types, 1 for floats.
    pub fn block_for(self, block: usize) -> usize {
        if self.is_k() {
            QK_K
        } else if self.is_quantized() {
            block
        } else {
            1
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WType::F32 => "f32",
            WType::F16 => "f16",
            WType::Q8_0 => "q8_0",
            WType::Q4_0 => "q4_0",
            WType::Q4_1 => "q4_1",
            WType::Q4_K => "q4_k",
            WType::Q5_K => "q5_k",
            WType::Q6_K => "q6_k",
        }
    }

    /// The code the cache stores and the kernels switch on.
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(c: u32) -> Option<WType> {
        Self::ALL.into_iter().find(|t| t.code() == c)
    }

    /// Block-quantized with one f16 scale (and min) per block in nibble's planar layout.
    pub fn is_quantized(self) -> bool {
        matches!(self, WType::Q8_0 | WType::Q4_0 | WType::Q4_1)
    }

    /// A K-quant: stored as ggml's 256-element super-blocks, each padded to whole u32 words, since their
    /// scales are themselves quantized inside the block.
    pub fn is_k(self) -> bool {
        matches!(self, WType::Q4_K | WType::Q5_K | WType::Q6_K)
    }

    /// u32 words holding `n` elements (a whole number of blocks) of this type.
    pub fn words(self, n: usize) -> usize {
        match self.ggml(QK_K) {
            Some(gt) if self.is_k() => n / QK_K * gt.block_bytes().div_ceil(4),
            _ => (n * self.code_bits()).div_ceil(32),
        }
    }

    /// Whether each block carries a min beside its scale (asymmetric).
    pub fn has_mins(self) -> bool {
        self == WType::Q4_1
    }

    /// The ggml type with the same layout, which exists only at block 32 for quantized types.
    pub fn ggml(self, block: usize) -> Option<GgmlType> {
        match (self, block) {
            (WType::F32, _) => Some(GgmlType::F32),
            (WType::F16, _) => Some(GgmlType::F16),
            (WType::Q8_0, QK) => Some(GgmlType::Q8_0),
            (WType::Q4_0, QK) => Some(GgmlType::Q4_0),
            (WType::Q4_1, QK) => Some(GgmlType::Q4_1),
            (WType::Q4_K, QK_K) => Some(GgmlType::Q4_K),
            (WType::Q5_K, QK_K) => Some(GgmlType::Q5_K),
            (WType::Q6_K, QK_K) => Some(GgmlType::Q6_K),
            _ => None,
        }
    }

    /// llama.cpp's `general.file_type` for a file whose matrices are mostly this type.
    pub fn llama_file_type(self) -> u32 {
        match self {
            WType::F32 => 0,
            WType::F16 => 1,
            WType::Q4_0 => 2,
            WType::Q4_1 => 3,
            WType::Q8_0 => 7,
            // The _M mixes, which are mostly this type.
            WType::Q4_K => 15,
            WType::Q5_K => 17,
            WType::Q6_K => 18,
        }
    }

    /// Bits of one element's code (or value) in the packed words.
    pub fn code_bits(self) -> usize {
        match self {
            WType::F32 => 32,
            WType::F16 => 16,
            WType::Q8_0 => 8,
            WType::Q4_0 | WType::Q4_1 => 4,
            // Codes alone; the super-block's scales come on top (see `words`).
            WType::Q4_K => 4,
            WType::Q5_K => 5,
            WType::Q6_K => 6,
        }
    }

    /// Bytes of a `rows` x `cols` matrix stored in this type at `block` (planar codes, f16 scales and
    /// mins), as `QMatrix::n_bytes` counts them.
    pub fn stored_bytes(self, rows: usize, cols: usize, block: usize) -> usize {
        let n = rows * cols;
        if self.is_k() {
            return self.words(n) * 4;
        }
        if !self.is_quantized() {
            return n * self.code_bits() / 8;
        }
        let blocks = n / block;
        n * self.code_bits() / 32 * 4 + blocks * 2 * (1 + self.has_mins() as usize)
    }

    /// u32 words of one row of `n` values stored as a GPU cache slot (kvformat.wgsl's `row_stride`):
    /// codes, then the f16 scales of its `n / 32` blocks two per word, then as many words of mins.
    pub fn slot_words(self, n: usize) -> usize {
        let scale_words = (n / QK).div_ceil(2);
        let scales = if self.is_quantized() { scale_words } else { 0 };
        let mins = if self.has_mins() { scale_words } else { 0 };
        n * self.code_bits() / 32 + scales + mins
    }

    fn wgsl_name(self) -> &'static str {
        match self {
            WType::F32 => "KIND_F32",
            WType::F16 => "KIND_F16",
            WType::Q8_0 => "KIND_Q8_0",
            WType::Q4_0 => "KIND_Q4_0",
            WType::Q4_1 => "KIND_Q4_1",
            WType::Q4_K => "KIND_Q4_K",
            WType::Q5_K => "KIND_Q5_K",
            WType::Q6_K => "KIND_Q6_K",
        }
    }
}

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    F32,
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
    Kivi4,
}

/// The GPU code of kivi4's per-channel key groups (kvformat.wgsl), the one KV row format that is not a
/// weight type.
pub const KIVI_KEYS_CODE: u32 = WType::ALL.len() as u32;

impl KvType {
    pub const ALL: [KvType; 5] = [
        KvType::F32,
        KvType::F16,
        KvType::Q8_0,
        KvType::Q4_0,
        KvType::Kivi4,
    ];

    pub fn parse(s: &str) -> Result<KvType> {
        let l = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == l)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown KV type {s:?} (expected f32, f16, q8_0, q4_0 or kivi4)"
                ))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
            KvType::Kivi4 => "kivi4",
        }
    }

    /// The row format of a per-token store of this type (kivi4 values are per-token asymmetric 4-bit).
    pub fn row_type(self) -> (WType, usize) {
        match self {
            KvType::F32 => (WType::F32, 1),
            KvType::F16 => (WType::F16, 1),
            KvType::Q8_0 => (WType::Q8_0, QK),
            KvType::Q4_0 => (WType::Q4_0, QK),
            KvType::Kivi4 => (WType::Q4_1, QK),
        }
    }

    /// Bytes of one token's row of `dim` values in a per-token store (codes, f16 scales and mins).
    pub fn row_bytes(self, dim: usize) -> usize {
        let (ty, block) = self.row_type();
        let per_block = if ty.is_quantized() {
            2 + 2 * ty.has_mins() as usize
        } else {
            0
        };
        dim * ty.code_bits() / 8 + dim / block * per_block
    }

    /// The GPU row code of this type's values (kvformat.wgsl).
    pub fn value_code(self) -> u32 {
        self.row_type().0.code()
    }

    /// The GPU row code of this type's keys: kivi4 keys are per-channel groups, unlike its values.
    pub fn key_code(self) -> u32 {
        match self {
            KvType::Kivi4 => KIVI_KEYS_CODE,
            t => t.value_code(),
        }
    }
}

/// WGSL declarations of every code above, prepended to each shader module after the activation alias.
pub fn wgsl_constants() -> String {
    let mut s = String::from("// Generated from engine/src/dtype.rs: storage type codes.\n");
    for t in WType::ALL {
        s += &format!("const {}: u32 = {}u;\n", t.wgsl_name(), t.code());
    }
    s += &format!("const KIND_KIVI_KEYS: u32 = {KIVI_KEYS_CODE}u;\n");
    s += &format!("const QK: u32 = {QK}u;\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for t in WType::ALL {
            assert_eq!(WType::from_code(t.code()), Some(t));
            assert_eq!(WType::parse(t.name()).unwrap(), t);
        }
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t as u32), Some(t));
            assert_eq!(ggml_type_name(t as u32), format!("{t:?}"));
        }
        assert!(WType::from_code(KIVI_KEYS_CODE).is_none());
    }

    #[test]
    fn kv_row_bytes_match_ggml_blocks() {
        // A KV row in a per-token store is laid out as the ggml block of its row type.
        assert_eq!(KvType::Q8_0.row_bytes(64), 2 * GgmlType::Q8_0.block_bytes());
        assert_eq!(KvType::Q4_0.row_bytes(64), 2 * GgmlType::Q4_0.block_bytes());
        assert_eq!(
            KvType::Kivi4.row_bytes(64),
            2 * GgmlType::Q4_1.block_bytes()
        );
        assert_eq!(KvType::F16.row_bytes(64), 128);
    }

    #[test]
    fn wgsl_constants_name_every_code() {
        let s = wgsl_constants();
        assert!(s.contains("const KIND_Q4_1: u32 = 4u;"), "{s}");
        assert!(s.contains("const KIND_KIVI_KEYS: u32 = 8u;"), "{s}");
    }
}
