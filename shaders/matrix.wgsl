// What every matrix kernel shares (matvec.wgsl, matvec4.wgsl, the GEMMs): the parameters, the
// bindings other than the codes (1) and x (4), whose element types differ between the files, the
// per-block scale and min, and the GEMMs' tile sizes and output. Prepended after step.wgsl and
// quant.wgsl; the binding table is in matvec.wgsl.

struct MatParams {
    rows: u32,
    cols: u32,
    block: u32,
    kind: u32,
    // 1: out += W x (the residual add fused in); 0: out = W x.
    accumulate: u32,
    // First row of this binding within the whole matrix: a matrix larger than one storage binding is
    // uploaded as row chunks, each dispatched on its own (rows above counts this chunk's rows).
    row0: u32,
    // Values per row of `out` (the whole matrix's rows), for the matmul.
    out_len: u32,
    // 1: RMSNorm of x folded in, with this epsilon (matvec4_int8.wgsl); 0: x as it is.
    norm: u32,
    eps: f32,
    // The GLU kernels' gate (glu_finish): 1 GELU's tanh form (Gemma), 0 SiLU.
    gelu: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> mins: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<act>;
@group(0) @binding(6) var<storage, read> steps: array<Step>;

fn block_scale(g: u32) -> f32 {
    return half_at(scales[g >> 1u], g);
}

fn block_min(g: u32) -> f32 {
    if (p.kind == KIND_Q4_1) {
        return half_at(mins[g >> 1u], g);
    }
    return -8.0 * block_scale(g);
}

// The float GEMMs' tiles: MM_R weight rows (`matmul` in matvec.wgsl; `matmul_h` in matmul_f16.wgsl
// twice that) by MM_T tokens, MM_K columns a step.
const MM_R: u32 = 64u;
const MM_T: u32 = 64u;
const MM_K: u32 = 32u;

// Stores (or adds) one value of a matmul's output: weight row `row` of token `tok` (every
// GEMM), where both are in range.
fn store_out(v: f32, row: u32, tok: u32, n: u32) {
    if (row < p.rows && tok < n) {
        let o = tok * p.out_len + p.row0 + row;
        if (p.accumulate != 0u) {
            out[o] = act(f32(out[o]) + v);
        } else {
            out[o] = act(v);
        }
    }
}
