//! The WebGPU backend (wgpu): the same forward pass as the CPU, with WGSL kernels from `shaders/`.
//!
//! Weights are uploaded once in the planar layout of `quant.rs`. Activations, the KV cache, the attention
//! scratch, the per-token uniform and the staging buffers are allocated when the decoder is made; bind
//! groups are made on first use and cached, so a steady-state token allocates nothing. Each token is one
//! compute pass in one command buffer; greedy decoding reads back a 4-byte argmax, scoring reads the logits.

use crate::forward::{forward, Act, Kernels};
use crate::kv::{KvConfig, KvType};
use crate::model::{Class, Config, Model, Plan, Tensor, TensorId};
use crate::quant::{QMatrix, WType};
use crate::{Decoder, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

const SHADER_ACT_F32: &str = include_str!("../../shaders/act_f32.wgsl");
const SHADER_ACT_F16: &str = include_str!("../../shaders/act_f16.wgsl");
const SHADER_STEP: &str = include_str!("../../shaders/step.wgsl");
const SHADER_QUANT: &str = include_str!("../../shaders/quant.wgsl");
const SHADER_MATVEC: &str = include_str!("../../shaders/matvec.wgsl");
const SHADER_NORM: &str = include_str!("../../shaders/norm.wgsl");
const SHADER_ROPE: &str = include_str!("../../shaders/rope.wgsl");
const SHADER_ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
const SHADER_KV: &str = include_str!("../../shaders/kv.wgsl");
const SHADER_KVFORMAT: &str = include_str!("../../shaders/kvformat.wgsl");
const SHADER_ATTENTION: &str = include_str!("../../shaders/attention.wgsl");
const SHADER_ARGMAX: &str = include_str!("../../shaders/argmax.wgsl");

/// How long a submission may take before the device is declared hung.
#[cfg(not(target_arch = "wasm32"))]
const GPU_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The adapter, as every result reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub features: Vec<String>,
    pub shader_f16: bool,
    pub limits: LimitsReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsReport {
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
}

/// Element type of the activation buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activations {
    F16,
    F32,
}

impl Activations {
    pub fn parse(s: &str) -> Result<Activations> {
        match s {
            "f16" => Ok(Activations::F16),
            "f32" => Ok(Activations::F32),
            _ => Err(Error::Invalid(format!("--act {s:?}: expected f16 or f32"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Activations::F16 => "f16",
            Activations::F32 => "f32",
        }
    }

    fn bytes(self) -> usize {
        match self {
            Activations::F16 => 2,
            Activations::F32 => 4,
        }
    }
}

/// Options for opening the GPU.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Activation type; default f16 where the adapter has `shader-f16`, else f32.
    pub act: Option<Activations>,
    /// Pretend the adapter allows at most this many bytes per storage binding (to test splitting).
    pub max_binding: Option<u64>,
    /// wgpu backends to try; default: `WGPU_BACKEND` if set, else Vulkan/Metal/DX12/browser WebGPU.
    pub backends: Option<wgpu::Backends>,
}

/// An open device with its adapter report and error hooks.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub report: AdapterReport,
    /// The binding limit the engine plans with (the adapter's, or a smaller forced one).
    pub max_binding: u64,
    /// Activation type every decoder on this device uses.
    pub activations: Activations,
    /// Which matvec kernel decode uses (chosen per adapter; see [`MatvecKernel`]).
    matvec: std::cell::Cell<MatvecKernel>,
    /// How that choice was made, for results.
    pub matvec_choice: std::cell::RefCell<String>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Gpu {
    /// Opens the default adapter (honouring `WGPU_BACKEND`), with its full limits.
    pub async fn open(opts: GpuOptions) -> Result<Gpu> {
        // Vulkan/Metal/DX12/browser WebGPU unless WGPU_BACKEND says otherwise (e.g. `gl`): probing GL
        // by default prints display-server noise on headless machines.
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = opts
            .backends
            .or_else(wgpu::Backends::from_env)
            .unwrap_or(wgpu::Backends::PRIMARY);
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("no WebGPU adapter: {e}")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let shader_f16 = features.contains(wgpu::Features::SHADER_F16);
        let activations = match opts.act {
            Some(Activations::F16) if !shader_f16 => {
                return Err(Error::Gpu(format!(
                    "f16 activations need shader-f16, which {} does not have",
                    info.name
                )))
            }
            Some(a) => a,
            None if shader_f16 => Activations::F16,
            None => Activations::F32,
        };
        let required_features = if activations == Activations::F16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("nibble"),
                required_features,
                required_limits: limits.clone(),
                memory_hints: wgpu::MemoryHints::Performance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("requesting a device from {}: {e}", info.name)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            lost.lock()
                .unwrap()
                .push(format!("device lost ({reason:?}): {msg}"));
        });
        let report = AdapterReport {
            // Browsers may hide the adapter's name (Firefox does); say so rather than print nothing.
            name: if info.name.is_empty() {
                "(unnamed: the browser hides the adapter's name)".into()
            } else {
                info.name.clone()
            },
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            features: features.iter_names().map(|(n, _)| n.to_string()).collect(),
            shader_f16,
            limits: LimitsReport {
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size as u64,
                max_buffer_size: limits.max_buffer_size,
                max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
                max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
                max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            },
        };
        let adapter_max =
            (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        Ok(Gpu {
            device,
            queue,
            max_binding: opts.max_binding.map_or(adapter_max, |m| m.min(adapter_max)),
            activations,
            matvec: MatvecKernel::choose(&report).into(),
            matvec_choice: format!(
                "{:?} for a {} adapter",
                MatvecKernel::choose(&report),
                report.device_type
            )
            .into(),
            report,
            errors,
        })
    }

    pub fn matvec_kernel(&self) -> MatvecKernel {
        self.matvec.get()
    }

    /// Uses `k` for decoders made from now on (tests run both kernels on one adapter).
    pub fn set_matvec_kernel(&self, k: MatvecKernel) {
        self.matvec.set(k);
        *self.matvec_choice.borrow_mut() = format!("{k:?}, set by the caller");
    }

    /// Times both matvec kernels on the built-in model at q4_0 and keeps the faster: in a browser the
    /// adapter does not say whether it runs on a CPU. Answers what was measured.
    pub async fn tune_matvec(&self) -> Result<String> {
        let wc = crate::precision::WeightConfig {
            default: Some(WType::Q4_0),
            ..Default::default()
        };
        let (m, _) = crate::Model::synthetic_with(crate::Preset::Tiny, 1, &wc)?;
        let mut best: Option<(MatvecKernel, f64)> = None;
        let mut notes = Vec::new();
        for k in [MatvecKernel::Tiled, MatvecKernel::Row] {
            self.matvec.set(k);
            let mut d = GpuDecoder::new(self, &m, KvConfig::default())?;
            d.step_argmax(1, 0).await?;
            let t0 = web_time::Instant::now();
            for p in 1..4 {
                d.step_argmax(1, p).await?;
            }
            let ms = t0.elapsed().as_secs_f64() * 1e3 / 3.0;
            notes.push(format!("{k:?} {ms:.2} ms/token"));
            if best.is_none_or(|(_, b)| ms < b) {
                best = Some((k, ms));
            }
        }
        let (k, _) = best.expect("two kernels timed");
        self.matvec.set(k);
        let note = format!(
            "{k:?}, timed on the built-in model at q4_0: {}",
            notes.join(", ")
        );
        *self.matvec_choice.borrow_mut() = note.clone();
        Ok(note)
    }

    /// Blocking [`Gpu::open`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_blocking(opts: GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::open(opts))
    }

    fn check_errors(&self) -> Result<()> {
        let mut e = self.errors.lock().unwrap();
        if e.is_empty() {
            return Ok(());
        }
        let msg = e.join("; ");
        e.clear();
        Err(Error::Gpu(msg))
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(GPU_TIMEOUT),
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_errors()
    }
}

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
struct Chunk {
    words: wgpu::Buffer,
    scales: wgpu::Buffer,
    mins: wgpu::Buffer,
    row0: usize,
    rows: usize,
}

/// A weight matrix on the GPU: one chunk, or several when it exceeds the storage binding limit.
#[derive(Clone)]
struct GpuMatrix {
    chunks: Vec<Chunk>,
    cols: usize,
    block: usize,
    kind: u32,
}

/// A matrix's storage type and size, all the chunking needs.
#[derive(Clone, Copy)]
struct Shape {
    ty: WType,
    rows: usize,
    cols: usize,
    block: usize,
}

impl Shape {
    fn of(m: &QMatrix) -> Shape {
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
fn rows_per_chunk(m: Shape, max_binding: u64) -> Option<usize> {
    let bits = row_bits(m.ty);
    let row_bytes = (m.cols * bits / 8) as u64;
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
    let step = if (m.cols * bits) % 32 != 0 || blocks % 2 == 1 {
        2
    } else {
        1
    };
    let n = (max_binding / row_bytes) as usize / step * step;
    (n > 0).then_some(n)
}

/// The GPU row format of a KV type (kvformat.wgsl); kivi4 values are per-token q4_1.
fn kv_kind(t: KvType) -> u32 {
    match t {
        KvType::F32 => 0,
        KvType::F16 => 1,
        KvType::Q8_0 => 2,
        KvType::Q4_0 => 3,
        KvType::Kivi4 => 4,
    }
}

/// Key kind in kvformat.wgsl: kivi4 keys are per-channel groups (5), unlike its per-token values (4).
fn key_kind(t: KvType) -> u32 {
    if t == KvType::Kivi4 {
        5
    } else {
        kv_kind(t)
    }
}

/// Complete kivi4 key groups kept at once: the window's ring, or every group of the context.
fn kivi_ring(kv: &KvConfig, c: &Config) -> usize {
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

/// u32 words per cache slot row of `n` values (kvformat.wgsl's `row_stride`).
fn row_stride(kind: u32, n: usize) -> usize {
    let scale_words = (n / 32).div_ceil(2);
    match kind {
        0 => n,
        1 => n / 2,
        2 => n / 4 + scale_words,
        3 => n / 8 + scale_words,
        _ => n / 8 + 2 * scale_words,
    }
}

fn row_bits(ty: WType) -> usize {
    match ty {
        WType::F32 => 32,
        WType::F16 => 16,
        WType::Q8_0 => 8,
        _ => 4,
    }
}

fn kind(ty: WType) -> u32 {
    match ty {
        WType::F32 => 0,
        WType::F16 => 1,
        WType::Q8_0 => 2,
        WType::Q4_0 => 3,
        WType::Q4_1 => 4,
    }
}

struct Pipelines {
    matvec: wgpu::ComputePipeline,
    matmul: wgpu::ComputePipeline,
    matvec_any: wgpu::ComputePipeline,
    matvec_row: wgpu::ComputePipeline,
    embed: wgpu::ComputePipeline,
    rmsnorm: wgpu::ComputePipeline,
    rope: wgpu::ComputePipeline,
    add: wgpu::ComputePipeline,
    swiglu: wgpu::ComputePipeline,
    kv_store: wgpu::ComputePipeline,
    kivi_flush: wgpu::ComputePipeline,
    attention: wgpu::ComputePipeline,
    argmax: wgpu::ComputePipeline,
}

impl Pipelines {
    fn new(device: &wgpu::Device, act: Activations) -> Pipelines {
        // The activation type alias goes first: `enable f16;` must open the module.
        let a = match act {
            Activations::F16 => SHADER_ACT_F16,
            Activations::F32 => SHADER_ACT_F32,
        };
        let module = |label: &str, parts: &[&str]| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(parts.concat().into()),
            })
        };
        let pipe = |m: &wgpu::ShaderModule, entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: m,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let mv = module("matvec", &[a, SHADER_STEP, SHADER_QUANT, SHADER_MATVEC]);
        let norm = module("norm", &[a, SHADER_NORM]);
        let rope = module("rope", &[a, SHADER_ROPE]);
        let ew = module("elementwise", &[a, SHADER_ELEMENTWISE]);
        let kv = module("kv", &[a, SHADER_STEP, SHADER_KVFORMAT, SHADER_KV]);
        let att = module(
            "attention",
            &[a, SHADER_STEP, SHADER_KVFORMAT, SHADER_ATTENTION],
        );
        let am = module("argmax", &[a, SHADER_STEP, SHADER_ARGMAX]);
        Pipelines {
            matvec: pipe(&mv, "matvec"),
            matmul: pipe(&mv, "matmul"),
            matvec_any: pipe(&mv, "matvec_any"),
            matvec_row: pipe(&mv, "matvec_row"),
            embed: pipe(&mv, "embed"),
            rmsnorm: pipe(&norm, "rmsnorm"),
            rope: pipe(&rope, "rope"),
            add: pipe(&ew, "add"),
            swiglu: pipe(&ew, "swiglu"),
            kv_store: pipe(&kv, "kv_store"),
            kivi_flush: pipe(&kv, "kivi_flush"),
            attention: pipe(&att, "attention"),
            argmax: pipe(&am, "argmax"),
        }
    }
}

/// What a token's submission copies back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readback {
    Nothing,
    Argmax,
    Logits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BindKey {
    /// Output, weight, chunk, input, accumulate.
    Matvec(TensorId, usize, Act, Act, bool),
    /// The same for a batch of rows (the tiled matrix-matrix kernel).
    Matmul(TensorId, usize, Act, Act, bool),
    /// Output and the embedding chunk holding the token.
    Embed(Act, usize),
    Norm(TensorId, Act, Act),
    Rope(Act),
    Add(Act, Act),
    Swiglu(Act, Act),
    KvStore(usize),
    KiviFlush(usize),
    Attention(usize, Act),
    Argmax,
}

/// Weights uploaded to the GPU. Decoders share them (an `Rc`), so several KV configurations of one
/// model upload it once.
pub struct GpuWeights {
    name: String,
    config: Config,
    mats: HashMap<TensorId, GpuMatrix>,
    norms: HashMap<TensorId, wgpu::Buffer>,
    by_class: BTreeMap<Class, u64>,
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
                    cols * row_bits(ty) / 8,
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
        Ok(WeightUpload {
            gpu,
            plan: plan
                .matrices
                .iter()
                .map(|&(id, ty, block)| (id, (ty, block)))
                .collect(),
            tied: !plan.own_output,
            w: GpuWeights {
                name: plan.name.clone(),
                config: c.clone(),
                mats: HashMap::new(),
                norms: HashMap::new(),
                by_class: BTreeMap::new(),
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
        let per = rows_per_chunk(Shape::of(m), self.gpu.max_binding).expect("checked in begin");
        let words_bytes: &[u8] = bytemuck::cast_slice(&m.words);
        let blocks = if m.ty.is_quantized() {
            m.cols / m.block
        } else {
            0
        };
        let mut chunks = Vec::new();
        let mut bytes = 0;
        for row0 in (0..m.rows).step_by(per) {
            let rows = per.min(m.rows - row0);
            // Byte ranges of this chunk's rows; exact because chunks start on whole words.
            let w = &words_bytes[row0 * m.cols * row_bits(m.ty) / 8..]
                [..rows * m.cols * row_bits(m.ty) / 8];
            let sc = &m.scales
                [(row0 * blocks).min(m.scales.len())..((row0 + rows) * blocks).min(m.scales.len())];
            let mn = &m.mins
                [(row0 * blocks).min(m.mins.len())..((row0 + rows) * blocks).min(m.mins.len())];
            let chunk = Chunk {
                words: self.buffer(&name, w),
                scales: self.buffer(&name, bytemuck::cast_slice(sc)),
                mins: self.buffer(&name, bytemuck::cast_slice(mn)),
                row0,
                rows,
            };
            bytes += chunk.words.size() + chunk.scales.size() + chunk.mins.size();
            chunks.push(chunk);
        }
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
                kind: kind(m.ty),
            },
        );
        self.upload_s += t0.elapsed().as_secs_f64();
        Ok(())
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

/// A [`crate::cache::Sink`] that uploads each tensor as the load delivers it, so the CPU never
/// holds the whole model.
pub struct GpuSink<'g> {
    gpu: &'g Gpu,
    up: Option<WeightUpload<'g>>,
}

impl<'g> GpuSink<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        GpuSink { gpu, up: None }
    }

    /// The uploaded weights and the largest buffer staged on the way.
    pub fn finish(self) -> Result<(Rc<GpuWeights>, u64)> {
        let up = self
            .up
            .ok_or_else(|| Error::Invalid("the load delivered no model".into()))?;
        let staging = up.largest_staging;
        Ok((up.finish()?, staging))
    }
}

impl crate::cache::Sink for GpuSink<'_> {
    fn begin(&mut self, plan: &Plan) -> Result<()> {
        self.up = Some(WeightUpload::begin(self.gpu, plan)?);
        Ok(())
    }
    fn put(&mut self, id: TensorId, t: Tensor) -> Result<()> {
        match &mut self.up {
            Some(up) => up.put(id, &t),
            None => Err(Error::Invalid("a tensor arrived before the plan".into())),
        }
    }
}

/// One sequence on the GPU: uploaded weights, activations, KV cache, pipelines and cached bind groups.
pub struct GpuDecoder<'g> {
    gpu: &'g Gpu,
    config: Config,
    kv: KvConfig,
    theta: f32,
    w: Rc<GpuWeights>,
    acts: Vec<wgpu::Buffer>,
    kcache: Vec<wgpu::Buffer>,
    vcache: Vec<wgpu::Buffer>,
    att: wgpu::Buffer,
    cap: usize,
    /// The largest batch one pass takes (activation rows), and the rows of the pass being recorded.
    max_rows: usize,
    rows: usize,
    /// One `Step` (8 words) per row, as step.wgsl declares it.
    step_buf: wgpu::Buffer,
    steps: Vec<u32>,
    rope_buf: wgpu::Buffer,
    argmax_buf: wgpu::Buffer,
    staging_logits: wgpu::Buffer,
    staging_id: wgpu::Buffer,
    pipes: Pipelines,
    binds: HashMap<BindKey, wgpu::BindGroup>,
    pass: Option<wgpu::ComputePass<'static>>,
    logits: Vec<f32>,
    memory: GpuMemory,
    /// Seconds the last `run` spent on the CPU recording and submitting.
    encode_s: f64,
    /// Seconds spent creating the compute pipelines (shader compilation) in `new`.
    compile_s: f64,
    /// cos/sin per RoPE frequency for each row's position, reused every pass.
    rope_table: Vec<f32>,
}

impl<'g> GpuDecoder<'g> {
    /// Uploads `model` and prepares a KV cache for `kv`. Refuses before uploading anything when a tensor
    /// is larger than the adapter's storage binding limit.
    pub fn new(gpu: &'g Gpu, model: &Model, kv: KvConfig) -> Result<Self> {
        Self::check(&model.config, &kv)?;
        Self::with_weights(gpu, GpuWeights::upload(gpu, model)?, kv)
    }

    fn check(c: &Config, kv: &KvConfig) -> Result<()> {
        kv.validate(c)?;
        if c.head_size() % 4 != 0 || c.head_size() > 256 {
            return Err(Error::Gpu(format!(
                "head size {} is not supported by the attention kernel (a multiple of 4, at most 256)",
                c.head_size()
            )));
        }
        Ok(())
    }

    /// A decoder on weights already uploaded, with its own KV cache and activations.
    pub fn with_weights(gpu: &'g Gpu, w: Rc<GpuWeights>, kv: KvConfig) -> Result<Self> {
        let c = w.config.clone();
        Self::check(&c, &kv)?;
        let dev = &gpu.device;
        let oom_scope = dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut memory = GpuMemory {
            weights_by_class: w.by_class.clone(),
            ..GpuMemory::default()
        };
        let storage = wgpu::BufferUsages::STORAGE;
        memory.weights = memory.weights_by_class.values().sum();

        let buf = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(4).div_ceil(4) * 4,
                usage,
                mapped_at_creation: false,
            })
        };
        let act_usage = storage | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let cap = kv.window.unwrap_or(c.seq_len);
        // Rows of a batched prompt pass: enough to read each weight once per 64 tokens, fewer where the
        // attention scratch or the logits of a whole batch would not fit one binding.
        let per_row = (c.n_heads * cap * 4)
            .max(c.vocab_size * gpu.activations.bytes())
            .max(1) as u64;
        // NIBBLE_PREFILL_ROWS caps it (1: token by token), as llama.cpp's --ubatch-size does.
        let cap_rows = std::env::var("NIBBLE_PREFILL_ROWS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(PREFILL_ROWS as u64)
            .clamp(1, PREFILL_ROWS as u64);
        let max_rows = (gpu.max_binding / per_row).clamp(1, cap_rows) as usize;
        let acts: Vec<wgpu::Buffer> = Act::ALL
            .iter()
            .map(|a| {
                let bytes = (max_rows * a.len(&c) * gpu.activations.bytes()) as u64;
                buf(&format!("{a:?}"), bytes, act_usage)
            })
            .collect();
        let k_bytes = if kv.k == KvType::Kivi4 {
            (kivi_key_words(&kv, &c) * 4) as u64
        } else {
            (cap * row_stride(kv_kind(kv.k), c.kv_dim()) * 4) as u64
        };
        let v_bytes = (cap * row_stride(kv_kind(kv.v), c.kv_dim()) * 4) as u64;
        let kcache: Vec<_> = (0..c.n_layers)
            .map(|l| buf(&format!("k{l}"), k_bytes, storage))
            .collect();
        let vcache: Vec<_> = (0..c.n_layers)
            .map(|l| buf(&format!("v{l}"), v_bytes, storage))
            .collect();
        let att = buf("att", (max_rows * c.n_heads * cap * 4) as u64, storage);
        let step_buf = buf(
            "steps",
            (max_rows * 32) as u64,
            storage | wgpu::BufferUsages::COPY_DST,
        );
        let rope_buf = buf(
            "rope",
            (max_rows * c.head_size() * 4) as u64,
            storage | wgpu::BufferUsages::COPY_DST,
        );
        let argmax_buf = buf("argmax", 4, storage | wgpu::BufferUsages::COPY_SRC);
        let read = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging_logits = buf(
            "staging logits",
            (c.vocab_size * gpu.activations.bytes()) as u64,
            read,
        );
        let staging_id = buf("staging id", 4, read);
        memory.kv_cache = kcache.iter().chain(&vcache).map(|b| b.size()).sum();
        memory.activations = acts.iter().map(|b| b.size()).sum::<u64>()
            + att.size()
            + step_buf.size()
            + rope_buf.size()
            + argmax_buf.size();
        memory.staging = staging_logits.size() + staging_id.size();
        memory.total = memory.weights + memory.kv_cache + memory.activations + memory.staging;
        if let Some(e) = pop_error_scope(oom_scope) {
            return Err(Error::Gpu(format!(
                "out of GPU memory preparing a decoder for {} ({} bytes planned): {e}",
                w.name, memory.total
            )));
        }
        gpu.check_errors()?;
        let t0 = web_time::Instant::now();
        let pipes = Pipelines::new(dev, gpu.activations);
        let compile_s = t0.elapsed().as_secs_f64();
        Ok(GpuDecoder {
            compile_s,
            gpu,
            theta: c.rope_theta,
            kv,
            w,
            acts,
            kcache,
            vcache,
            att,
            cap,
            max_rows,
            rows: 1,
            step_buf,
            steps: Vec::with_capacity(max_rows * 8),
            rope_buf,
            argmax_buf,
            staging_logits,
            staging_id,
            pipes,
            binds: HashMap::new(),
            pass: None,
            logits: vec![0.0; c.vocab_size],
            memory,
            encode_s: 0.0,
            rope_table: vec![0.0; max_rows * c.head_size()],
            config: c,
        })
    }

    pub fn memory(&self) -> &GpuMemory {
        &self.memory
    }

    /// How many storage bindings a weight matrix was split into.
    pub fn bindings(&self, id: TensorId) -> usize {
        self.w.mats.get(&id).map_or(0, |m| m.chunks.len())
    }

    fn act(&self, a: Act) -> &wgpu::Buffer {
        &self.acts[a as usize]
    }

    fn uniform(&self, words: &[u32]) -> wgpu::Buffer {
        self.gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::cast_slice(words),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    fn bind_group(
        &self,
        pipe: &wgpu::ComputePipeline,
        bufs: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = bufs
            .iter()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: *i,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipe.get_bind_group_layout(0),
                entries: &entries,
            })
    }

    /// Creates the bind group for `key` on first use.
    fn ensure(&mut self, key: BindKey) {
        if self.binds.contains_key(&key) {
            return;
        }
        let c = &self.config;
        let p = &self.pipes;
        let bg = match key {
            BindKey::Matvec(id, ci, out, x, acc) | BindKey::Matmul(id, ci, out, x, acc) => {
                let m = &self.w.mats[&id];
                let ch = &m.chunks[ci];
                let params = self.mat_params(m, ch, acc);
                let mut entries = vec![
                    (0, &params),
                    (1, &ch.words),
                    (2, &ch.scales),
                    (3, &ch.mins),
                    (4, self.act(x)),
                    (5, self.act(out)),
                ];
                // Only the batched kernel reads the steps (its row count).
                let pipe = if matches!(key, BindKey::Matmul(..)) {
                    entries.push((6, &self.step_buf));
                    &p.matmul
                } else {
                    mat_pipe(p, m, self.gpu.matvec.get())
                };
                self.bind_group(pipe, &entries)
            }
            BindKey::Embed(out, ci) => {
                let m = &self.w.mats[&TensorId::TokEmbd];
                let ch = &m.chunks[ci];
                let params = self.mat_params(m, ch, false);
                self.bind_group(
                    &p.embed,
                    &[
                        (0, &params),
                        (1, &ch.words),
                        (2, &ch.scales),
                        (3, &ch.mins),
                        (5, self.act(out)),
                        (6, &self.step_buf),
                    ],
                )
            }
            BindKey::Norm(id, out, x) => {
                let params = self.uniform(&[c.dim as u32, c.norm_eps.to_bits(), 0, 0]);
                self.bind_group(
                    &p.rmsnorm,
                    &[
                        (0, &params),
                        (1, self.act(x)),
                        (2, &self.w.norms[&id]),
                        (3, self.act(out)),
                    ],
                )
            }
            BindKey::Rope(x) => {
                let params = self.uniform(&[x.len(c) as u32, c.head_size() as u32, 0, 0]);
                self.bind_group(
                    &p.rope,
                    &[(0, &params), (1, self.act(x)), (2, &self.rope_buf)],
                )
            }
            BindKey::Add(a, b) | BindKey::Swiglu(a, b) => {
                let params = self.uniform(&[a.len(c) as u32, 0, 0, 0]);
                let pipe = if matches!(key, BindKey::Add(..)) {
                    &p.add
                } else {
                    &p.swiglu
                };
                self.bind_group(pipe, &[(0, &params), (1, self.act(a)), (2, self.act(b))])
            }
            BindKey::KvStore(l) => {
                let params = self.attn_params();
                self.bind_group(
                    &p.kv_store,
                    &[
                        (0, &params),
                        (1, self.act(Act::K)),
                        (2, self.act(Act::V)),
                        (3, &self.kcache[l]),
                        (4, &self.vcache[l]),
                        (5, &self.step_buf),
                    ],
                )
            }
            BindKey::KiviFlush(l) => {
                let params = self.attn_params();
                self.bind_group(
                    &p.kivi_flush,
                    &[(0, &params), (3, &self.kcache[l]), (5, &self.step_buf)],
                )
            }
            BindKey::Attention(l, out) => {
                let params = self.attn_params();
                self.bind_group(
                    &p.attention,
                    &[
                        (0, &params),
                        (1, self.act(Act::Q)),
                        (2, &self.kcache[l]),
                        (3, &self.vcache[l]),
                        (4, &self.att),
                        (5, self.act(out)),
                        (6, &self.step_buf),
                    ],
                )
            }
            BindKey::Argmax => {
                let params = self.uniform(&[c.vocab_size as u32, 0, 0, 0]);
                self.bind_group(
                    &p.argmax,
                    &[
                        (0, &params),
                        (1, self.act(Act::Logits)),
                        (2, &self.argmax_buf),
                        (3, &self.step_buf),
                    ],
                )
            }
        };
        self.binds.insert(key, bg);
    }

    fn mat_params(&self, m: &GpuMatrix, ch: &Chunk, accumulate: bool) -> wgpu::Buffer {
        self.uniform(&[
            ch.rows as u32,
            m.cols as u32,
            m.block as u32,
            m.kind,
            accumulate as u32,
            ch.row0 as u32,
            m.chunks.iter().map(|c| c.rows).sum::<usize>() as u32,
            0,
        ])
    }

    fn attn_params(&self) -> wgpu::Buffer {
        let c = &self.config;
        self.uniform(&[
            c.n_heads as u32,
            c.n_kv_heads as u32,
            c.head_size() as u32,
            c.kv_dim() as u32,
            self.cap as u32,
            key_kind(self.kv.k),
            kv_kind(self.kv.v),
            self.kv.group as u32,
            kivi_ring(&self.kv, c) as u32,
            self.kv.sinks as u32,
            0,
            0,
        ])
    }

    fn matvec_into(&mut self, out: Act, w: TensorId, x: Act, accumulate: bool) {
        if self.rows > 1 {
            // A batch: the tiled kernel covers 64 weight rows by 32 tokens per workgroup.
            let tiles = self.rows.div_ceil(32) as u32;
            for ci in 0..self.w.mats[&w].chunks.len() {
                let rows = self.w.mats[&w].chunks[ci].rows;
                let key = BindKey::Matmul(w, ci, out, x, accumulate);
                self.dispatch(key, (rows.div_ceil(64) as u32, tiles));
            }
            return;
        }
        // Rows per workgroup as the chosen kernel covers them, one on the element-wise path (matvec.wgsl).
        let m = &self.w.mats[&w];
        let per = if m.cols % 32 == 0 {
            self.gpu.matvec.get().rows_per_group()
        } else {
            1
        };
        for ci in 0..m.chunks.len() {
            let rows = self.w.mats[&w].chunks[ci].rows;
            let groups = rows.div_ceil(per);
            let groups = if groups <= 65535 {
                (groups as u32, 1)
            } else {
                (65535, groups.div_ceil(65535) as u32)
            };
            self.dispatch(BindKey::Matvec(w, ci, out, x, accumulate), groups);
        }
    }

    fn dispatch(&mut self, key: BindKey, groups: (u32, u32)) {
        self.ensure(key);
        let pipe = match key {
            BindKey::Matvec(id, ..) => {
                mat_pipe(&self.pipes, &self.w.mats[&id], self.gpu.matvec.get())
            }
            BindKey::Matmul(..) => &self.pipes.matmul,
            BindKey::Embed(..) => &self.pipes.embed,
            BindKey::Norm(..) => &self.pipes.rmsnorm,
            BindKey::Rope(_) => &self.pipes.rope,
            BindKey::Add(..) => &self.pipes.add,
            BindKey::Swiglu(..) => &self.pipes.swiglu,
            BindKey::KvStore(_) => &self.pipes.kv_store,
            BindKey::KiviFlush(_) => &self.pipes.kivi_flush,
            BindKey::Attention(..) => &self.pipes.attention,
            BindKey::Argmax => &self.pipes.argmax,
        };
        let pass = self.pass.as_mut().expect("dispatch outside a token's pass");
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, &self.binds[&key], &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }

    /// Rows the pass starting at `pos0` may take, of `left` tokens still to run. Rows of one pass are
    /// all stored before any attends, so a pass must not reuse a ring slot (with a window, batches stop
    /// where the ring would wrap, and go token by token after it) and may complete at most one kivi4
    /// key group, at its last row (the flush runs after the stores).
    fn batch_len(&self, pos0: usize, left: usize) -> usize {
        let mut n = left.min(self.max_rows);
        let kv = &self.kv;
        if let Some(w) = kv.window {
            n = n.min(w.saturating_sub(pos0).max(1));
        }
        if kv.k == KvType::Kivi4 {
            // The first position at or after pos0 that completes a group.
            let first = pos0.max(kv.sinks);
            let done = first + (kv.group - 1 - (first - kv.sinks) % kv.group);
            n = n.min(done + 1 - pos0);
        }
        n.max(1)
    }

    /// Writes each row's step and RoPE table, records the forward pass over `tokens` at `pos0..`, and
    /// submits it with a copy of what `out` asks for (for the last row) into its staging buffer.
    fn run(&mut self, tokens: &[u32], pos0: usize, out: Readback) -> Result<()> {
        let start = web_time::Instant::now();
        let c = &self.config;
        let n = tokens.len();
        debug_assert!(n >= 1 && n <= self.max_rows);
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::Invalid(format!(
                "token {t} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let last = pos0 + n - 1;
        if last >= c.seq_len && self.kv.window.is_none() {
            return Err(Error::Invalid(format!(
                "position {last} is past the model's context of {} (a --window lets decoding go on)",
                c.seq_len
            )));
        }
        let (sinks, span) = match self.kv.window {
            Some(w) => (self.kv.sinks, w - self.kv.sinks),
            None => (0, 0),
        };
        let hs = c.head_size();
        self.steps.clear();
        for (i, &token) in tokens.iter().enumerate() {
            let pos = pos0 + i;
            // The attended positions are sinks 0..n_sinks then lo..=pos (kv.rs), computed without a list.
            let (n_sinks, lo) = self.kv.attended_ranges(pos);
            self.steps.extend([
                pos as u32,
                (n_sinks + pos + 1 - lo) as u32,
                sinks as u32,
                span as u32,
                token,
                self.kv.slot(pos) as u32,
                lo as u32,
                n as u32,
            ]);
            // cos/sin per frequency, computed exactly as the CPU oracle computes them.
            for f in 0..hs / 2 {
                let freq = 1.0 / self.theta.powf((2 * f) as f32 / hs as f32);
                let (s, co) = (pos as f32 * freq).sin_cos();
                self.rope_table[i * hs + 2 * f] = co;
                self.rope_table[i * hs + 2 * f + 1] = s;
            }
        }
        let q = &self.gpu.queue;
        q.write_buffer(&self.step_buf, 0, bytemuck::cast_slice(&self.steps));
        q.write_buffer(
            &self.rope_buf,
            0,
            bytemuck::cast_slice(&self.rope_table[..n * hs]),
        );

        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.pass = Some(
            enc.begin_compute_pass(&Default::default())
                .forget_lifetime(),
        );
        self.rows = n;
        let cfg = self.config.clone();
        forward(self, &cfg, tokens, pos0);
        if out == Readback::Argmax {
            self.dispatch(BindKey::Argmax, (1, 1));
        }
        drop(self.pass.take());
        match out {
            Readback::Argmax => {
                enc.copy_buffer_to_buffer(&self.argmax_buf, 0, &self.staging_id, 0, 4)
            }
            Readback::Logits => {
                let size = self.staging_logits.size();
                let from = ((n - 1) * cfg.vocab_size * self.gpu.activations.bytes()) as u64;
                enc.copy_buffer_to_buffer(
                    self.act(Act::Logits),
                    from,
                    &self.staging_logits,
                    0,
                    size,
                );
            }
            Readback::Nothing => {}
        }
        q.submit([enc.finish()]);
        self.encode_s = start.elapsed().as_secs_f64();
        Ok(())
    }

    /// Runs a prompt in as few passes as [`Self::batch_len`] allows; the last pass reads back `out`.
    fn run_prompt(&mut self, tokens: &[u32], pos0: usize, out: Readback) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        let mut done = 0;
        while done < tokens.len() {
            let n = self.batch_len(pos0 + done, tokens.len() - done);
            let last = done + n == tokens.len();
            let rb = if last { out } else { Readback::Nothing };
            self.run(&tokens[done..done + n], pos0 + done, rb)?;
            done += n;
        }
        Ok(())
    }

    /// Reads the logits the last submission copied out, as f32.
    async fn read_logits(&mut self) -> Result<&[f32]> {
        let bytes = self.read(&self.staging_logits).await?;
        let n = self.config.vocab_size;
        match self.gpu.activations {
            Activations::F32 => self
                .logits
                .copy_from_slice(&bytemuck::cast_slice::<u8, f32>(&bytes)[..n]),
            Activations::F16 => {
                for (o, h) in self.logits.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([h[0], h[1]]).to_f32();
                }
            }
        }
        Ok(&self.logits)
    }

    async fn read_id(&self) -> Result<u32> {
        let bytes = self.read(&self.staging_id).await?;
        Ok(u32::from_le_bytes(bytes[..4].try_into().unwrap()))
    }

    /// Maps `staging` and copies it out. Natively the wait happens here (the map callback fires inside
    /// the poll); in a browser the future resolves from the event loop.
    async fn read(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        let (tx, mut rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        let mapped = {
            self.gpu.wait()?;
            rx.try_recv().ok().flatten()
        };
        #[cfg(target_arch = "wasm32")]
        let mapped = (&mut rx).await.ok();
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::Gpu(format!("reading results back: {e}"))),
            None => {
                return Err(Error::Gpu(
                    "the GPU did not return results (hung or lost)".into(),
                ))
            }
        }
        self.gpu.check_errors()?;
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("mapping results: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}

/// Pops an error scope; natively waits for its verdict. In the browser the verdict arrives later, and
/// out-of-memory surfaces through the uncaptured-error hook instead.
fn pop_error_scope(scope: wgpu::ErrorScopeGuard) -> Option<wgpu::Error> {
    let verdict = scope.pop();
    #[cfg(not(target_arch = "wasm32"))]
    {
        pollster::block_on(verdict)
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(verdict);
        None
    }
}

/// The matvec kernels of matvec.wgsl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatvecKernel {
    /// 8 rows per 256-thread workgroup, 32 lanes per row reading x from storage, lanes reduced in
    /// workgroup memory: for GPUs.
    Tiled,
    /// One thread per row, no barriers: for adapters that run on the CPU (lavapipe, SwiftShader),
    /// where each workgroup barrier costs more than the arithmetic.
    Row,
}

impl MatvecKernel {
    /// `NIBBLE_MATVEC=tiled|row` decides; else CPU adapters get `Row`. In a browser the adapter type is
    /// hidden, so both kernels are timed there ([`GpuDecoder::tune`]).
    fn choose(r: &AdapterReport) -> MatvecKernel {
        match std::env::var("NIBBLE_MATVEC").ok().as_deref() {
            Some("row") => return MatvecKernel::Row,
            Some("tiled") => return MatvecKernel::Tiled,
            _ => {}
        }
        if r.device_type == "Cpu" {
            MatvecKernel::Row
        } else {
            MatvecKernel::Tiled
        }
    }

    /// Rows one workgroup covers.
    fn rows_per_group(self) -> usize {
        match self {
            MatvecKernel::Tiled => 8,
            MatvecKernel::Row => 64,
        }
    }
}

/// The chosen kernel needs whole 32-column units; anything else takes the element-wise kernel.
fn mat_pipe<'p>(p: &'p Pipelines, m: &GpuMatrix, k: MatvecKernel) -> &'p wgpu::ComputePipeline {
    match k {
        _ if m.cols % 32 != 0 => &p.matvec_any,
        MatvecKernel::Tiled => &p.matvec,
        MatvecKernel::Row => &p.matvec_row,
    }
}

/// Rows of a batched prompt pass at most (fewer where a binding limit says so).
pub const PREFILL_ROWS: usize = 64;

fn wg(n: usize, size: usize) -> (u32, u32) {
    (n.div_ceil(size) as u32, 1)
}

impl Kernels for GpuDecoder<'_> {
    fn max_rows(&self) -> usize {
        self.max_rows
    }

    fn embed(&mut self, tokens: &[u32], out: Act) {
        // The kernel reads each row's token from the steps; every chunk holding one of them is bound.
        let n = self.config.dim;
        let rows = tokens.len() as u32;
        for ci in 0..self.w.mats[&TensorId::TokEmbd].chunks.len() {
            let ch = &self.w.mats[&TensorId::TokEmbd].chunks[ci];
            let (lo, hi) = (ch.row0, ch.row0 + ch.rows);
            if tokens.iter().any(|&t| (lo..hi).contains(&(t as usize))) {
                self.dispatch(BindKey::Embed(out, ci), (wg(n, 64).0, rows));
            }
        }
    }

    fn rmsnorm(&mut self, out: Act, x: Act, w: TensorId) {
        self.dispatch(BindKey::Norm(w, out, x), (self.rows as u32, 1));
    }

    fn matvec(&mut self, out: Act, w: TensorId, x: Act) {
        self.matvec_into(out, w, x, false);
    }

    fn matvec_add(&mut self, out: Act, w: TensorId, x: Act) {
        self.matvec_into(out, w, x, true);
    }

    fn rope(&mut self, x: Act, _pos0: usize) {
        let n = x.len(&self.config);
        self.dispatch(BindKey::Rope(x), (wg(n / 2, 64).0, self.rows as u32));
    }

    fn kv_store(&mut self, layer: usize, pos0: usize) {
        let n = self.config.kv_dim();
        self.dispatch(BindKey::KvStore(layer), (wg(n, 64).0, self.rows as u32));
        // A kivi4 key group completes at the pass's last position: quantize it per channel.
        let kv = &self.kv;
        let pos = pos0 + self.rows - 1;
        if kv.k == KvType::Kivi4 && pos >= kv.sinks && (pos - kv.sinks) % kv.group == kv.group - 1 {
            self.dispatch(BindKey::KiviFlush(layer), wg(n, 64));
        }
    }

    fn attention(&mut self, out: Act, layer: usize, _pos0: usize) {
        let h = self.config.n_heads;
        self.dispatch(BindKey::Attention(layer, out), (h as u32, self.rows as u32));
    }

    fn swiglu(&mut self, gate: Act, up: Act) {
        let n = gate.len(&self.config);
        self.dispatch(BindKey::Swiglu(gate, up), (wg(n, 64).0, self.rows as u32));
    }

    fn add(&mut self, x: Act, y: Act) {
        let n = x.len(&self.config);
        self.dispatch(BindKey::Add(x, y), (wg(n, 64).0, self.rows as u32));
    }
}

impl Decoder for GpuDecoder<'_> {
    fn config(&self) -> &Config {
        &self.config
    }

    fn step(&mut self, token: u32, pos: usize) -> crate::Fut<'_, &[f32]> {
        Box::pin(async move {
            self.run(&[token], pos, Readback::Logits)?;
            self.read_logits().await
        })
    }

    fn step_argmax(&mut self, token: u32, pos: usize) -> crate::Fut<'_, u32> {
        Box::pin(async move {
            self.run(&[token], pos, Readback::Argmax)?;
            self.read_id().await
        })
    }

    fn feed(&mut self, token: u32, pos: usize) -> crate::Fut<'_, ()> {
        Box::pin(std::future::ready(self.run(
            &[token],
            pos,
            Readback::Nothing,
        )))
    }

    fn prefill<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> crate::Fut<'a, &'a [f32]> {
        Box::pin(async move {
            self.run_prompt(tokens, pos0, Readback::Logits)?;
            self.read_logits().await
        })
    }

    fn prefill_argmax<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> crate::Fut<'a, u32> {
        Box::pin(async move {
            self.run_prompt(tokens, pos0, Readback::Argmax)?;
            self.read_id().await
        })
    }

    fn prefill_method(&self) -> String {
        if self.max_rows == 1 {
            return "token by token, one submission per token, no readback until the last".into();
        }
        format!(
            "batched: up to {} tokens per pass (tiled matrix-matrix kernel, causal batched attention), \
             one submission per pass",
            self.max_rows
        )
    }

    fn gpu_memory(&self) -> Option<GpuMemory> {
        Some(self.memory.clone())
    }

    fn encode_ms(&self) -> Option<f64> {
        Some(self.encode_s * 1e3)
    }

    fn compile_ms(&self) -> Option<f64> {
        Some(self.compile_s * 1e3)
    }

    fn backend(&self) -> String {
        format!(
            "gpu ({}, {}, {} activations)",
            self.gpu.report.name,
            self.gpu.report.backend,
            self.gpu.activations.name()
        )
    }

    fn reset(&mut self) {}

    fn kv_bytes(&self) -> usize {
        self.memory.kv_cache as usize
    }

    fn context_limit(&self) -> usize {
        match self.kv.window {
            Some(_) => usize::MAX,
            None => self.config.seq_len,
        }
    }
}
