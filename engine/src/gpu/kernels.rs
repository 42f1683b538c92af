//! The kernel table: each kernel's WGSL entry point and the shader files its module is built from, the
//! pipelines made from it, and the binding keys. Pipeline creation, bind groups and dispatch all go
//! through [`BindKey::kernel`] and [`TABLE`], so a new kernel is its WGSL file, one [`Kernel`] variant
//! with its table entry, and its bindings in `bind.rs` (`GpuDecoder::kernel_entries`).

use super::device::{Activations, ShaderChecks};
use crate::dtype::WType;
use crate::forward::Act;
use crate::model::TensorId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const ACT_F32: &str = include_str!("../../../shaders/act_f32.wgsl");
const ACT_F16: &str = include_str!("../../../shaders/act_f16.wgsl");
const STEP: &str = include_str!("../../../shaders/step.wgsl");
const QUANT: &str = include_str!("../../../shaders/quant.wgsl");
const MATRIX: &str = include_str!("../../../shaders/matrix.wgsl");
const MATVEC: &str = include_str!("../../../shaders/matvec.wgsl");
const MATVEC4: &str = include_str!("../../../shaders/matvec4.wgsl");
const MATVEC4_INT8: &str = include_str!("../../../shaders/matvec4_int8.wgsl");
const MATMUL_INT8: &str = include_str!("../../../shaders/matmul_int8.wgsl");
const MATVEC4_NORM: &str = include_str!("../../../shaders/matvec4_norm.wgsl");
const MATVEC4_KQUANT: &str = include_str!("../../../shaders/matvec4_kquant.wgsl");
const MATVEC4_KQUANT_X: &str = include_str!("../../../shaders/matvec4_kquant_x.wgsl");
const MATVEC4_KQUANT_NORM: &str = include_str!("../../../shaders/matvec4_kquant_norm.wgsl");
const KQUANT: &str = include_str!("../../../shaders/kquant.wgsl");
const NORM: &str = include_str!("../../../shaders/norm.wgsl");
const ROPE: &str = include_str!("../../../shaders/rope.wgsl");
const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
const KV: &str = include_str!("../../../shaders/kv.wgsl");
const KVFORMAT: &str = include_str!("../../../shaders/kvformat.wgsl");
const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
const ARGMAX: &str = include_str!("../../../shaders/argmax.wgsl");
const REDUCE_SHARED: &str = include_str!("../../../shaders/reduce_shared.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../../../shaders/reduce_subgroup.wgsl");
/// Where a module takes `row_sum`: reduce_subgroup.wgsl where the device uses subgroups, else
/// reduce_shared.wgsl ([`module_source`]).
const REDUCE: &str = "// row_sum: reduce_shared.wgsl or reduce_subgroup.wgsl\n";

/// Every compute kernel, in [`TABLE`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kernel {
    Matvec,
    Matvec4F32,
    Matvec4F16,
    Matvec4Q8,
    Matvec4Q4,
    Matvec4Q4C,
    Matvec4GluQ4C,
    Matvec4GluF16,
    Matvec4QkvQ4C,
    Matvec4QkvF16,
    Matvec4Q4I,
    Matvec4GluQ4I,
    Matvec4QkvQ4I,
    Matvec4GluF16N,
    Matvec4QkvF16N,
    Matvec4Q4K,
    Matvec4GluK,
    Matvec4Q5K,
    Matvec4QkvK,
    Matvec4GluKN,
    Matvec4QkvKN,
    Matvec4GluQ6K,
    Matvec4GluQ6KN,
    Matvec4GluQ8,
    Matvec4QkvQ8,
    Matvec4GluQ8N,
    Matvec4QkvQ8N,
    Matmul,
    MatmulQ4I,
    MatvecAny,
    MatvecRow,
    MatvecK,
    MatvecKRow,
    Embed,
    Rmsnorm,
    HeadNorm,
    RopeQk,
    Add,
    AddBias,
    Swiglu,
    Geglu,
    Scale,
    Softcap,
    KvStore,
    KiviFlush,
    Attention,
    AttnTile,
    AttnSplit,
    AttnCombine,
    Argmax,
}

/// A kernel's entry point and its module: the shader files after the activation alias and the
/// generated type codes (WGSL has no includes). Kernels of one module share its compilation.
pub(super) struct KernelDef {
    pub kernel: Kernel,
    pub entry: &'static str,
    pub module: &'static str,
    pub parts: &'static [&'static str],
}

const MATVEC_MODULE: &[&str] = &[STEP, QUANT, MATRIX, MATVEC, KQUANT];
const MATMUL_INT8_MODULE: &[&str] = &[STEP, QUANT, MATRIX, MATVEC, KQUANT, MATMUL_INT8];
const KV_MODULE: &[&str] = &[STEP, KVFORMAT, KV];

macro_rules! def {
    ($k:ident, $entry:literal, $module:literal, $parts:expr) => {
        KernelDef {
            kernel: Kernel::$k,
            entry: $entry,
            module: $module,
            parts: $parts,
        }
    };
}

const ATTENTION_MODULE: &[&str] = &[STEP, KVFORMAT, ATTENTION];

const MATVEC4_MODULE: &[&str] = &[STEP, QUANT, MATRIX, REDUCE, MATVEC4];
const MATVEC4_NORM_MODULE: &[&str] = &[STEP, QUANT, MATRIX, REDUCE, MATVEC4, MATVEC4_NORM];
// The K-quant kernels without a folded norm declare no staging memory: their x8 reads x alone.
const MATVEC4_KQUANT_MODULE: &[&str] = &[
    STEP,
    QUANT,
    MATRIX,
    REDUCE,
    MATVEC4,
    MATVEC4_KQUANT_X,
    MATVEC4_KQUANT,
];
const MATVEC4_KQUANT_NORM_MODULE: &[&str] = &[
    STEP,
    QUANT,
    MATRIX,
    REDUCE,
    MATVEC4,
    MATVEC4_NORM,
    MATVEC4_KQUANT_NORM,
    MATVEC4_KQUANT,
];
const MATVEC4_INT8_MODULE: &[&str] = &[
    STEP,
    QUANT,
    MATRIX,
    REDUCE,
    MATVEC4,
    MATVEC4_NORM,
    MATVEC4_INT8,
];

pub(super) const TABLE: [KernelDef; 50] = [
    def!(Matvec, "matvec", "matvec", MATVEC_MODULE),
    def!(Matvec4F32, "matvec4_f32", "matvec4", MATVEC4_MODULE),
    def!(Matvec4F16, "matvec4_f16", "matvec4", MATVEC4_MODULE),
    def!(Matvec4Q8, "matvec4_q8", "matvec4", MATVEC4_MODULE),
    def!(Matvec4Q4, "matvec4_q4", "matvec4", MATVEC4_MODULE),
    def!(Matvec4Q4C, "matvec4_q4c", "matvec4", MATVEC4_MODULE),
    def!(Matvec4GluQ4C, "matvec4_glu_q4c", "matvec4", MATVEC4_MODULE),
    def!(Matvec4GluF16, "matvec4_glu_f16", "matvec4", MATVEC4_MODULE),
    def!(Matvec4QkvQ4C, "matvec4_qkv_q4c", "matvec4", MATVEC4_MODULE),
    def!(Matvec4QkvF16, "matvec4_qkv_f16", "matvec4", MATVEC4_MODULE),
    def!(
        Matvec4Q4I,
        "matvec4_q4i",
        "matvec4_int8",
        MATVEC4_INT8_MODULE
    ),
    def!(
        Matvec4GluQ4I,
        "matvec4_glu_q4i",
        "matvec4_int8",
        MATVEC4_INT8_MODULE
    ),
    def!(
        Matvec4QkvQ4I,
        "matvec4_qkv_q4i",
        "matvec4_int8",
        MATVEC4_INT8_MODULE
    ),
    def!(
        Matvec4GluF16N,
        "matvec4_glu_f16n",
        "matvec4_norm",
        MATVEC4_NORM_MODULE
    ),
    def!(
        Matvec4QkvF16N,
        "matvec4_qkv_f16n",
        "matvec4_norm",
        MATVEC4_NORM_MODULE
    ),
    def!(
        Matvec4Q4K,
        "matvec4_q4k",
        "matvec4_kquant",
        MATVEC4_KQUANT_MODULE
    ),
    def!(
        Matvec4GluK,
        "matvec4_glu_k",
        "matvec4_kquant",
        MATVEC4_KQUANT_MODULE
    ),
    def!(
        Matvec4Q5K,
        "matvec4_q5k",
        "matvec4_kquant",
        MATVEC4_KQUANT_MODULE
    ),
    def!(
        Matvec4QkvK,
        "matvec4_qkv_k",
        "matvec4_kquant",
        MATVEC4_KQUANT_MODULE
    ),
    def!(
        Matvec4GluKN,
        "matvec4_glu_kn",
        "matvec4_kquant_norm",
        MATVEC4_KQUANT_NORM_MODULE
    ),
    def!(
        Matvec4QkvKN,
        "matvec4_qkv_kn",
        "matvec4_kquant_norm",
        MATVEC4_KQUANT_NORM_MODULE
    ),
    def!(
        Matvec4GluQ6K,
        "matvec4_glu_q6k",
        "matvec4_kquant",
        MATVEC4_KQUANT_MODULE
    ),
    def!(
        Matvec4GluQ6KN,
        "matvec4_glu_q6kn",
        "matvec4_kquant_norm",
        MATVEC4_KQUANT_NORM_MODULE
    ),
    def!(Matvec4GluQ8, "matvec4_glu_q8", "matvec4", MATVEC4_MODULE),
    def!(Matvec4QkvQ8, "matvec4_qkv_q8", "matvec4", MATVEC4_MODULE),
    def!(
        Matvec4GluQ8N,
        "matvec4_glu_q8n",
        "matvec4_norm",
        MATVEC4_NORM_MODULE
    ),
    def!(
        Matvec4QkvQ8N,
        "matvec4_qkv_q8n",
        "matvec4_norm",
        MATVEC4_NORM_MODULE
    ),
    def!(Matmul, "matmul", "matvec", MATVEC_MODULE),
    def!(MatmulQ4I, "matmul_q4i", "matmul_int8", MATMUL_INT8_MODULE),
    def!(MatvecAny, "matvec_any", "matvec", MATVEC_MODULE),
    def!(MatvecRow, "matvec_row", "matvec", MATVEC_MODULE),
    def!(MatvecK, "matvec_k", "matvec", MATVEC_MODULE),
    def!(MatvecKRow, "matvec_k_row", "matvec", MATVEC_MODULE),
    def!(Embed, "embed", "matvec", MATVEC_MODULE),
    def!(Rmsnorm, "rmsnorm", "norm", &[NORM]),
    def!(HeadNorm, "head_norm", "norm", &[NORM]),
    def!(RopeQk, "rope_qk", "rope", &[ROPE]),
    def!(Add, "add", "elementwise", &[ELEMENTWISE]),
    def!(AddBias, "add_bias", "elementwise", &[ELEMENTWISE]),
    def!(Swiglu, "swiglu", "elementwise", &[ELEMENTWISE]),
    def!(Geglu, "geglu", "elementwise", &[ELEMENTWISE]),
    def!(Scale, "scale", "elementwise", &[ELEMENTWISE]),
    def!(Softcap, "softcap", "elementwise", &[ELEMENTWISE]),
    def!(KvStore, "kv_store", "kv", KV_MODULE),
    def!(KiviFlush, "kivi_flush", "kv", KV_MODULE),
    def!(Attention, "attention", "attention", ATTENTION_MODULE),
    def!(AttnTile, "attention_tile", "attention", ATTENTION_MODULE),
    def!(AttnSplit, "attention_split", "attention", ATTENTION_MODULE),
    def!(
        AttnCombine,
        "attention_combine",
        "attention",
        ATTENTION_MODULE
    ),
    def!(Argmax, "argmax", "argmax", &[STEP, ARGMAX]),
];

/// The WGSL source of a module: the activation alias first (`enable f16;` must open a module, and in
/// a browser `enable subgroups;` with it where `subgroups` and the module sums rows), the storage type codes
/// from `dtype.rs`, then the module's files, [`REDUCE`] replaced by the chosen `row_sum`.
pub(super) fn module_source(act: Activations, parts: &[&str], subgroups: bool) -> String {
    let alias = match act {
        Activations::F16 => ACT_F16,
        Activations::F32 => ACT_F32,
    };
    let sums = parts.contains(&REDUCE);
    let mut s = String::new();
    // Browsers (Tint) require the directive; naga (wgpu 30) refuses it and takes subgroup
    // operations when the device has the feature.
    if sums && subgroups && cfg!(target_arch = "wasm32") {
        s += "enable subgroups;\n";
    }
    s += alias;
    s += &crate::dtype::wgsl_constants();
    for &p in parts {
        s += match p {
            REDUCE if subgroups => REDUCE_SUBGROUP,
            REDUCE => REDUCE_SHARED,
            p => p,
        };
    }
    s
}

/// Each shader module once, in [`TABLE`] order, with its files; the integer-dot modules only where
/// WGSL has `packed_4x8_integer_dot_product` (`packed_dot`).
pub(super) fn modules(packed_dot: bool) -> Vec<(&'static str, &'static [&'static str])> {
    let mut out: Vec<(&str, &[&str])> = Vec::new();
    for d in &TABLE {
        let int8 = d.parts.contains(&MATVEC4_INT8) || d.parts.contains(&MATMUL_INT8);
        if (packed_dot || !int8) && !out.iter().any(|(m, _)| *m == d.module) {
            out.push((d.module, d.parts));
        }
    }
    out
}

/// Kernels compiled on first use, not with the others: the integer-dot kernels' module needs WGSL's
/// `packed_4x8_integer_dot_product`, which not every browser has, and only some choices run them;
/// the f16 kernels with a norm folded in run only for f16 weights, the K-quant and fused q8_0 kernels
/// only for those weights.
const ON_FIRST_USE: &[Kernel] = &[
    Kernel::Geglu,
    Kernel::Scale,
    Kernel::Softcap,
    Kernel::Matvec4Q4I,
    Kernel::Matvec4GluQ4I,
    Kernel::Matvec4QkvQ4I,
    Kernel::Matvec4GluF16N,
    Kernel::Matvec4QkvF16N,
    Kernel::Matvec4Q4K,
    Kernel::Matvec4GluK,
    Kernel::Matvec4Q5K,
    Kernel::Matvec4QkvK,
    Kernel::Matvec4GluKN,
    Kernel::Matvec4QkvKN,
    Kernel::Matvec4GluQ6K,
    Kernel::Matvec4GluQ6KN,
    Kernel::Matvec4GluQ8,
    Kernel::Matvec4QkvQ8,
    Kernel::Matvec4GluQ8N,
    Kernel::Matvec4QkvQ8N,
    Kernel::MatmulQ4I,
];

/// One compute pipeline per kernel, indexed by [`Kernel`]; each module compiled once.
pub(super) struct Pipelines {
    made: Vec<std::cell::OnceCell<wgpu::ComputePipeline>>,
    modules: std::cell::RefCell<HashMap<&'static str, wgpu::ShaderModule>>,
    device: wgpu::Device,
    act: Activations,
    checks: ShaderChecks,
    subgroups: bool,
}

impl Pipelines {
    pub fn new(
        device: &wgpu::Device,
        act: Activations,
        checks: ShaderChecks,
        subgroups: bool,
    ) -> Pipelines {
        let p = Pipelines {
            made: TABLE.iter().map(|_| std::cell::OnceCell::new()).collect(),
            modules: Default::default(),
            device: device.clone(),
            act,
            checks,
            subgroups,
        };
        for (i, d) in TABLE.iter().enumerate() {
            debug_assert_eq!(d.kernel as usize, i, "TABLE is in Kernel order");
            if !ON_FIRST_USE.contains(&d.kernel) {
                p.get(d.kernel);
            }
        }
        p
    }

    pub fn get(&self, k: Kernel) -> &wgpu::ComputePipeline {
        self.made[k as usize].get_or_init(|| self.make(&TABLE[k as usize]))
    }

    fn make(&self, d: &KernelDef) -> wgpu::ComputePipeline {
        let (device, checks) = (&self.device, self.checks);
        let mut modules = self.modules.borrow_mut();
        let m = modules.entry(d.module).or_insert_with(|| {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(d.module),
                source: wgpu::ShaderSource::Wgsl(
                    module_source(self.act, d.parts, self.subgroups).into(),
                ),
            };
            if checks.runtime {
                device.create_shader_module(desc)
            } else {
                // SAFETY: see `ShaderChecks`: every index stays within bindings sized from
                // the shapes the parameters carry, every loop ends at a parameter bound and
                // every divisor is a validated block size; tests/gpu_checks.rs runs both ways.
                unsafe {
                    device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            }
        });
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(d.entry),
            layout: None,
            module: m,
            entry_point: Some(d.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: checks.zero_init,
                ..Default::default()
            },
            cache: None,
        })
    }
}

/// The decode matrix-vector kernels (matvec.wgsl, matvec4.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatvecKernel {
    /// 8 rows per 256-thread workgroup, 32 lanes per row reading x from storage, lanes reduced in
    /// workgroup memory, codes read 128 bits at a time where the layout allows (`matvec4`) and 32 bits
    /// otherwise, q4 rows with lanes on quarters of blocks (`matvec4_q4c`): for GPUs.
    Tiled,
    /// Tiled, but q4_0 and q4_1 rows in `matvec4_q4` (a whole block per lane), which `Tiled` took
    /// before `matvec4_q4c`; kept to compare with (7B q4_0 on an H200: 6.18 against 5.65 ms/token).
    TiledBlocks,
    /// The same with 32-bit loads everywhere (the kernel before `matvec4`, kept as its fallback and to
    /// compare with).
    Tiled32,
    /// One thread per row, no barriers: for adapters that run on the CPU (lavapipe, SwiftShader),
    /// where each workgroup barrier costs more than the arithmetic.
    Row,
    /// Tiled, but q4_0 products in `matvec4_q4i`, `matvec4_glu_q4i`, `matvec4_qkv_q4i` and the
    /// prompt pass's `matmul_q4i`: x quantized to 8 bits per block of 32 and integer dot products,
    /// as llama.cpp's NVIDIA path, RMSNorm folded into the fused kernels
    /// (`GpuOptions::fold_norm`). Not the oracle's arithmetic (x moves by up to half a step); the
    /// native default where WGSL has packed integer dot products.
    TiledInt8,
}

/// Columns `matvec4_q4i` holds in workgroup memory (`XW_WORDS` words of 8 in matvec4_int8.wgsl).
const INT8_MAX_COLS: usize = 1536 * 8;
/// Columns the kernels with a norm folded in stage as f16 (`XH_VEC4S` in matvec4_norm.wgsl).
const F16N_MAX_COLS: usize = 768 * 8;

impl MatvecKernel {
    pub fn parse(s: &str) -> crate::Result<MatvecKernel> {
        match s {
            "tiled" => Ok(MatvecKernel::Tiled),
            "tiled32" => Ok(MatvecKernel::Tiled32),
            "tiled-blocks" => Ok(MatvecKernel::TiledBlocks),
            "row" => Ok(MatvecKernel::Row),
            "tiled-int8" => Ok(MatvecKernel::TiledInt8),
            _ => Err(crate::Error::Invalid(format!(
                "matvec kernel {s:?}: expected tiled, tiled-blocks, tiled32, row or tiled-int8"
            ))),
        }
    }

    /// The kernel for a matrix of `cols` columns of `ty` in blocks of `block`: the chosen one needs
    /// whole 32-column units (anything else takes the element-wise kernel), and the 128-bit loads of
    /// `matvec4` a row of whole vec4s where no vec4 straddles two blocks, in blocks of a power of two.
    pub(super) fn for_matrix(self, cols: usize, ty: WType, block: usize) -> Kernel {
        // matvec4.wgsl finds a block by shifting: a power of two.
        let pow2 = block.is_power_of_two();
        let vec4 = match ty {
            WType::F32 => Some(Kernel::Matvec4F32),
            WType::F16 => Some(Kernel::Matvec4F16),
            WType::Q8_0 => (pow2 && block >= 16).then_some(Kernel::Matvec4Q8),
            WType::Q4_0 | WType::Q4_1 => (pow2 && block >= 32).then_some(Kernel::Matvec4Q4),
            // Super-blocks of 9 and 11 vec4s; Q6_K's 53 words take 32-bit loads (kquant.wgsl).
            WType::Q4_K => Some(Kernel::Matvec4Q4K),
            WType::Q5_K => Some(Kernel::Matvec4Q5K),
            WType::Q6_K => None,
        };
        let int8 = ty == WType::Q4_0 && cols <= INT8_MAX_COLS;
        let tiled = matches!(self, MatvecKernel::Tiled | MatvecKernel::TiledInt8);
        match (self, vec4) {
            (MatvecKernel::Row, _) if ty.is_k() => Kernel::MatvecKRow,
            (_, Some(k)) if ty.is_k() && (tiled || self == MatvecKernel::TiledBlocks) => k,
            _ if ty.is_k() => Kernel::MatvecK,
            _ if !cols.is_multiple_of(32) => Kernel::MatvecAny,
            (MatvecKernel::TiledInt8, Some(Kernel::Matvec4Q4)) if int8 => Kernel::Matvec4Q4I,
            (_, Some(Kernel::Matvec4Q4)) if tiled => Kernel::Matvec4Q4C,
            (_, Some(k)) if tiled || self == MatvecKernel::TiledBlocks => k,
            (MatvecKernel::Row, _) => Kernel::MatvecRow,
            _ => Kernel::Matvec,
        }
    }

    /// The prompt pass's kernel for a matrix: `matmul_q4i` (integer dot products) for q4_0 rows of
    /// whole blocks of 32 under `TiledInt8`, else the float `matmul`.
    pub(super) fn for_matmul(self, cols: usize, ty: WType, block: usize) -> Kernel {
        let blocks = cols.is_multiple_of(32) && block.is_multiple_of(32);
        if self == MatvecKernel::TiledInt8 && ty == WType::Q4_0 && blocks {
            Kernel::MatmulQ4I
        } else {
            Kernel::Matmul
        }
    }
}

impl Kernel {
    /// Whether this kernel folds a held RMSNorm in (matvec4_norm.wgsl): the fused integer-dot
    /// kernels, and the f16 and Q4_K ones staging x (with f16 activations only;
    /// `GpuDecoder::fold_norm`).
    pub(super) fn folds_norm(self) -> bool {
        self.stages_f16() || matches!(self, Kernel::Matvec4GluQ4I | Kernel::Matvec4QkvQ4I)
    }

    /// Whether this kernel stages the normalised x as f16 (`stage_x_f16`), which only f16
    /// activations store it as.
    pub(super) fn stages_f16(self) -> bool {
        matches!(
            self,
            Kernel::Matvec4GluF16N
                | Kernel::Matvec4QkvF16N
                | Kernel::Matvec4GluKN
                | Kernel::Matvec4QkvKN
                | Kernel::Matvec4GluQ8N
                | Kernel::Matvec4QkvQ8N
                | Kernel::Matvec4GluQ6KN
        )
    }

    /// Whether this kernel declares the norm weights' binding 12 (`matvec4_q4i` shares the
    /// quantization of x that reads it, though it folds no norm).
    pub(super) fn binds_norm(self) -> bool {
        self.folds_norm() || self == Kernel::Matvec4Q4I
    }

    /// Whether this kernel's workgroups loop over row groups a grid apart (matvec4_int8.wgsl), so
    /// that fewer workgroups than groups cover a matrix ([`GpuOptions::int8_groups`]).
    ///
    /// [`GpuOptions::int8_groups`]: super::GpuOptions::int8_groups
    pub(super) fn loops_groups(self) -> bool {
        matches!(
            self,
            Kernel::Matvec4Q4I | Kernel::Matvec4GluQ4I | Kernel::Matvec4QkvQ4I
        )
    }

    /// Rows of a matrix one workgroup of this kernel covers (the shaders' headers say how).
    pub(super) fn rows_per_group(self) -> usize {
        match self {
            Kernel::MatvecAny => 1,
            Kernel::MatvecRow | Kernel::MatvecKRow => 64,
            _ => 8,
        }
    }
}

/// What one dispatch binds; bind groups are cached by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum BindKey {
    /// Output, weight, chunk, input, accumulate.
    Matvec(TensorId, usize, Act, Act, bool),
    /// The same for a batch of rows (the tiled matrix-matrix kernel).
    Matmul(TensorId, usize, Act, Act, bool),
    /// A decode product over the last of a pass's `rows` rows alone (weight, chunk, output, input,
    /// rows): a prompt pass's classifier where only that row's logits are read.
    LastRow(TensorId, usize, Act, Act, usize),
    /// A gated feed-forward's gate and up products in one dispatch: gate, up, output, input,
    /// whether the gate is GELU (else SiLU), and the RMSNorm weights folded in where there are
    /// (the input is then the residual stream).
    Glu(TensorId, TensorId, Act, Act, bool, Option<TensorId>),
    /// A layer's Q, K and V products in one dispatch (their shared buffers), from the input; RoPE
    /// applied where the first bool says; K and V written into the f16 KV cache where the second
    /// does; RMSNorm folded in as for `Glu`.
    Qkv(usize, Act, bool, bool, Option<TensorId>),
    /// Output and the embedding chunk holding the token.
    Embed(Act, usize),
    Norm(TensorId, Act, Act),
    /// Per-head norm weights and the activation normalised in place.
    HeadNorm(TensorId, Act),
    /// RoPE with the local (sliding-window) layers' table where true.
    RopeQk(bool),
    Add(Act, Act),
    AddBias(Act, TensorId),
    Swiglu(Act, Act),
    Geglu(Act, Act),
    /// The activation and the factor's f32 bits.
    Scale(Act, u32),
    /// The activation and the cap's f32 bits.
    Softcap(Act, u32),
    KvStore(usize),
    KiviFlush(usize),
    Attention(usize, Act),
    /// Layer, output: the prompt pass's attention in tiles of rows (f16 caches, no window).
    AttnTile(usize, Act),
    /// One layer's decode attention over a split of the context, and the combination of the splits.
    AttnSplit(usize, Act),
    /// Output, and whether the splits are a local layer's (its steps bound).
    AttnCombine(Act, bool),
    Argmax,
}

impl BindKey {
    /// The profile's name for a dispatch: the kernel's entry point, and for a matrix product the
    /// matrix's role (`matvec4_q4 ffn_down`).
    pub fn label(self, kernel: Kernel) -> String {
        let entry = TABLE[kernel as usize].entry;
        match self {
            BindKey::Matvec(id, ..)
            | BindKey::LastRow(id, ..)
            | BindKey::Matmul(id, ..)
            | BindKey::Glu(id, ..) => {
                let name = id.gguf_name();
                let name = name.strip_suffix(".weight").unwrap_or(&name);
                let role = match name.strip_prefix("blk.") {
                    Some(rest) => rest.split_once('.').map_or(rest, |(_, r)| r),
                    None => name,
                };
                format!("{entry} {role}")
            }
            _ => entry.to_string(),
        }
    }

    /// The kernel this key runs; `mat` gives a matvec key's matrix (width, type and block).
    pub fn kernel(
        self,
        mv: MatvecKernel,
        mat: impl Fn(TensorId) -> (usize, WType, usize),
    ) -> Kernel {
        // The kernel a matrix takes alone; the fused kernels follow what theirs would run in.
        let alone = |id| {
            let (cols, ty, block) = mat(id);
            mv.for_matrix(cols, ty, block)
        };
        // The kernel a matrix's fused products take, with the norm folded in (x staged as f16)
        // where asked and its rows fit the staging.
        let fused = |id, norm: bool, plain, normed| match norm && mat(id).0 <= F16N_MAX_COLS {
            true => normed,
            false => plain,
        };
        match self {
            BindKey::Matvec(id, ..) | BindKey::LastRow(id, ..) => alone(id),
            BindKey::Matmul(id, ..) => {
                let (cols, ty, block) = mat(id);
                mv.for_matmul(cols, ty, block)
            }
            // Q6_K rows take the 32-bit kernel alone; the fused ones read them a word at a time
            // where the chosen kernels are the vec4 ones.
            BindKey::Glu(gate, .., norm) if mat(gate).1 == WType::Q6_K => fused(
                gate,
                norm.is_some(),
                Kernel::Matvec4GluQ6K,
                Kernel::Matvec4GluQ6KN,
            ),
            BindKey::Qkv(l, .., norm) if mat(TensorId::Wq(l)).1 == WType::Q6_K => fused(
                TensorId::Wq(l),
                norm.is_some(),
                Kernel::Matvec4QkvK,
                Kernel::Matvec4QkvKN,
            ),
            BindKey::Glu(gate, .., norm) => match alone(gate) {
                Kernel::Matvec4F16 => fused(
                    gate,
                    norm.is_some(),
                    Kernel::Matvec4GluF16,
                    Kernel::Matvec4GluF16N,
                ),
                Kernel::Matvec4Q8 => fused(
                    gate,
                    norm.is_some(),
                    Kernel::Matvec4GluQ8,
                    Kernel::Matvec4GluQ8N,
                ),
                Kernel::Matvec4Q4I => Kernel::Matvec4GluQ4I,
                Kernel::Matvec4Q4K | Kernel::Matvec4Q5K => fused(
                    gate,
                    norm.is_some(),
                    Kernel::Matvec4GluK,
                    Kernel::Matvec4GluKN,
                ),
                _ => Kernel::Matvec4GluQ4C,
            },
            BindKey::Qkv(l, .., norm) => match alone(TensorId::Wq(l)) {
                Kernel::Matvec4F16 => fused(
                    TensorId::Wq(l),
                    norm.is_some(),
                    Kernel::Matvec4QkvF16,
                    Kernel::Matvec4QkvF16N,
                ),
                Kernel::Matvec4Q8 => fused(
                    TensorId::Wq(l),
                    norm.is_some(),
                    Kernel::Matvec4QkvQ8,
                    Kernel::Matvec4QkvQ8N,
                ),
                Kernel::Matvec4Q4I => Kernel::Matvec4QkvQ4I,
                Kernel::Matvec4Q4K | Kernel::Matvec4Q5K => fused(
                    TensorId::Wq(l),
                    norm.is_some(),
                    Kernel::Matvec4QkvK,
                    Kernel::Matvec4QkvKN,
                ),
                _ => Kernel::Matvec4QkvQ4C,
            },
            BindKey::Embed(..) => Kernel::Embed,
            BindKey::Norm(..) => Kernel::Rmsnorm,
            BindKey::HeadNorm(..) => Kernel::HeadNorm,
            BindKey::RopeQk(_) => Kernel::RopeQk,
            BindKey::Add(..) => Kernel::Add,
            BindKey::AddBias(..) => Kernel::AddBias,
            BindKey::Swiglu(..) => Kernel::Swiglu,
            BindKey::Geglu(..) => Kernel::Geglu,
            BindKey::Scale(..) => Kernel::Scale,
            BindKey::Softcap(..) => Kernel::Softcap,
            BindKey::KvStore(_) => Kernel::KvStore,
            BindKey::KiviFlush(_) => Kernel::KiviFlush,
            BindKey::Attention(..) => Kernel::Attention,
            BindKey::AttnTile(..) => Kernel::AttnTile,
            BindKey::AttnSplit(..) => Kernel::AttnSplit,
            BindKey::AttnCombine(..) => Kernel::AttnCombine,
            BindKey::Argmax => Kernel::Argmax,
        }
    }
}

/// Positions one decode attention workgroup covers (`SPLIT` in attention.wgsl).
pub(super) const ATTN_SPLIT: usize = 64;

/// Rows of a prompt pass one `attention_tile` workgroup covers (`TQ` in attention.wgsl).
pub(super) const ATTN_TILE_ROWS: usize = 16;

/// `groups` workgroups as (x, y), x at most 65535 (the shaders read group = x + y * 65535).
pub(super) fn fold(groups: usize) -> (u32, u32) {
    if groups <= 65535 {
        (groups as u32, 1)
    } else {
        (65535, groups.div_ceil(65535) as u32)
    }
}

/// Splits of the context a decode attention may need, for `cap` cached positions.
pub(super) fn max_splits(cap: usize) -> usize {
    cap.div_ceil(ATTN_SPLIT)
}

#[cfg(test)]
mod tests;
