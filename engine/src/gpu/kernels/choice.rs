//! Which kernel runs what: the decode kernel choice ([`MatvecKernel`]), each kernel's properties,
//! and the binding keys with the kernel each runs ([`BindKey::kernel`]).

use super::{Kernel, TABLE};
use crate::dtype::WType;
use crate::forward::Act;
use crate::model::TensorId;
use serde::{Deserialize, Serialize};

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
    /// prompt pass's `matmul_q4i`, K-quant products in `matvec4_ki`, `matvec4_q6ki`,
    /// `matvec4_glu_ki` (Q4_K, Q5_K), `matvec4_qkv_ki` and `matmul_ki`: x quantized to 8 bits per block of 32
    /// and integer dot products, as llama.cpp's NVIDIA path, RMSNorm folded into the fused kernels
    /// (`GpuOptions::fold_norm`). Not the oracle's arithmetic (x moves by up to half a step); the
    /// native default where WGSL has packed integer dot products.
    TiledInt8,
}

/// Columns the integer-dot decode kernels hold in workgroup memory: q4_0's `matvec4_q4i`
/// (`XW_WORDS` words of 8 in matvec4_int8.wgsl, kernels.rs's `XW_SHORT`) and the K-quants'
/// (`XK_BLOCKS` blocks of 32 in matvec4_kint8.wgsl, `XK_SHORT`), within WebGPU's 16 KB default;
/// and those of their long modules (`XW_LONG`, `XK_LONG`), which run where the adapter allows
/// `INT8_LONG_STORAGE` bytes of it (Chrome, Firefox and lavapipe give 32 KB): Llama 3's and
/// Mistral's 14336-wide ffn_down, Qwen2.5-7B's 18944.
pub(in crate::gpu) const INT8_MAX_COLS: usize = 1536 * 8;
pub(in crate::gpu) const INT8_LONG_MAX_COLS: usize = 2816 * 8;
pub(in crate::gpu) const KINT8_MAX_COLS: usize = 352 * 32;
pub(in crate::gpu) const KINT8_LONG_MAX_COLS: usize = 704 * 32;
pub(in crate::gpu) const INT8_LONG_STORAGE: u32 = 32768;
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
    /// `long`: the adapter runs the long integer-dot modules (`Gpu::int8_long`).
    pub(in crate::gpu) fn for_matrix(
        self,
        cols: usize,
        ty: WType,
        block: usize,
        long: bool,
    ) -> Kernel {
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
        let int8_long = ty == WType::Q4_0 && long && cols <= INT8_LONG_MAX_COLS;
        let tiled = matches!(self, MatvecKernel::Tiled | MatvecKernel::TiledInt8);
        let k_int8 = ty.is_k() && cols <= KINT8_MAX_COLS;
        let k_long = ty.is_k() && long && cols <= KINT8_LONG_MAX_COLS;
        match (self, vec4) {
            (MatvecKernel::Row, _) if ty.is_k() => Kernel::MatvecKRow,
            (MatvecKernel::TiledInt8, Some(_)) if k_int8 => Kernel::Matvec4KI,
            (MatvecKernel::TiledInt8, None) if k_int8 => Kernel::Matvec4Q6KI,
            (MatvecKernel::TiledInt8, Some(_)) if k_long => Kernel::Matvec4KIL,
            (MatvecKernel::TiledInt8, None) if k_long => Kernel::Matvec4Q6KIL,
            (_, Some(k)) if ty.is_k() && (tiled || self == MatvecKernel::TiledBlocks) => k,
            _ if ty.is_k() => Kernel::MatvecK,
            _ if !cols.is_multiple_of(32) => Kernel::MatvecAny,
            (MatvecKernel::TiledInt8, Some(Kernel::Matvec4Q4)) if int8 => Kernel::Matvec4Q4I,
            (MatvecKernel::TiledInt8, Some(Kernel::Matvec4Q4)) if int8_long => Kernel::Matvec4Q4IL,
            (_, Some(Kernel::Matvec4Q4)) if tiled => Kernel::Matvec4Q4C,
            (_, Some(k)) if tiled || self == MatvecKernel::TiledBlocks => k,
            (MatvecKernel::Row, _) => Kernel::MatvecRow,
            _ => Kernel::Matvec,
        }
    }

    /// The prompt pass's kernel for a matrix: f16 rows of whole 32-column steps in f16 math
    /// (`matmul_h`) where the decoder multiplies in f16 (`half`); under `TiledInt8`, integer dot
    /// products for q4_0 and q8_0 rows of whole blocks of 32 (`matmul_q4i`, `matmul_q8i`) and for
    /// the K-quants (`matmul_ki`); else the float `matmul`.
    pub(in crate::gpu) fn for_matmul(
        self,
        cols: usize,
        ty: WType,
        block: usize,
        half: bool,
    ) -> Kernel {
        let blocks = cols.is_multiple_of(32) && block.is_multiple_of(32);
        match ty {
            WType::F16 if half && cols.is_multiple_of(32) => Kernel::MatmulH,
            _ if self != MatvecKernel::TiledInt8 => Kernel::Matmul,
            WType::Q4_0 if blocks => Kernel::MatmulQ4I,
            WType::Q8_0 if blocks => Kernel::MatmulQ8I,
            WType::Q4_K | WType::Q5_K | WType::Q6_K => Kernel::MatmulKI,
            _ => Kernel::Matmul,
        }
    }
}

impl Kernel {
    /// Whether this kernel folds a held RMSNorm in (matvec4_norm.wgsl): the fused integer-dot
    /// kernels, and the f16 and Q4_K ones staging x (with f16 activations only;
    /// `GpuDecoder::fold_norm`).
    pub(in crate::gpu) fn folds_norm(self) -> bool {
        self.stages_f16()
            || matches!(
                self,
                Kernel::Matvec4GluQ4I
                    | Kernel::Matvec4QkvQ4I
                    | Kernel::Matvec4GluKI
                    | Kernel::Matvec4QkvKI
            )
    }

    /// Whether this kernel is an integer prompt GEMM, reading x as `quant_x8` left it in xq.
    pub(in crate::gpu) fn reads_xq(self) -> bool {
        matches!(
            self,
            Kernel::MatmulQ4I | Kernel::MatmulQ8I | Kernel::MatmulKI
        )
    }

    /// Whether this kernel stages the normalised x as f16 (`stage_x_f16`), which only f16
    /// activations store it as.
    pub(in crate::gpu) fn stages_f16(self) -> bool {
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
    pub(in crate::gpu) fn binds_norm(self) -> bool {
        self.folds_norm()
            || matches!(
                self,
                Kernel::Matvec4Q4I
                    | Kernel::Matvec4KI
                    | Kernel::Matvec4Q6KI
                    | Kernel::Matvec4KIL
                    | Kernel::Matvec4Q6KIL
                    | Kernel::Matvec4Q4IL
            )
    }

    /// Whether this kernel's workgroups loop over row groups a grid apart (matvec4_int8.wgsl), so
    /// that fewer workgroups than groups cover a matrix ([`GpuOptions::int8_groups`]).
    ///
    /// [`GpuOptions::int8_groups`]: super::GpuOptions::int8_groups
    pub(in crate::gpu) fn loops_groups(self) -> bool {
        matches!(
            self,
            Kernel::Matvec4Q4I
                | Kernel::Matvec4GluQ4I
                | Kernel::Matvec4QkvQ4I
                | Kernel::Matvec4KI
                | Kernel::Matvec4GluKI
                | Kernel::Matvec4QkvKI
                | Kernel::Matvec4Q6KI
                | Kernel::Matvec4KIL
                | Kernel::Matvec4Q6KIL
                | Kernel::Matvec4Q4IL
        )
    }

    /// Rows of a matrix one workgroup of this kernel covers (the shaders' headers say how); the
    /// GEMMs' tiles cover [`Kernel::tokens_per_group`] tokens as well.
    pub(in crate::gpu) fn rows_per_group(self) -> usize {
        match self {
            Kernel::MatvecAny => 1,
            Kernel::MatmulH | Kernel::MatmulH128 => 128,
            Kernel::MatvecRow | Kernel::MatvecKRow => 64,
            Kernel::Matmul | Kernel::MatmulQ4I | Kernel::MatmulQ8I | Kernel::MatmulKI => 64,
            _ => 8,
        }
    }

    /// Tokens of a prompt pass one workgroup of this GEMM covers.
    pub(in crate::gpu) fn tokens_per_group(self) -> usize {
        match self {
            Kernel::MatmulH128 => 128,
            _ => 64,
        }
    }
}

/// What one dispatch binds; bind groups are cached by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::gpu) enum BindKey {
    /// Output, weight, chunk, input, accumulate.
    Matvec(TensorId, usize, Act, Act, bool),
    /// The same for a batch of rows (the tiled matrix-matrix kernel), then whether in 128-token
    /// tiles where the kernel is `matmul_h` (`matmul_h128`, `GpuDecoder::tall_tiles`).
    Matmul(TensorId, usize, Act, Act, bool, bool),
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
    /// A prompt pass's x quantized for the integer GEMMs (`quant_x8`): the input, its row length,
    /// and whether in q4_0's order of bytes (else the K-quants').
    QuantX(Act, usize, bool),
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
    /// Layer, output: the prompt pass's attention in tiles of rows (f16 caches, no window), keys
    /// and values staged in workgroup memory (`attention_staged`).
    AttnStaged(usize, Act),
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

    /// The kernel this key runs; `mat` gives a matvec key's matrix (width, type and block), `half`
    /// whether prompt products of f16 weights multiply in f16 (`Gpu::half_math`).
    pub fn kernel(
        self,
        mv: MatvecKernel,
        long: bool,
        half: bool,
        mat: impl Fn(TensorId) -> (usize, WType, usize),
    ) -> Kernel {
        // The kernel a matrix takes alone; the fused kernels follow what theirs would run in.
        let alone = |id| {
            let (cols, ty, block) = mat(id);
            mv.for_matrix(cols, ty, block, long)
        };
        // The kernel a matrix's fused products take (0 gate/up, 1 Q/K/V), with the norm folded in
        // where asked and its rows fit the f16 staging (the integer kernels fold it by a parameter).
        let fused = |id, which: usize, norm: bool| {
            let (cols, ty, _) = mat(id);
            let pairs = match (ty, alone(id)) {
                // Q6_K alone takes the 32-bit kernel where not the integer one; fused, it is read
                // a word at a time.
                (WType::Q6_K, k) if k != Kernel::Matvec4Q6KI => [
                    (Kernel::Matvec4GluQ6K, Kernel::Matvec4GluQ6KN),
                    (Kernel::Matvec4QkvK, Kernel::Matvec4QkvKN),
                ],
                (_, k) => fused_of(k),
            };
            let (plain, normed) = pairs[which];
            if norm && cols <= F16N_MAX_COLS {
                normed
            } else {
                plain
            }
        };
        match self {
            BindKey::Matvec(id, ..) | BindKey::LastRow(id, ..) => alone(id),
            BindKey::Matmul(id, .., tall) => {
                let (cols, ty, block) = mat(id);
                match mv.for_matmul(cols, ty, block, half) {
                    Kernel::MatmulH if tall => Kernel::MatmulH128,
                    k => k,
                }
            }
            BindKey::Glu(gate, .., norm) => fused(gate, 0, norm.is_some()),
            BindKey::Qkv(l, .., norm) => fused(TensorId::Wq(l), 1, norm.is_some()),
            BindKey::QuantX(..) => Kernel::QuantX8,
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
            BindKey::AttnStaged(..) => Kernel::AttnStaged,
            BindKey::AttnSplit(..) => Kernel::AttnSplit,
            BindKey::AttnCombine(..) => Kernel::AttnCombine,
            BindKey::Argmax => Kernel::Argmax,
        }
    }
}

/// The fused kernels extending a matrix's own kernel `alone`: gate/up, then Q/K/V, each as (without,
/// with) a folded norm; the integer-dot kernels fold it by a parameter, so theirs are one kernel.
fn fused_of(alone: Kernel) -> [(Kernel, Kernel); 2] {
    use Kernel::*;
    match alone {
        Matvec4F16 => [
            (Matvec4GluF16, Matvec4GluF16N),
            (Matvec4QkvF16, Matvec4QkvF16N),
        ],
        Matvec4Q8 => [(Matvec4GluQ8, Matvec4GluQ8N), (Matvec4QkvQ8, Matvec4QkvQ8N)],
        Matvec4Q4I => [
            (Matvec4GluQ4I, Matvec4GluQ4I),
            (Matvec4QkvQ4I, Matvec4QkvQ4I),
        ],
        Matvec4KI => [(Matvec4GluKI, Matvec4GluKI), (Matvec4QkvKI, Matvec4QkvKI)],
        // A Q6_K gate/up stays in floats (read a word at a time); Q/K/V in integers.
        Matvec4Q6KI => [
            (Matvec4GluQ6K, Matvec4GluQ6KN),
            (Matvec4QkvKI, Matvec4QkvKI),
        ],
        // Rows too long for the fused integer kernels: never fused (`fuses_glu`, `fuses_qkv`), and
        // were they, the float kernels hold no x in workgroup memory.
        Matvec4Q4K | Matvec4Q5K | Matvec4KIL | Matvec4Q6KIL => {
            [(Matvec4GluK, Matvec4GluKN), (Matvec4QkvK, Matvec4QkvKN)]
        }
        _ => [
            (Matvec4GluQ4C, Matvec4GluQ4C),
            (Matvec4QkvQ4C, Matvec4QkvQ4C),
        ],
    }
}
