//! Where things live on the GPU: matrices split into bindings, KV cache sizes, memory accounting.

use crate::dtype::WType;
use crate::kv::{KvConfig, KvType};
use crate::model::{Class, Config};
use crate::quant::QMatrix;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// GPU bytes by category, summed from the buffers actually created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuMemory {
    pub weights_by_class: BTreeMap<Class, u64>,
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
    pub staging: u64,
    pub total: u64,
}

/// Rows `row0..row0 + rows` of a matrix in their own storage bindings.
#[derive(Clone)]
pub(super) struct Chunk {
    pub words: wgpu::Buffer,
    pub scales: wgpu::Buffer,
    pub mins: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
}

/// A weight matrix on the GPU: one chunk, or several when it exceeds the storage binding limit.
#[derive(Clone)]
pub(super) struct GpuMatrix {
    pub chunks: Vec<Chunk>,
    pub cols: usize,
    pub block: usize,
    pub ty: WType,
}

/// A matrix's storage type and size, all the chunking needs.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    pub ty: WType,
    pub rows: usize,
    pub cols: usize,
    pub block: usize,
}

impl Shape {
    /// Bytes of one row of codes (K-quants: whole super-blocks, their scales inside).
    pub fn row_bytes(&self) -> usize {
        if self.ty.is_k() {
            self.ty.words(self.cols) * 4
        } else {
            self.cols * self.ty.code_bits() / 8
        }
    }

    pub fn of(m: &QMatrix) -> Shape {
        Shape {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            block: m.block,
        }
    }
}

/// Rows per binding for a matrix, so every chunk fits `max_binding` bytes and starts on a whole word of
/// codes and of scales. `None` when not even the smallest such group of rows fits.
pub(super) fn rows_per_chunk(m: Shape, max_binding: u64) -> Option<usize> {
    let bits = m.ty.code_bits();
    let row_bytes = m.row_bytes() as u64;
    let total = row_bytes * m.rows as u64;
    if total.div_ceil(4) * 4 <= max_binding {
        return Some(m.rows);
    }
    // Rows per chunk must be even when a row is half a word of codes (odd f16 row) or holds an odd
    // number of blocks (two f16 scales per word).
    let blocks = if m.ty.is_quantized() {
        m.cols / m.block
    } else {
        0
    };
    let step = if (!m.ty.is_k() && !(m.cols * bits).is_multiple_of(32)) || blocks % 2 == 1 {
        2
    } else {
        1
    };
    let n = (max_binding / row_bytes) as usize / step * step;
    (n > 0).then_some(n)
}

/// Complete kivi4 key groups kept at once: the window's ring, or every group of the context.
pub(super) fn kivi_ring(kv: &KvConfig, c: &Config) -> usize {
    match kv.window {
        Some(w) => (w - kv.sinks).div_ceil(kv.group) + 1,
        None => (c.seq_len - kv.sinks).div_ceil(kv.group) + 1,
    }
}

/// Words of one layer's kivi4 key buffer (layout in kvformat.wgsl).
fn kivi_key_words(kv: &KvConfig, c: &Config) -> usize {
    let n = c.kv_dim();
    (kv.sinks + kv.group) * n / 2 + kivi_ring(kv, c) * n * (kv.group / 8 + 1)
}

/// Bytes of one layer's key and of its value cache buffer (a slot row per position held, or kivi4's
/// key layout).
pub(super) fn kv_layer_bytes(kv: &KvConfig, c: &Config) -> (u64, u64) {
    let cap = kv.window.unwrap_or(c.seq_len);
    let k = if kv.k == KvType::Kivi4 {
        kivi_key_words(kv, c)
    } else {
        cap * kv.k.row_type().0.slot_words(c.kv_dim())
    };
    let v = cap * kv.v.row_type().0.slot_words(c.kv_dim());
    (k as u64 * 4, v as u64 * 4)
}

/// A buffer of at least `size` bytes in whole words (buffers must not be empty).
pub(super) fn buffer(
    dev: &wgpu::Device,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(4).div_ceil(4) * 4,
        usage,
        mapped_at_creation: false,
    })
}
