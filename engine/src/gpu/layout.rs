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

/// A storage binding: a whole buffer, or the range of one that a matrix of a layer's concatenated
/// Q, K and V weights occupies (offsets aligned as the adapter requires).
#[derive(Clone)]
pub(super) struct View {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl View {
    pub fn whole(buffer: wgpu::Buffer) -> View {
        let size = buffer.size();
        View {
            buffer,
            offset: 0,
            size,
        }
    }

    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        })
    }
}

impl From<wgpu::Buffer> for View {
    fn from(b: wgpu::Buffer) -> View {
        View::whole(b)
    }
}

/// Rows `row0..row0 + rows` of a matrix in their own storage bindings.
#[derive(Clone)]
pub(super) struct Chunk {
    pub words: View,
    pub scales: View,
    pub mins: View,
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
        None => (kv.capacity(c) - kv.sinks).div_ceil(kv.group) + 1,
    }
}

/// Words of one layer's kivi4 key buffer (layout in kvformat.wgsl).
fn kivi_key_words(kv: &KvConfig, c: &Config) -> usize {
    let n = c.kv_dim();
    (kv.sinks + kv.group) * n / 2 + kivi_ring(kv, c) * n * (kv.group / 8 + 1)
}

/// Slots of a local layer's ring (`Config::swa`): its window and a pass's rows less one, since a
/// pass stores every row before any attends, and its last row's slot must not be one its first
/// row's window still reads. None where every position keeps its slot: fewer positions than that,
/// no local layers, or kivi4 keys (whose groups a ring of its own would have to follow).
pub(super) fn local_slots(kv: &KvConfig, c: &Config, max_rows: usize) -> Option<usize> {
    let slots = c.swa?.window + max_rows - 1;
    (kv.k != KvType::Kivi4 && kv.window.is_none() && slots < kv.capacity(c)).then_some(slots)
}

/// Bytes of one layer's key and of its value cache buffer (a slot row per position held, or kivi4's
/// key layout); `slots`: a local layer's ring ([`local_slots`]) instead of every position.
pub(super) fn kv_layer_bytes(kv: &KvConfig, c: &Config, slots: Option<usize>) -> (u64, u64) {
    let cap = slots.unwrap_or(kv.capacity(c));
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

/// One layer's Q, K and V weights (q4_0, q8_0, f16 or Q6_K, one width and block; or Q4_K or Q5_K, V
/// any of Q4_K, Q5_K and Q6_K as llama-quantize's mixes give it) in one buffer of codes and one of scales (none for f16 and
/// K-quants), each matrix at an offset the adapter can bind on its own, so that decode runs the three
/// products as one dispatch (`matvec4_qkv_q4c`, `matvec4_qkv_f16`, `matvec4_qkv_k`) and everything
/// else binds each as before.
/// Offsets and lengths in bytes, by matrix: Q, K, V.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct QkvLayout {
    pub rows: [usize; 3],
    pub words: [(u64, u64); 3],
    pub scales: [(u64, u64); 3],
    pub words_len: u64,
    pub scales_len: u64,
}

impl QkvLayout {
    /// The layout for these three shapes, or `None` where they cannot share a dispatch: not all q4_0,
    /// all q8_0, all f16, all Q6_K, or Q4_K or Q5_K (V Q4_K, Q5_K or Q6_K) of one width and block, rows not of whole vec4s (32 values),
    /// rows not in whole workgroups of 8 (each workgroup then reads one matrix), or more than one
    /// binding holds.
    pub fn plan(shapes: [Shape; 3], align: u64, max_binding: u64) -> Option<QkvLayout> {
        let s0 = shapes[0];
        let kind = match s0.ty {
            WType::Q4_0 | WType::F16 | WType::Q8_0 | WType::Q6_K => shapes[2].ty == s0.ty,
            WType::Q4_K | WType::Q5_K => {
                matches!(shapes[2].ty, WType::Q4_K | WType::Q5_K | WType::Q6_K)
            }
            _ => false,
        };
        let same = shapes
            .iter()
            .all(|s| (s.cols, s.block) == (s0.cols, s0.block))
            && shapes[1].ty == s0.ty;
        let whole = s0.cols.is_multiple_of(32) && s0.cols.is_multiple_of(s0.block);
        if !kind || !same || !whole || shapes.iter().any(|s| s.rows % 8 != 0) {
            return None;
        }
        let up = |n: u64| n.div_ceil(align) * align;
        let mut at = (0, 0);
        let mut words = [(0, 0); 3];
        let mut scales = [(0, 0); 3];
        for (i, s) in shapes.iter().enumerate() {
            let w = (s.rows * s.row_bytes()) as u64;
            // One f16 scale per block; rows come in eights, so whole words. K-quants hold theirs
            // in each super-block.
            let sc = if s.ty.is_quantized() && !s.ty.is_k() {
                (s.rows * (s.cols / s.block) * 2) as u64
            } else {
                0
            };
            words[i] = (at.0, w);
            scales[i] = (at.1, sc);
            at = (up(at.0 + w), up(at.1 + sc));
        }
        let (words_len, scales_len) = (words[2].0 + words[2].1, scales[2].0 + scales[2].1);
        (words_len <= max_binding && scales_len <= max_binding).then_some(QkvLayout {
            rows: shapes.map(|s| s.rows),
            words,
            scales,
            words_len,
            scales_len,
        })
    }
}
