//! The kernel table: each kernel's WGSL entry point and the shader files its module is built from, the
//! modules and pipelines made from it; `choice.rs` has the binding keys and which kernel each runs.
//! Pipeline creation, bind groups and dispatch all go
//! through [`BindKey::kernel`] and [`TABLE`], so a new kernel is its WGSL file, one [`Kernel`] variant
//! with its table entry, and its bindings in `bind.rs` (`GpuDecoder::kernel_entries`).

use super::device::{Activations, ShaderChecks};
use std::collections::HashMap;
use std::rc::Rc;

mod choice;
pub use choice::MatvecKernel;
pub(super) use choice::{
    BindKey, INT8_LONG_MAX_COLS, INT8_LONG_STORAGE, INT8_MAX_COLS, KINT8_MAX_COLS,
};

const ACT_F32: &str = include_str!("../../../shaders/act_f32.wgsl");
const ACT_F16: &str = include_str!("../../../shaders/act_f16.wgsl");
const STEP: &str = include_str!("../../../shaders/step.wgsl");
const QUANT: &str = include_str!("../../../shaders/quant.wgsl");
const MATRIX: &str = include_str!("../../../shaders/matrix.wgsl");
const MATVEC: &str = include_str!("../../../shaders/matvec.wgsl");
const MATVEC4: &str = include_str!("../../../shaders/matvec4.wgsl");
const MATVEC4_INT8: &str = include_str!("../../../shaders/matvec4_int8.wgsl");
const MATMUL_INT8: &str = include_str!("../../../shaders/matmul_int8.wgsl");
const MATMUL_KINT8: &str = include_str!("../../../shaders/matmul_kint8.wgsl");
const MATMUL_F16: &str = include_str!("../../../shaders/matmul_f16.wgsl");
const MATVEC4_NORM: &str = include_str!("../../../shaders/matvec4_norm.wgsl");
const MATVEC4_KQUANT: &str = include_str!("../../../shaders/matvec4_kquant.wgsl");
const MATVEC4_KQUANT_X: &str = include_str!("../../../shaders/matvec4_kquant_x.wgsl");
const MATVEC4_KQUANT_NORM: &str = include_str!("../../../shaders/matvec4_kquant_norm.wgsl");
const MATVEC4_KINT8: &str = include_str!("../../../shaders/matvec4_kint8.wgsl");
const KQUANT: &str = include_str!("../../../shaders/kquant.wgsl");
const NORM: &str = include_str!("../../../shaders/norm.wgsl");
const ROPE: &str = include_str!("../../../shaders/rope.wgsl");
const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
const KV: &str = include_str!("../../../shaders/kv.wgsl");
const KVFORMAT: &str = include_str!("../../../shaders/kvformat.wgsl");
const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
const ATTENTION_TILE: &str = include_str!("../../../shaders/attention_tile.wgsl");
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
    Matvec4KI,
    Matvec4GluKI,
    Matvec4QkvKI,
    Matvec4Q6KI,
    Matvec4KIL,
    Matvec4Q6KIL,
    Matvec4Q4IL,
    Matmul,
    MatmulQ4I,
    MatmulQ8I,
    MatmulKI,
    MatmulH,
    MatmulH128,
    QuantX8,
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
    AttnStaged,
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
const MATMUL_INT8_MODULE: &[&str] = &[
    STEP,
    QUANT,
    MATRIX,
    MATVEC,
    KQUANT,
    MATMUL_INT8,
    MATMUL_KINT8,
];
// The f16-math GEMM: f16 activations only (`enable f16`), so compiled on first use; it binds the
// codes and x as words, so not matvec.wgsl's declarations.
const MATMUL_F16_MODULE: &[&str] = &[STEP, QUANT, MATRIX, MATMUL_F16];
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

const ATTENTION_MODULE: &[&str] = &[STEP, KVFORMAT, ATTENTION, ATTENTION_TILE];

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
// The K-quant integer-dot kernels: the float module's helpers, matvec4_norm.wgsl's norm, and x's
// blocks in workgroup memory (`XK_BLOCKS`; the widths in `choice::KINT8_MAX_COLS` and
// `KINT8_LONG_MAX_COLS`): 14 KB within WebGPU's 16 KB default, or in the long module 28 KB, for
// rows up to 22528 values where the adapter allows 32 KB.
const XK_SHORT: &str = "const XK_BLOCKS: u32 = 352u;\n";
const XK_LONG: &str = "const XK_BLOCKS: u32 = 704u;\n";
const MATVEC4_KINT8_MODULE: &[&str] = &[
    STEP,
    QUANT,
    MATRIX,
    REDUCE,
    MATVEC4,
    MATVEC4_NORM,
    MATVEC4_KQUANT_X,
    MATVEC4_KQUANT,
    XK_SHORT,
    MATVEC4_KINT8,
];
const MATVEC4_KINT8_LONG_MODULE: &[&str] = &[
    STEP,
    QUANT,
    MATRIX,
    REDUCE,
    MATVEC4,
    MATVEC4_NORM,
    MATVEC4_KQUANT_X,
    MATVEC4_KQUANT,
    XK_LONG,
    MATVEC4_KINT8,
];
// q4_0's integer-dot kernels, x in workgroup memory as for the K-quants (`XW_WORDS` words of 8).
const XW_SHORT: &str = "const XW_WORDS: u32 = 1536u;\n";
const XW_LONG: &str = "const XW_WORDS: u32 = 2816u;\n";
const MATVEC4_INT8_MODULE: &[&str] = &[
    STEP,
    QUANT,
    MATRIX,
    REDUCE,
    MATVEC4,
    MATVEC4_NORM,
    XW_SHORT,
    MATVEC4_INT8,
];
const MATVEC4_INT8_LONG_MODULE: &[&str] = &[
    STEP,
    QUANT,
    MATRIX,
    REDUCE,
    MATVEC4,
    MATVEC4_NORM,
    XW_LONG,
    MATVEC4_INT8,
];

pub(super) const TABLE: [KernelDef; 62] = [
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
    def!(
        Matvec4KI,
        "matvec4_ki",
        "matvec4_kint8",
        MATVEC4_KINT8_MODULE
    ),
    def!(
        Matvec4GluKI,
        "matvec4_glu_ki",
        "matvec4_kint8",
        MATVEC4_KINT8_MODULE
    ),
    def!(
        Matvec4QkvKI,
        "matvec4_qkv_ki",
        "matvec4_kint8",
        MATVEC4_KINT8_MODULE
    ),
    def!(
        Matvec4Q6KI,
        "matvec4_q6ki",
        "matvec4_kint8",
        MATVEC4_KINT8_MODULE
    ),
    def!(
        Matvec4KIL,
        "matvec4_ki",
        "matvec4_kint8_long",
        MATVEC4_KINT8_LONG_MODULE
    ),
    def!(
        Matvec4Q6KIL,
        "matvec4_q6ki",
        "matvec4_kint8_long",
        MATVEC4_KINT8_LONG_MODULE
    ),
    def!(
        Matvec4Q4IL,
        "matvec4_q4i",
        "matvec4_int8_long",
        MATVEC4_INT8_LONG_MODULE
    ),
    def!(Matmul, "matmul", "matvec", MATVEC_MODULE),
    def!(MatmulQ4I, "matmul_q4i", "matmul_int8", MATMUL_INT8_MODULE),
    def!(MatmulQ8I, "matmul_q8i", "matmul_int8", MATMUL_INT8_MODULE),
    def!(MatmulKI, "matmul_ki", "matmul_int8", MATMUL_INT8_MODULE),
    def!(MatmulH, "matmul_h", "matmul_f16", MATMUL_F16_MODULE),
    def!(MatmulH128, "matmul_h128", "matmul_f16", MATMUL_F16_MODULE),
    def!(QuantX8, "quant_x8", "matmul_int8", MATMUL_INT8_MODULE),
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
    def!(
        AttnStaged,
        "attention_staged",
        "attention",
        ATTENTION_MODULE
    ),
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
/// WGSL has `packed_4x8_integer_dot_product` (`packed_dot`), the long ones only where the adapter
/// gives them their workgroup memory (`long`), the f16-math one only with f16 activations (`f16`).
pub(super) fn modules(
    packed_dot: bool,
    long: bool,
    f16: bool,
) -> Vec<(&'static str, &'static [&'static str])> {
    let mut out: Vec<(&str, &[&str])> = Vec::new();
    for d in &TABLE {
        let int8 = [MATVEC4_INT8, MATMUL_INT8, MATVEC4_KINT8]
            .iter()
            .any(|f| d.parts.contains(f));
        let is_long = d.parts.contains(&XK_LONG) || d.parts.contains(&XW_LONG);
        let half = d.parts.contains(&MATMUL_F16);
        let usable = (packed_dot || !int8) && (long || !is_long) && (f16 || !half);
        if usable && !out.iter().any(|(m, _)| *m == d.module) {
            out.push((d.module, d.parts));
        }
    }
    out
}

/// Kernels compiled on first use, not with the others: the integer-dot kernels' module needs WGSL's
/// `packed_4x8_integer_dot_product`, which not every browser has, and only some choices run them;
/// the f16 kernels with a norm folded in run only for f16 weights, the K-quant and fused q8_0 kernels
/// only for those weights, the f16-math GEMM only with f16 activations.
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
    Kernel::Matvec4KI,
    Kernel::Matvec4GluKI,
    Kernel::Matvec4QkvKI,
    Kernel::Matvec4Q6KI,
    Kernel::Matvec4KIL,
    Kernel::Matvec4Q6KIL,
    Kernel::Matvec4Q4IL,
    Kernel::MatmulQ4I,
    Kernel::MatmulQ8I,
    Kernel::MatmulKI,
    Kernel::MatmulH,
    Kernel::MatmulH128,
    Kernel::QuantX8,
];

/// One compute pipeline per kernel, indexed by [`Kernel`]; each module compiled once.
pub(super) struct Pipelines {
    made: Vec<std::cell::OnceCell<wgpu::ComputePipeline>>,
    modules: Rc<Modules>,
}

impl Pipelines {
    pub fn new(modules: Rc<Modules>) -> Pipelines {
        let p = Pipelines {
            made: TABLE.iter().map(|_| std::cell::OnceCell::new()).collect(),
            modules,
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
        let m = self.modules.get(d.module, d.parts);
        self.modules
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(d.entry),
                layout: None,
                module: &m,
                entry_point: Some(d.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    zero_initialize_workgroup_memory: self.modules.checks.zero_init,
                    ..Default::default()
                },
                cache: None,
            })
    }
}

/// A device's shader modules, each compiled once: shared by its pipelines and `Gpu::check_modules`
/// (which compiles every module when the device opens, so a browser parses none twice).
pub(super) struct Modules {
    made: std::cell::RefCell<HashMap<&'static str, wgpu::ShaderModule>>,
    device: wgpu::Device,
    act: Activations,
    checks: ShaderChecks,
    subgroups: bool,
}

impl Modules {
    pub fn new(
        device: &wgpu::Device,
        act: Activations,
        checks: ShaderChecks,
        subgroups: bool,
    ) -> Modules {
        Modules {
            made: Default::default(),
            device: device.clone(),
            act,
            checks,
            subgroups,
        }
    }

    /// Module `name` of the files `parts`, compiled on first use.
    pub fn get(&self, name: &'static str, parts: &[&str]) -> wgpu::ShaderModule {
        let mut made = self.made.borrow_mut();
        let m = made.entry(name).or_insert_with(|| {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(
                    module_source(self.act, parts, self.subgroups).into(),
                ),
            };
            if self.checks.runtime {
                self.device.create_shader_module(desc)
            } else {
                // SAFETY: see `ShaderChecks`: every index stays within bindings sized from
                // the shapes the parameters carry, every loop ends at a parameter bound and
                // every divisor is a validated block size; tests/gpu_checks.rs runs both ways.
                unsafe {
                    self.device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            }
        });
        m.clone()
    }
}

/// Positions one decode attention workgroup covers (`SPLIT` in attention.wgsl).
pub(super) const ATTN_SPLIT: usize = 64;

/// Rows one `attention_staged` workgroup covers (`SQ` in attention_tile.wgsl).
pub(super) const ATTN_STAGED_ROWS: usize = 8;

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
