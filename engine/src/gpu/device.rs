//! Opening the adapter: its report, limits, activation type, error hooks and the choices made per
//! adapter (the matvec kernel). Options come from the caller (CLI flags, the page), never from the
//! environment.

use super::decoder::{GpuDecoder, PREFILL_ROWS};
use super::kernels::{
    MatvecKernel, Modules, Pipelines, INT8_LONG_MAX_COLS, INT8_LONG_STORAGE, INT8_MAX_COLS,
    KINT8_MAX_COLS,
};
use crate::kv::KvConfig;
use crate::quant::WType;
use crate::{Decoder, Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

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

impl AdapterReport {
    /// "hardware" or "software", and why: wgpu reports a CPU device type for software rasterisers
    /// natively (lavapipe, llvmpipe) and for a browser's fallback adapter (`isFallbackAdapter`:
    /// SwiftShader in Chromium, Firefox on lavapipe); the names catch a driver that says otherwise.
    /// A browser tells no device type, only whether its adapter is the fallback one, so there a
    /// type of "Other" with no software name is hardware (Chromium 148 on an NVIDIA H200 so).
    pub fn kind(&self) -> String {
        let soft_names = ["llvmpipe", "lavapipe", "swiftshader", "softpipe", "warp"];
        let name = format!("{} {}", self.name, self.driver).to_lowercase();
        if self.device_type == "Cpu" {
            format!("software ({})", self.name)
        } else if let Some(n) = soft_names.iter().find(|n| name.contains(*n)) {
            format!("software ({n})")
        } else if matches!(
            self.device_type.as_str(),
            "DiscreteGpu" | "IntegratedGpu" | "VirtualGpu"
        ) {
            format!("hardware ({})", self.name)
        } else if self.backend == "BrowserWebGpu" && self.device_type == "Other" {
            format!(
                "hardware ({}; not the browser's fallback adapter)",
                self.name
            )
        } else {
            format!("unknown ({}, device type {})", self.name, self.device_type)
        }
    }

    // The binding limit is u64 natively and u32 on wasm32.
    #[allow(clippy::unnecessary_cast)]
    fn of(info: &wgpu::AdapterInfo, limits: &wgpu::Limits, features: wgpu::Features) -> Self {
        let shader_f16 = features.contains(wgpu::Features::SHADER_F16);
        AdapterReport {
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
        }
    }
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

    /// Appends the first `n` values of `bytes` (activations of this type) as f32.
    pub(super) fn extend_f32(self, bytes: &[u8], n: usize, out: &mut Vec<f32>) {
        match self {
            Activations::F32 => out.extend_from_slice(&bytemuck::cast_slice::<u8, f32>(bytes)[..n]),
            Activations::F16 => out.extend(
                bytes[..2 * n]
                    .chunks_exact(2)
                    .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32()),
            ),
        }
    }

    pub(super) fn bytes(self) -> usize {
        match self {
            Activations::F16 => 2,
            Activations::F32 => 4,
        }
    }
}

/// What a pipeline keeps of wgpu's safety code. wgpu adds, for WebGPU's untrusted shaders, bounds
/// checks (clamps on every array index natively, where the driver's robust access does not cover it),
/// a counter in every loop, guards on every integer division, and zeroes workgroup memory before each
/// workgroup. nibble's kernels index within bindings whose sizes come from the same shapes as their
/// parameters (wgpu validates each binding against its buffer), loop to parameter bounds, divide by
/// block sizes validated at load, and write workgroup memory before reading it; so natively they may
/// run without them (`create_shader_module_trusted`). A browser keeps every check whatever is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShaderChecks {
    /// Bounds checks, loop bounding and division guards (wgpu's `ShaderRuntimeChecks`).
    pub runtime: bool,
    /// Zero-initialised workgroup memory.
    pub zero_init: bool,
}

impl ShaderChecks {
    pub const ON: ShaderChecks = ShaderChecks {
        runtime: true,
        zero_init: true,
    };
    pub const OFF: ShaderChecks = ShaderChecks {
        runtime: false,
        zero_init: false,
    };

    /// `on`, `off`, `runtime` (runtime checks only) or `zero-init` (zeroing only).
    pub fn parse(s: &str) -> Result<ShaderChecks> {
        let (runtime, zero_init) = match s {
            "on" => (true, true),
            "off" => (false, false),
            "runtime" => (true, false),
            "zero-init" => (false, true),
            _ => {
                return Err(Error::Invalid(format!(
                    "shader checks {s:?}: expected on, off, runtime or zero-init"
                )))
            }
        };
        Ok(ShaderChecks { runtime, zero_init })
    }

    pub fn name(self) -> &'static str {
        match (self.runtime, self.zero_init) {
            (true, true) => "on",
            (false, false) => "off",
            (true, false) => "runtime",
            (false, true) => "zero-init",
        }
    }

    /// The checks a host can drop: all natively, none in a browser.
    fn effective(wanted: Option<ShaderChecks>) -> ShaderChecks {
        if cfg!(target_arch = "wasm32") {
            ShaderChecks::ON
        } else {
            wanted.unwrap_or(ShaderChecks::OFF)
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
    /// The decode matvec kernel; default: `Row` on a CPU adapter, else `Tiled` (a browser times both,
    /// [`Gpu::tune_matvec`]).
    pub matvec: Option<MatvecKernel>,
    /// At most this many rows per batched prompt pass (1: token by token), as llama.cpp's
    /// `--ubatch-size`; default and ceiling [`PREFILL_ROWS`].
    pub prefill_rows: Option<usize>,
    /// wgpu's shader safety code; default: none natively, all in a browser ([`ShaderChecks`]).
    pub shader_checks: Option<ShaderChecks>,
    /// Ask for timestamps inside passes (where the adapter has them), for per-kernel GPU times.
    pub profile: bool,
    /// Sum the matrix kernels' rows with subgroup operations (true), in workgroup memory (false);
    /// default false (measured slower on an H200; see `subgroup_choice`).
    pub subgroups: Option<bool>,
    /// Lay each layer's Q, K and V weights out in shared buffers, so decode runs the three products
    /// (and RoPE) as one kernel where the matvec kernel allows; default true (false: apart, to compare).
    pub fuse_qkv: Option<bool>,
    /// Fold each decode RMSNorm into the product that reads it where that kernel can (the fused
    /// integer-dot kernels of `MatvecKernel::TiledInt8`; the fused f16 ones with f16 activations),
    /// saving its dispatch; default true.
    pub fold_norm: Option<bool>,
    /// Let a decode step's fused Q/K/V kernel store K and V in an f16 KV cache itself (f16
    /// activations, RoPE in the kernel), saving `kv_store`'s dispatch; default true (7B q4_0 decode on
    /// an H200: 3.842 -> 3.740 ms/token, `benchmarks/2026-12-04-h200-attention.md`).
    pub kv_direct: Option<bool>,
    /// Run the integer-dot decode kernels (`matvec4_q4i`, `_glu_q4i`, `_qkv_q4i`) on at most this
    /// many workgroups, each quantizing x once and looping over row groups; 0: a workgroup per 8
    /// rows, each staging x; default none: that until a benchmark times the grid on its model
    /// (`GpuDecoder::tune_grid`).
    pub int8_groups: Option<u32>,
    /// Multiply prompt products of f16 weights in f16 (`matmul_h`), as llama.cpp's Vulkan GEMM
    /// does; default: wherever activations are f16 (ARCHITECTURE.md, "Batched prefill"). Asked for
    /// with f32 activations, the device does not open.
    pub half_math: Option<bool>,
    /// Run f16-math prompt products in 128 x 128 tiles (`matmul_h128`): default where the grid
    /// has enough workgroups (`TALL_MIN_GROUPS`); true: every pass of more than 64 tokens; false:
    /// never.
    pub tall_tiles: Option<bool>,
}

/// Whether prompt products of f16 weights multiply in f16: as asked, else wherever activations are
/// f16; asked for with f32 activations, an error.
fn half_math_choice(asked: Option<bool>, activations: Activations) -> Result<bool> {
    match asked {
        Some(true) if activations != Activations::F16 => {
            Err(Error::Gpu("f16 math needs f16 activations".into()))
        }
        h => Ok(activations == Activations::F16 && h.unwrap_or(true)),
    }
}

/// Whether the matrix kernels sum rows with subgroups, and why (for results): only where asked for
/// (and the adapter has them at most 32 lanes wide, so a 32-lane row is whole subgroups). By default
/// the sum in workgroup memory (then a tree): on an H200 it decoded 7B q4_0 at 4.451 ms/token
/// against subgroupAdd's 4.496 in one call (`benchmarks/2026-12-03-h200-qkv.md`).
fn subgroup_choice(
    asked: Option<bool>,
    info: &wgpu::AdapterInfo,
    features: wgpu::Features,
) -> Result<(bool, String)> {
    let has = features.contains(wgpu::Features::SUBGROUP);
    let (min, max) = (info.subgroup_min_size, info.subgroup_max_size);
    let fits = has && max <= 32;
    let sizes = format!("subgroups of {min}-{max} lanes");
    match asked {
        Some(true) if !fits => Err(Error::Gpu(format!(
            "subgroup reductions need subgroups of at most 32 lanes; {} has {}",
            info.name,
            if has { sizes } else { "none".into() }
        ))),
        Some(true) => Ok((
            true,
            format!("rows summed with subgroupAdd ({sizes}), set by the caller"),
        )),
        Some(false) => Ok((
            false,
            "rows summed in workgroup memory, set by the caller".into(),
        )),
        None if has => Ok((
            false,
            format!("rows summed in workgroup memory (the default; {sizes})"),
        )),
        None => Ok((
            false,
            "rows summed in workgroup memory (no subgroups)".into(),
        )),
    }
}

/// The decode matvec kernel and why, with the row-sum (`sums`) and Q/K/V choices, for results.
fn matvec_choice(
    opts: &GpuOptions,
    report: &AdapterReport,
    sums: &str,
    int8: bool,
) -> (MatvecKernel, String) {
    let (matvec, why) = match opts.matvec {
        Some(k) => (k, format!("{k:?}, set by the caller")),
        None if report.device_type == "Cpu" => (MatvecKernel::Row, "Row for a Cpu adapter".into()),
        // Natively, where WGSL has packed integer dot products: 7B q4_0 decode on an H200 3.821
        // ms/token against Tiled's 4.353 (benchmarks/2026-12-04-h200-fold.md). Browsers start on
        // Tiled and time it against Row and TiledInt8 (`Gpu::tune_matvec`).
        None if int8 && !cfg!(target_arch = "wasm32") => (
            MatvecKernel::TiledInt8,
            format!(
                "TiledInt8 for a {} adapter with packed integer dot products",
                report.device_type
            ),
        ),
        None => (
            MatvecKernel::Tiled,
            format!("Tiled for a {} adapter", report.device_type),
        ),
    };
    let qkv = match opts.fuse_qkv {
        Some(false) => "Q/K/V apart, set by the caller",
        _ => "Q/K/V in one kernel where q4_0, q8_0, f16 or K-quants (Q and K Q4_K, Q5_K or Q6_K, V any of them)",
    };
    let norm = match opts.fold_norm {
        Some(false) => "; RMSNorm apart, set by the caller",
        _ => "; RMSNorm folded into the next product where its kernel can (integer-dot; f16, q8_0 and K-quants with f16 activations)",
    };
    let kv = match opts.kv_direct {
        Some(false) => "; K and V stored by their own kernel, set by the caller",
        _ => "; K and V stored in f16 caches by the Q/K/V kernel where both are f16",
    };
    let groups = match opts.int8_groups {
        Some(0) => {
            "; integer-dot decode kernels on a workgroup per row group, set by the caller".into()
        }
        Some(n) => {
            format!("; integer-dot decode kernels on at most {n} workgroups, set by the caller")
        }
        None => String::new(),
    };
    let storage = report.limits.max_compute_workgroup_storage_size;
    let rows = match (int8, int8_long(int8, report)) {
        (false, _) => String::new(),
        (true, true) => format!("; integer-dot decode rows up to {INT8_LONG_MAX_COLS} values"),
        (true, false) => format!(
            "; integer-dot decode rows up to {INT8_MAX_COLS} values (q4_0) and {KINT8_MAX_COLS} (K-quants), longer ones in floats"
        ),
    };
    let why = format!("{why}; {sums}; {qkv}{norm}{kv}{groups}{rows}");
    let note = format!("{why} ({storage} bytes of workgroup memory)");
    (matvec, note)
}

/// Whether the adapter gives the long integer-dot modules (`MatvecKernel::for_matrix`) their memory.
fn int8_long(int8: bool, report: &AdapterReport) -> bool {
    int8 && report.limits.max_compute_workgroup_storage_size >= INT8_LONG_STORAGE
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
    /// Rows per batched prompt pass at most (before binding limits).
    pub prefill_rows: usize,
    /// The shader safety code pipelines keep.
    pub shader_checks: ShaderChecks,
    /// Whether passes can be timed kernel by kernel (asked for, and the adapter writes timestamps
    /// inside passes).
    pub timestamps: bool,
    /// Whether the matrix kernels sum rows with subgroup operations (`reduce_subgroup.wgsl`);
    /// [`Gpu::matvec_choice`] says why.
    pub subgroups: bool,
    /// Whether uploads share Q, K and V buffers per layer ([`GpuOptions::fuse_qkv`]).
    pub fuse_qkv: bool,
    /// Whether decode folds RMSNorm into the next product where it can ([`GpuOptions::fold_norm`]).
    pub fold_norm: bool,
    /// Whether the Q/K/V kernel stores K and V in f16 caches ([`GpuOptions::kv_direct`]).
    pub kv_direct: bool,
    /// The integer-dot decode kernels' workgroups at most, as the caller set them (0: a workgroup
    /// per row group); where set, decoders do not time their own (`GpuDecoder::tune_grid`).
    pub int8_groups: Option<u32>,
    /// Whether prompt products of f16 weights multiply in f16 ([`GpuOptions::half_math`]).
    pub half_math: bool,
    /// [`GpuOptions::tall_tiles`] as asked.
    pub tall_tiles: Option<bool>,
    /// Whether WGSL has `packed_4x8_integer_dot_product` here (`MatvecKernel::TiledInt8` can run).
    pub packed_dot: bool,
    /// Whether the adapter gives the long integer-dot modules their workgroup memory, so that rows
    /// up to 22528 values take the integer kernels (`MatvecKernel::for_matrix`).
    pub int8_long: bool,
    /// Every kernel's pipeline, compiled for the first decoder and shared by the next: a browser
    /// compiles each pipeline when it first runs (SwiftShader: seconds), and only once per object.
    pipelines: std::cell::RefCell<Option<std::rc::Rc<Pipelines>>>,
    /// Its shader modules, shared by the pipelines and `check_modules`.
    modules: std::rc::Rc<Modules>,
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
        let stamps =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let timestamps = opts.profile && features.contains(stamps);
        let mut required_features = if activations == Activations::F16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        if timestamps {
            required_features |= stamps;
        }
        let (subgroups, sums) = subgroup_choice(opts.subgroups, &info, features)?;
        if subgroups {
            required_features |= wgpu::Features::SUBGROUP;
        }
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
        let errors = error_sink(&device);
        let report = AdapterReport::of(&info, &limits, features);
        let adapter_max =
            (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        let int8 = instance
            .wgsl_language_features()
            .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct);
        let (matvec, why) = matvec_choice(&opts, &report, &sums, int8);
        let half_math = half_math_choice(opts.half_math, activations)?;
        let shader_checks = ShaderChecks::effective(opts.shader_checks);
        let modules = Modules::new(&device, activations, shader_checks, subgroups).into();
        Ok(Gpu {
            device,
            queue,
            max_binding: opts.max_binding.map_or(adapter_max, |m| m.min(adapter_max)),
            activations,
            matvec: matvec.into(),
            matvec_choice: why.into(),
            prefill_rows: opts
                .prefill_rows
                .unwrap_or(PREFILL_ROWS)
                .clamp(1, PREFILL_ROWS),
            shader_checks,
            timestamps,
            subgroups,
            fuse_qkv: opts.fuse_qkv.unwrap_or(true),
            fold_norm: opts.fold_norm.unwrap_or(true),
            kv_direct: opts.kv_direct.unwrap_or(true),
            int8_groups: opts.int8_groups,
            half_math,
            tall_tiles: opts.tall_tiles,
            packed_dot: int8,
            int8_long: int8_long(int8, &report),
            pipelines: Default::default(),
            modules,
            report,
            errors,
        })
    }

    /// The pipelines of this device, created on first use.
    pub(super) fn pipelines(&self) -> std::rc::Rc<Pipelines> {
        self.pipelines
            .borrow_mut()
            .get_or_insert_with(|| std::rc::Rc::new(Pipelines::new(self.modules.clone())))
            .clone()
    }

    /// What results record of the kernel choices: the matvec choice and why (which tuning and
    /// callers replace), then the prompt products' arithmetic for f16 weights.
    pub fn kernel_note(&self) -> String {
        let half = if self.half_math {
            match self.tall_tiles {
                None => "prompt products of f16 weights in f16 math (matmul_h, matmul_h128 where its grid has 256 workgroups)",
                Some(true) => "prompt products of f16 weights in f16 math (matmul_h, matmul_h128 in passes of over 64 rows)",
                Some(false) => "prompt products of f16 weights in f16 math (matmul_h)",
            }
        } else {
            "prompt products of f16 weights in f32 math"
        };
        format!("{}; {half}", self.matvec_choice.borrow())
    }

    pub fn matvec_kernel(&self) -> MatvecKernel {
        self.matvec.get()
    }

    /// The activations accuracy is judged by (the scenarios' `Tolerance`): "q8" where the q4_0 and
    /// K-quant products quantize x to 8 bits (`TiledInt8`), else the activation type.
    pub fn products_activations(&self) -> &'static str {
        match self.matvec_kernel() {
            MatvecKernel::TiledInt8 => "q8",
            _ => self.activations.name(),
        }
    }

    /// Uses `k` for decoders made from now on (tests run both kernels on one adapter).
    pub fn set_matvec_kernel(&self, k: MatvecKernel) {
        self.matvec.set(k);
        *self.matvec_choice.borrow_mut() = format!("{k:?}, set by the caller");
    }

    /// Times the matvec kernels on the built-in model at q4_0 and keeps the fastest: in a browser the
    /// adapter does not say whether it runs on a CPU. Tiled and Row, and TiledInt8 where WGSL has
    /// packed integer dot products (accuracy is then judged as 8-bit activations,
    /// [`Gpu::products_activations`]). Answers what was measured.
    pub async fn tune_matvec(&self) -> Result<String> {
        let wc = crate::precision::WeightConfig {
            default: Some(WType::Q4_0),
            ..Default::default()
        };
        let (m, _) = crate::Model::synthetic_with(crate::Preset::Tiny, 1, &wc)?;
        // The fastest so far: kernel, ms/token, its 36-token run's seconds.
        let mut best: Option<(MatvecKernel, f64, f64)> = None;
        let mut notes = Vec::new();
        let mut kernels = vec![MatvecKernel::Tiled, MatvecKernel::Row];
        if self.packed_dot {
            kernels.push(MatvecKernel::TiledInt8);
        }
        for k in kernels {
            self.matvec.set(k);
            let mut d = GpuDecoder::new(self, &m, KvConfig::default())?;
            // GPU-resident greedy runs, ids read back once each: the 36-token run less the 4-token
            // one is 32 tokens of kernels, the readback's latency (Firefox's ~100 ms) cancelling.
            d.decode_greedy(1, 0, 4).await?;
            let t0 = web_time::Instant::now();
            d.decode_greedy(1, 4, 4).await?;
            let short = t0.elapsed().as_secs_f64();
            // A 4-token run longer than the fastest kernel's 36-token run settles it (SwiftShader's
            // integer kernels: half a second a token, 18 s for the long run).
            if let Some((b, _, b_long)) = best.filter(|&(.., l)| short > l) {
                notes.push(format!(
                    "{k:?} stopped (4 tokens took {:.1} ms against {b:?}'s 36 in {:.1})",
                    short * 1e3,
                    b_long * 1e3
                ));
                continue;
            }
            let t0 = web_time::Instant::now();
            d.decode_greedy(1, 8, 36).await?;
            let long = t0.elapsed().as_secs_f64();
            let ms = ((long - short) * 1e3 / 32.0).max(0.0);
            notes.push(format!("{k:?} {ms:.2} ms/token"));
            if best.is_none_or(|(_, b, _)| ms < b) {
                best = Some((k, ms, long));
            }
        }
        let (k, ..) = best.expect("the first kernel is always timed");
        self.matvec.set(k);
        let note = format!(
            "{k:?}, timed on the built-in model at q4_0 (32 greedy tokens on the GPU, readback \
             latency cancelled): {}",
            notes.join(", ")
        );
        *self.matvec_choice.borrow_mut() = note.clone();
        Ok(note)
    }

    /// Compiles every shader module of the kernel table as this device would run it (its activation
    /// type and row sums), making no pipeline: most kernels compile only when a model first needs
    /// them (a K-quant file's, the integer-dot ones), so a browser's compiler (Tint in Chromium,
    /// Naga in Firefox, WebKit's) would otherwise reject one only in front of that model. The
    /// modules checked, or the first one rejected with the compiler's messages.
    pub async fn check_modules(&self) -> Result<String> {
        let modules = super::kernels::modules(
            self.packed_dot,
            self.int8_long,
            self.activations == Activations::F16,
        );
        for &(name, parts) in &modules {
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            // The modules the pipelines will use (natively without runtime checks, where chosen).
            let m = self.modules.get(name, parts);
            let info = m.get_compilation_info().await;
            let errors: Vec<String> = info
                .messages
                .iter()
                .filter(|m| m.message_type == wgpu::CompilationMessageType::Error)
                .map(|m| m.message.clone())
                .collect();
            let scoped = scope.pop().await;
            if !errors.is_empty() || scoped.is_some() {
                // The scope repeats the compiler's messages where it gave any.
                let why = scoped.filter(|_| errors.is_empty()).map(|e| e.to_string());
                return Err(Error::Gpu(format!(
                    "shader module {name} does not compile on {} ({:?} activations): {}",
                    self.report.name,
                    self.activations,
                    errors
                        .into_iter()
                        .chain(why)
                        .collect::<Vec<_>>()
                        .join("; ")
                        .trim()
                )));
            }
        }
        let sums = if self.subgroups {
            "subgroup"
        } else {
            "workgroup-memory"
        };
        Ok(format!(
            "all {} shader modules compile ({:?} activations, {sums} row sums{})",
            modules.len(),
            self.activations,
            if self.packed_dot {
                ", integer dot products"
            } else {
                "; no packed integer dot products, so not the integer-dot modules"
            }
        ))
    }

    /// Blocking [`Gpu::open`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_blocking(opts: GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::open(opts))
    }

    pub(super) fn check_errors(&self) -> Result<()> {
        let mut e = self.errors.lock().unwrap();
        if e.is_empty() {
            return Ok(());
        }
        Err(Error::Gpu(summarize(e.drain(..))))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(GPU_TIMEOUT),
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_errors()
    }
}

/// Where a device's uncaught validation errors and its loss are collected (`Gpu::check_errors`
/// reports them with the operation that found them).
fn error_sink(device: &wgpu::Device) -> Arc<Mutex<Vec<String>>> {
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
    errors
}

/// The errors a device reported, each message once with its count: one failing command repeats its
/// error on every submission.
fn summarize(errors: impl Iterator<Item = String>) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for m in errors {
        match seen.iter_mut().find(|(s, _)| *s == m) {
            Some((_, n)) => *n += 1,
            None => seen.push((m, 1)),
        }
    }
    seen.iter()
        .map(|(m, n)| match n {
            1 => m.trim_end().to_string(),
            _ => format!("{} ({n} times)", m.trim_end()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Pops an error scope; natively waits for its verdict. In the browser the verdict arrives later, and
/// out-of-memory surfaces through the uncaptured-error hook instead.
pub(super) fn pop_error_scope(scope: wgpu::ErrorScopeGuard) -> Option<wgpu::Error> {
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

#[cfg(test)]
mod tests;
