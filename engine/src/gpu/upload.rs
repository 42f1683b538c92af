//! Uploading weights, whole or tensor by tensor as a load streams them.

use super::device::{pop_error_scope, Gpu};
use super::layout::{rows_per_chunk, Chunk, GpuMatrix, QkvLayout, Shape, View};
use crate::model::{Class, Config, Model, Plan, Tensor, TensorId};
use crate::quant::{QMatrix, WType};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// Weights uploaded to the GPU. Decoders share them (an `Rc`), so several KV configurations of one
/// model upload it once.
pub struct GpuWeights {
    pub(super) name: String,
    pub(super) config: Config,
    pub(super) mats: HashMap<TensorId, GpuMatrix>,
    pub(super) norms: HashMap<TensorId, wgpu::Buffer>,
    pub(super) by_class: BTreeMap<Class, u64>,
    /// `rope_freqs.weight`, also kept on the host: the RoPE table is computed there.
    pub(super) rope_divisors: Option<Vec<f32>>,
    /// Per layer whose Q, K and V share buffers: their layout and the codes and scales buffers.
    pub(super) qkv: HashMap<usize, Qkv>,
}

/// A layer's Q, K and V weights in one buffer of codes and one of scales ([`QkvLayout`]).
pub(super) struct Qkv {
    pub layout: QkvLayout,
    pub words: wgpu::Buffer,
    pub scales: wgpu::Buffer,
}

impl GpuWeights {
    /// Uploads a model already in memory.
    pub fn upload(gpu: &Gpu, model: &Model) -> Result<Rc<GpuWeights>> {
        let mut up = WeightUpload::begin(gpu, &Plan::of(model))?;
        for id in TensorId::all(&model.config, model.tied()) {
            if id.class() == Class::Norm {
                up.put_norm(id, model.weights.norm(id))?;
            } else {
                up.put_matrix(id, model.weights.matrix(id))?;
            }
        }
        up.finish()
    }
}

/// A model uploaded tensor by tensor as a load delivers it (progressive loading): the CPU holds one
/// tensor at a time, not the model. The plan is checked against the adapter's limits in `begin`,
/// before anything is uploaded.
pub struct WeightUpload<'g> {
    gpu: &'g Gpu,
    plan: HashMap<TensorId, (WType, usize)>,
    tied: bool,
    /// Layers whose Q, K and V the plan lets share buffers, until the first of them arrives.
    qkv_plans: HashMap<usize, QkvLayout>,
    w: GpuWeights,
    /// The largest single buffer copied to the GPU (what one upload stages), and the time spent.
    pub largest_staging: u64,
    pub upload_s: f64,
}

impl<'g> WeightUpload<'g> {
    pub fn begin(gpu: &'g Gpu, plan: &Plan) -> Result<WeightUpload<'g>> {
        let c = &plan.config;
        for &(id, ty, block) in &plan.matrices {
            let (rows, cols) = id.shape(c);
            let shape = Shape {
                ty,
                rows,
                cols,
                block,
            };
            if rows_per_chunk(shape, gpu.max_binding).is_none() {
                return Err(Error::Gpu(format!(
                    "tensor {}: its rows ({} bytes each) do not fit the adapter's \
                     maxStorageBufferBindingSize of {} bytes ({}), so it cannot be split across bindings",
                    id.gguf_name(),
                    shape.row_bytes(),
                    gpu.max_binding,
                    gpu.report.name
                )));
            }
            if ty == WType::F16 && cols % 2 != 0 {
                return Err(Error::Gpu(format!(
                    "tensor {}: f16 rows of odd length {cols} are not supported on the GPU",
                    id.gguf_name()
                )));
            }
        }
        let planned: HashMap<TensorId, (WType, usize)> = plan
            .matrices
            .iter()
            .map(|&(id, ty, block)| (id, (ty, block)))
            .collect();
        let align = gpu.device.limits().min_storage_buffer_offset_alignment as u64;
        let mut qkv_plans = HashMap::new();
        for l in (0..c.n_layers).filter(|_| gpu.fuse_qkv) {
            let shape = |id: TensorId| {
                let &(ty, block) = planned.get(&id)?;
                let (rows, cols) = id.shape(c);
                Some(Shape {
                    ty,
                    rows,
                    cols,
                    block,
                })
            };
            let (Some(q), Some(k), Some(v)) = (
                shape(TensorId::Wq(l)),
                shape(TensorId::Wk(l)),
                shape(TensorId::Wv(l)),
            ) else {
                continue;
            };
            if let Some(layout) = QkvLayout::plan([q, k, v], align, gpu.max_binding) {
                qkv_plans.insert(l, layout);
            }
        }
        Ok(WeightUpload {
            gpu,
            qkv_plans,
            plan: planned,
            tied: !plan.own_output,
            w: GpuWeights {
                name: plan.name.clone(),
                config: c.clone(),
                mats: HashMap::new(),
                norms: HashMap::new(),
                by_class: BTreeMap::new(),
                rope_divisors: None,
                qkv: HashMap::new(),
            },
            largest_staging: 0,
            upload_s: 0.0,
        })
    }

    /// Uploads one tensor as a load delivers it.
    pub fn put(&mut self, id: TensorId, t: &Tensor) -> Result<()> {
        match t {
            Tensor::Norm(v) => self.put_norm(id, v),
            Tensor::Matrix(m) => self.put_matrix(id, m),
        }
    }

    fn buffer(&mut self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        // Buffers must not be empty and are written in whole words.
        let size = (bytes.len().max(4).div_ceil(4) * 4) as u64;
        let b = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.gpu.queue.write_buffer(&b, 0, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.gpu.queue.write_buffer(&b, whole as u64, &tail);
        }
        self.largest_staging = self.largest_staging.max(size);
        b
    }

    fn put_norm(&mut self, id: TensorId, v: &[f32]) -> Result<()> {
        let t0 = web_time::Instant::now();
        let want = id.shape(&self.w.config).1;
        if id.class() != Class::Norm || v.len() != want {
            return Err(Error::Gpu(format!(
                "tensor {}: {} values delivered as a norm of {want}",
                id.gguf_name(),
                v.len()
            )));
        }
        let b = self.buffer(&id.gguf_name(), bytemuck::cast_slice(v));
        if id == TensorId::RopeFreqs {
            self.w.rope_divisors = Some(v.to_vec());
        }
        *self.w.by_class.entry(Class::Norm).or_default() += b.size();
        self.w.norms.insert(id, b);
        self.upload_s += t0.elapsed().as_secs_f64();
        Ok(())
    }

    fn put_matrix(&mut self, id: TensorId, m: &QMatrix) -> Result<()> {
        let t0 = web_time::Instant::now();
        let name = id.gguf_name();
        let planned = self.plan.get(&id).copied();
        if planned != Some((m.ty, m.block)) || id.shape(&self.w.config) != (m.rows, m.cols) {
            return Err(Error::Gpu(format!(
                "tensor {name}: a {}x{} {} matrix (block {}) was delivered, the plan said {:?} of {:?}",
                m.rows,
                m.cols,
                m.ty.name(),
                m.block,
                planned,
                id.shape(&self.w.config)
            )));
        }
        let oom_scope = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        if let Some((l, i)) = qkv_section(id) {
            if self.qkv_plans.contains_key(&l) || self.w.qkv.contains_key(&l) {
                let chunk = self.put_qkv(l, i, m)?;
                return self.finish_matrix(id, m, vec![chunk], oom_scope, t0);
            }
        }
        let per = rows_per_chunk(Shape::of(m), self.gpu.max_binding).expect("checked in begin");
        let row_bytes = Shape::of(m).row_bytes();
        let words_bytes: &[u8] = bytemuck::cast_slice(&m.words);
        let blocks = if m.ty.is_quantized() {
            m.cols / m.block
        } else {
            0
        };
        let mut chunks = Vec::new();
        for row0 in (0..m.rows).step_by(per) {
            let rows = per.min(m.rows - row0);
            // Byte ranges of this chunk's rows; exact because chunks start on whole words.
            let w = &words_bytes[row0 * row_bytes..][..rows * row_bytes];
            let sc = &m.scales
                [(row0 * blocks).min(m.scales.len())..((row0 + rows) * blocks).min(m.scales.len())];
            let mn = &m.mins
                [(row0 * blocks).min(m.mins.len())..((row0 + rows) * blocks).min(m.mins.len())];
            let chunk = Chunk {
                words: self.buffer(&name, w).into(),
                scales: self.buffer(&name, bytemuck::cast_slice(sc)).into(),
                mins: self.buffer(&name, bytemuck::cast_slice(mn)).into(),
                row0,
                rows,
            };
            chunks.push(chunk);
        }
        self.finish_matrix(id, m, chunks, oom_scope, t0)
    }

    /// Records an uploaded matrix, once its buffers are written.
    fn finish_matrix(
        &mut self,
        id: TensorId,
        m: &QMatrix,
        chunks: Vec<Chunk>,
        oom_scope: wgpu::ErrorScopeGuard,
        t0: web_time::Instant,
    ) -> Result<()> {
        let name = id.gguf_name();
        let bytes: u64 = chunks
            .iter()
            .map(|c| c.words.size + c.scales.size + c.mins.size)
            .sum();
        if let Some(e) = pop_error_scope(oom_scope) {
            return Err(Error::Gpu(format!(
                "out of GPU memory uploading {name} of {} ({bytes} bytes): {e}",
                self.w.name
            )));
        }
        *self.w.by_class.entry(id.class()).or_default() += bytes;
        self.w.mats.insert(
            id,
            GpuMatrix {
                chunks,
                cols: m.cols,
                block: m.block,
                ty: m.ty,
            },
        );
        self.upload_s += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Writes matrix `i` (Q, K, V) of layer `l` into the layer's shared buffers, made when the first
    /// of the three arrives, and returns its view of them.
    fn put_qkv(&mut self, l: usize, i: usize, m: &QMatrix) -> Result<Chunk> {
        if let Some(layout) = self.qkv_plans.remove(&l) {
            let make = |label: &str, size: u64| {
                super::layout::buffer(
                    &self.gpu.device,
                    label,
                    size,
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                )
            };
            let qkv = Qkv {
                words: make(&format!("blk.{l}.qkv codes"), layout.words_len),
                scales: make(&format!("blk.{l}.qkv scales"), layout.scales_len),
                layout,
            };
            self.w.qkv.insert(l, qkv);
        }
        let q = &self.w.qkv[&l];
        let (words, scales): (&[u8], &[u8]) = (
            bytemuck::cast_slice(&m.words),
            bytemuck::cast_slice(&m.scales),
        );
        let ((wo, wl), (so, sl)) = (q.layout.words[i], q.layout.scales[i]);
        if words.len() as u64 != wl || scales.len() as u64 != sl || !m.mins.is_empty() {
            return Err(Error::Gpu(format!(
                "tensor {}: {} bytes of codes and {} of scales delivered, the plan said {wl} and {sl}",
                qkv_id(l, i).gguf_name(),
                words.len(),
                scales.len()
            )));
        }
        self.gpu.queue.write_buffer(&q.words, wo, words);
        if sl > 0 {
            self.gpu.queue.write_buffer(&q.scales, so, scales);
        }
        self.largest_staging = self.largest_staging.max(wl);
        let view = |b: &wgpu::Buffer, offset, size| View {
            buffer: b.clone(),
            offset,
            size,
        };
        // f16 has no scales: its (unread) binding is the whole small buffer.
        let (words, scales) = (view(&q.words, wo, wl), view(&q.scales, so, sl.max(4)));
        Ok(Chunk {
            words,
            scales,
            mins: self.buffer(&qkv_id(l, i).gguf_name(), &[]).into(),
            row0: 0,
            rows: m.rows,
        })
    }

    /// The uploaded weights, once every tensor of the plan has arrived.
    pub fn finish(mut self) -> Result<Rc<GpuWeights>> {
        let t0 = web_time::Instant::now();
        if let Some(id) = TensorId::all(&self.w.config, self.tied)
            .into_iter()
            .find(|id| !self.w.mats.contains_key(id) && !self.w.norms.contains_key(id))
        {
            return Err(Error::Gpu(format!(
                "the load ended before tensor {} of {} was uploaded",
                id.gguf_name(),
                self.w.name
            )));
        }
        if self.tied {
            // The classifier reads the embedding's buffers.
            let shared = self.w.mats[&TensorId::TokEmbd].clone();
            self.w.mats.insert(TensorId::Output, shared);
        }
        self.gpu.check_errors()?;
        self.upload_s += t0.elapsed().as_secs_f64();
        Ok(Rc::new(self.w))
    }
}

/// Layer and index (Q 0, K 1, V 2) of a Q, K or V matrix.
fn qkv_section(id: TensorId) -> Option<(usize, usize)> {
    match id {
        TensorId::Wq(l) => Some((l, 0)),
        TensorId::Wk(l) => Some((l, 1)),
        TensorId::Wv(l) => Some((l, 2)),
        _ => None,
    }
}

fn qkv_id(l: usize, i: usize) -> TensorId {
    [TensorId::Wq(l), TensorId::Wk(l), TensorId::Wv(l)][i]
}

/// A [`crate::cache::Sink`] that uploads each tensor as the load delivers it, so the CPU never
/// holds the whole model.
pub struct GpuSink<'g> {
    gpu: &'g Gpu,
    up: Option<WeightUpload<'g>>,
    plan: Option<Plan>,
}

impl<'g> GpuSink<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        GpuSink {
            gpu,
            up: None,
            plan: None,
        }
    }

    /// The uploaded weights, their plan, and the largest buffer staged on the way.
    pub fn finish(self) -> Result<(Rc<GpuWeights>, Plan, u64)> {
        let (Some(up), Some(plan)) = (self.up, self.plan) else {
            return Err(Error::Invalid("the load delivered no model".into()));
        };
        let staging = up.largest_staging;
        Ok((up.finish()?, plan, staging))
    }
}

impl crate::cache::Sink for GpuSink<'_> {
    fn begin(&mut self, plan: &Plan) -> Result<()> {
        self.up = Some(WeightUpload::begin(self.gpu, plan)?);
        self.plan = Some(plan.clone());
        Ok(())
    }
    fn put(&mut self, id: TensorId, t: Tensor) -> Result<()> {
        match &mut self.up {
            Some(up) => up.put(id, &t),
            None => Err(Error::Invalid("a tensor arrived before the plan".into())),
        }
    }
}
