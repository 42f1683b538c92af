// matvec4: the decode matrix-vector product (out = W x, or out += W x) reading the codes 128 bits at a
// time: one vec4<u32> is a whole q4 block of 32 (16 q8 codes, 8 f16 or 4 f32 values), and x is read as
// vec4s too. A GPU needs many bytes in flight per lane to stream a matrix; with 32-bit loads a lane had
// a quarter of them (benchmarks/2026-11-30-h200-batched.md).
// Prepended with step.wgsl, quant.wgsl and matrix.wgsl (MatParams, bindings 0, 2, 3, 5, 6).
//
// Bindings (group 0), as matvec.wgsl but for the element types:
//   1 words4: storage read array<vec4<u32>>  (the codes of quant.wgsl, four words per element)
//   4 x4:     storage read array<vec4<act>>  (cols / 4 vectors)
// Taken only where a row is whole vec4s and a vec4 never straddles two blocks: cols % 32 == 0, and
// for q4 kinds a power-of-two block of at least 32, for q8_0 of at least 16 (MatvecKernel::for_matrix).
// One row per 32 lanes, each lane issuing four 128-bit loads before any arithmetic. (Four rows per
// lane sharing each x load, in workgroups of 64, decoded slower on an H200: 1B q4_0 2.96 against 2.34
// ms/token, too few threads in flight; benchmarks/2026-12-02-h200-decode.md.)
// K-quants: matvec4_kquant.wgsl.
// One entry point per kind (matvec4_f32, _f16, _q8, _q4 for q4_0 and q4_1): with one kernel switching on
// the kind for each of its four unrolled loads, the compilers of CPU adapters (SwiftShader, lavapipe)
// took seconds to build it, and Chromium's page timed out opening the engine.
// Dispatch: one workgroup of 256 threads per 8 rows (32 lanes per row), folded into (x, y) as
// group = x + y * 65535.

@group(0) @binding(1) var<storage, read> words4: array<vec4<u32>>;
// The same codes a word at a time (matvec4_q4c, matvec4_glu_q4c).
@group(0) @binding(1) var<storage, read> words1: array<u32>;
// The up projection's codes and scales beside the gate's (matvec4_glu_q4c; matvec4_glu_f16 reads
// the codes as vec4s).
@group(0) @binding(7) var<storage, read> up_words: array<u32>;
@group(0) @binding(7) var<storage, read> up_words4: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read> up_scales: array<u32>;
@group(0) @binding(4) var<storage, read> x4: array<vec4<act>>;

const ROWS4: u32 = 8u;
const LANES4: u32 = 32u;

// An element's block is its index shifted by log2(block): blocks here are powers of two
// (MatvecKernel::for_matrix), and a shift is one instruction where a division by a value known only at
// run time is a sequence of them, in every unit of every row.
fn bsh() -> u32 {
    return countTrailingZeros(p.block);
}

fn xq(i: u32) -> vec4<f32> {
    return vec4<f32>(x4[i]);
}

// Four 4-bit codes of `w` from bit `shift` on, as floats: nibbles shift, shift+4, shift+8, shift+12.
fn nib(w: u32, shift: u32) -> vec4<f32> {
    return u2f4((vec4<u32>(w) >> vec4<u32>(shift, shift + 4u, shift + 8u, shift + 12u)) & vec4<u32>(15u));
}

// The same less 8: q4_0's signed codes (u2f4's subtraction takes the 8 too).
fn nib8(w: u32, shift: u32) -> vec4<f32> {
    let n = (vec4<u32>(w) >> vec4<u32>(shift, shift + 4u, shift + 8u, shift + 12u)) & vec4<u32>(15u);
    return bitcast<vec4<f32>>(n | vec4<u32>(0x4B000000u)) - vec4<f32>(TWO23 + 8.0);
}

// The four signed bytes of `w`, low byte first.
fn bytes(w: u32) -> vec4<f32> {
    return s8f4(vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u));
}

// Dots of one vec4 of codes with x from x vector xi; e, the element index of its first value, picks
// its block.
fn dot_f32(w: vec4<u32>, xi: u32) -> f32 {
    return dot(bitcast<vec4<f32>>(w), xq(xi));
}

fn dot_f16(w: vec4<u32>, xi: u32) -> f32 {
    let a = vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    let b = vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
    return dot(a, xq(xi)) + dot(b, xq(xi + 1u));
}

fn dot_q8(w: vec4<u32>, xi: u32, e: u32) -> f32 {
    let s = (dot(bytes(w.x), xq(xi)) + dot(bytes(w.y), xq(xi + 1u)))
        + (dot(bytes(w.z), xq(xi + 2u)) + dot(bytes(w.w), xq(xi + 3u)));
    return s * block_scale(e >> bsh());
}

// Word k holds elements 8k..8k+7, low nibble first; x vectors 2k and 2k + 1 multiply them. q4_0's
// offset of 8 comes off in the conversion (one subtraction either way), so only q4_1 sums x for its
// min.
fn dot_q4(w: vec4<u32>, xi: u32, e: u32) -> f32 {
    let x0 = xq(xi); let x1 = xq(xi + 1u); let x2 = xq(xi + 2u); let x3 = xq(xi + 3u);
    let x4v = xq(xi + 4u); let x5 = xq(xi + 5u); let x6 = xq(xi + 6u); let x7 = xq(xi + 7u);
    let g = e >> bsh();
    if (p.kind == KIND_Q4_1) {
        let q = (dot(nib(w.x, 0u), x0) + dot(nib(w.x, 16u), x1))
            + (dot(nib(w.y, 0u), x2) + dot(nib(w.y, 16u), x3))
            + (dot(nib(w.z, 0u), x4v) + dot(nib(w.z, 16u), x5))
            + (dot(nib(w.w, 0u), x6) + dot(nib(w.w, 16u), x7));
        let sx = ((x0 + x1) + (x2 + x3)) + ((x4v + x5) + (x6 + x7));
        return block_scale(g) * q + block_min(g) * dot(sx, vec4<f32>(1.0));
    }
    let q = (dot(nib8(w.x, 0u), x0) + dot(nib8(w.x, 16u), x1))
        + (dot(nib8(w.y, 0u), x2) + dot(nib8(w.y, 16u), x3))
        + (dot(nib8(w.z, 0u), x4v) + dot(nib8(w.z, 16u), x5))
        + (dot(nib8(w.w, 0u), x6) + dot(nib8(w.w, 16u), x7));
    return block_scale(g) * q;
}

// The workgroup's index in a grid folded past 65535 (`kernels::fold`).
fn group_of(wid: vec3<u32>) -> u32 {
    return wid.x + wid.y * 65535u;
}

// The row this thread's lanes share in group g of ROWS4 rows, and its lane.
fn row_in(g: u32, lid: vec3<u32>) -> vec2<u32> {
    return vec2<u32>(g * ROWS4 + lid.x / LANES4, lid.x % LANES4);
}

fn row_of(wid: vec3<u32>, lid: vec3<u32>) -> vec2<u32> {
    return row_in(group_of(wid), lid);
}

// Adds up a row's 32 lanes and stores (or accumulates) the row.
fn finish(acc: f32, lid: vec3<u32>, r: u32) {
    let total = row_sum(acc, lid.x);
    if (r < p.rows && lid.x % LANES4 == 0u) {
        if (p.accumulate != 0u) {
            out[p.row0 + r] = act(f32(out[p.row0 + r]) + total);
        } else {
            out[p.row0 + r] = act(total);
        }
    }
}

// In each kernel a lane issues four loads before any arithmetic (64 bytes in flight), then finishes
// the row's tail one load at a time. `vpv` values per vec4 of codes.
@compute @workgroup_size(256)
fn matvec4_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var acc = 0.0;
    if (rl.x < p.rows) {
        let nv = p.cols / 4u;
        let base = rl.x * nv;
        var v = rl.y;
        for (; v + 3u * LANES4 < nv; v += 4u * LANES4) {
            let w0 = words4[base + v];
            let w1 = words4[base + v + LANES4];
            let w2 = words4[base + v + 2u * LANES4];
            let w3 = words4[base + v + 3u * LANES4];
            acc += (dot_f32(w0, v) + dot_f32(w1, v + LANES4))
                + (dot_f32(w2, v + 2u * LANES4) + dot_f32(w3, v + 3u * LANES4));
        }
        for (; v < nv; v += LANES4) {
            acc += dot_f32(words4[base + v], v);
        }
    }
    finish(acc, lid, rl.x);
}

@compute @workgroup_size(256)
fn matvec4_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var acc = 0.0;
    if (rl.x < p.rows) {
        let nv = p.cols / 8u;
        acc = f16_lane(rl.x * nv, nv, rl.y);
    }
    finish(acc, lid, rl.x);
}

// Lane `lane`'s part of an f16 row of nv vec4s of codes from vec4 `base` on (matvec4_f16 and
// matvec4_qkv_f16).
fn f16_lane(base: u32, nv: u32, lane: u32) -> f32 {
    var acc = 0.0;
    var v = lane;
    for (; v + 3u * LANES4 < nv; v += 4u * LANES4) {
        let w0 = words4[base + v];
        let w1 = words4[base + v + LANES4];
        let w2 = words4[base + v + 2u * LANES4];
        let w3 = words4[base + v + 3u * LANES4];
        acc += (dot_f16(w0, 2u * v) + dot_f16(w1, 2u * (v + LANES4)))
            + (dot_f16(w2, 2u * (v + 2u * LANES4)) + dot_f16(w3, 2u * (v + 3u * LANES4)));
    }
    for (; v < nv; v += LANES4) {
        acc += dot_f16(words4[base + v], 2u * v);
    }
    return acc;
}

@compute @workgroup_size(256)
fn matvec4_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var acc = 0.0;
    if (rl.x < p.rows) {
        let nv = p.cols / 16u;
        let base = rl.x * nv;
        let e0 = rl.x * p.cols;
        var v = rl.y;
        for (; v + 3u * LANES4 < nv; v += 4u * LANES4) {
            let w0 = words4[base + v];
            let w1 = words4[base + v + LANES4];
            let w2 = words4[base + v + 2u * LANES4];
            let w3 = words4[base + v + 3u * LANES4];
            let v1 = v + LANES4;
            let v2 = v + 2u * LANES4;
            let v3 = v + 3u * LANES4;
            acc += (dot_q8(w0, 4u * v, e0 + 16u * v) + dot_q8(w1, 4u * v1, e0 + 16u * v1))
                + (dot_q8(w2, 4u * v2, e0 + 16u * v2) + dot_q8(w3, 4u * v3, e0 + 16u * v3));
        }
        for (; v < nv; v += LANES4) {
            acc += dot_q8(words4[base + v], 4u * v, e0 + 16u * v);
        }
    }
    finish(acc, lid, rl.x);
}

@compute @workgroup_size(256)
fn matvec4_q4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var acc = 0.0;
    if (rl.x < p.rows) {
        let nv = p.cols / 32u;
        let base = rl.x * nv;
        let e0 = rl.x * p.cols;
        var v = rl.y;
        for (; v + 3u * LANES4 < nv; v += 4u * LANES4) {
            let w0 = words4[base + v];
            let w1 = words4[base + v + LANES4];
            let w2 = words4[base + v + 2u * LANES4];
            let w3 = words4[base + v + 3u * LANES4];
            let v1 = v + LANES4;
            let v2 = v + 2u * LANES4;
            let v3 = v + 3u * LANES4;
            acc += (dot_q4(w0, 8u * v, e0 + 32u * v) + dot_q4(w1, 8u * v1, e0 + 32u * v1))
                + (dot_q4(w2, 8u * v2, e0 + 32u * v2) + dot_q4(w3, 8u * v3, e0 + 32u * v3));
        }
        for (; v < nv; v += LANES4) {
            acc += dot_q4(words4[base + v], 8u * v, e0 + 32u * v);
        }
    }
    finish(acc, lid, rl.x);
}

// matvec4_q4c (q4_0 and q4_1, blocks of a multiple of 32; the Tiled kernel's choice): the row's 32
// lanes take consecutive quarters of blocks, lane l the eight values 8 (l % 4).. of block l / 4 + 8k, so that one load
// instruction of the row's lanes reads 512 consecutive bytes of x (f16) and 128 of codes. In
// matvec4_q4 a lane takes a whole block, and its x loads, 64 bytes apart across the lanes, touch
// four times the cache lines they use (MatvecKernel::TiledBlocks keeps it). 7B q4_0 decode on an
// H200: 6.18 -> 5.65 ms/token (benchmarks/2026-12-03-h200-profile.md). Four blocks' loads are issued
// before any arithmetic.
// The four codes at bits 0, 4, 8 and 12 of `h`, less 8, as floats, without shifting each: a code
// masked in place and OR-ed into 2^23's exponent is the float 2^23 + 16^j n, and one FMA by 16^-j
// less (2^23 16^-j + 8) leaves n - 8 exactly (powers of two, all terms representable). Two
// instructions a code where shift, mask and subtract took three; the q4 products are bound by
// their instruction stream, not memory (benchmarks/2026-12-03-h200-qkv.md).
fn codes8(h: u32) -> vec4<f32> {
    let m = (vec4<u32>(h) & vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u)) | vec4<u32>(0x4B000000u);
    let scale = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
    let off = vec4<f32>(TWO23 + 8.0, 524296.0, 32776.0, 2056.0);
    return fma(bitcast<vec4<f32>>(m), scale, -off);
}

// The eight q4_0 values of word w (codes less 8) against x0 and x1.
fn q4_0c(w: u32, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
    return dot(codes8(w), x0) + dot(codes8(w >> 16u), x1);
}

// One word of a q4_1 (q41) or q4_0 row, block g, against x vectors xi and xi + 1.
fn dot_q4c(w: u32, xi: u32, g: u32, q41: bool) -> f32 {
    let x0 = xq(xi);
    let x1 = xq(xi + 1u);
    if (q41) {
        let q = dot(nib(w, 0u), x0) + dot(nib(w, 16u), x1);
        return block_scale(g) * q + block_min(g) * dot(x0 + x1, vec4<f32>(1.0));
    }
    return block_scale(g) * q4_0c(w, x0, x1);
}

// This lane's part of row rl.x. The kind is a constant argument at both call sites, so the compiler
// can make a loop without a branch on it in every unit.
fn q4c_lane(rl: vec2<u32>, q41: bool) -> f32 {
    var acc = 0.0;
    // 32-value units of the row; this lane's quarter and first unit.
    let nu = p.cols / 32u;
    let qd = rl.y % 4u;
    let base = rl.x * p.cols / 8u + qd;
    let e0 = rl.x * p.cols;
    var u = rl.y / 4u;
    for (; u + 24u < nu; u += 32u) {
        let w0 = words1[base + 4u * u];
        let w1 = words1[base + 4u * (u + 8u)];
        let w2 = words1[base + 4u * (u + 16u)];
        let w3 = words1[base + 4u * (u + 24u)];
        acc += (dot_q4c(w0, 8u * u + 2u * qd, (e0 + 32u * u) >> bsh(), q41)
            + dot_q4c(w1, 8u * (u + 8u) + 2u * qd, (e0 + 32u * (u + 8u)) >> bsh(), q41))
            + (dot_q4c(w2, 8u * (u + 16u) + 2u * qd, (e0 + 32u * (u + 16u)) >> bsh(), q41)
            + dot_q4c(w3, 8u * (u + 24u) + 2u * qd, (e0 + 32u * (u + 24u)) >> bsh(), q41));
    }
    for (; u < nu; u += 8u) {
        acc += dot_q4c(words1[base + 4u * u], 8u * u + 2u * qd, (e0 + 32u * u) >> bsh(), q41);
    }
    return acc;
}

@compute @workgroup_size(256)
fn matvec4_q4c(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var acc = 0.0;
    if (rl.x < p.rows) {
        if (p.kind == KIND_Q4_1) {
            acc = q4c_lane(rl, true);
        } else {
            acc = q4c_lane(rl, false);
        }
    }
    finish(acc, lid, rl.x);
}

// matvec4_glu_q4c: SwiGLU's gate and up products (q4_0, the same shape and block) in one dispatch, as
// matvec4_q4c lays out its lanes: each row's lanes compute row r of both, and lane 0 stores
// silu(gate) * up, rounded once. Two dispatches and the up row's round trip through memory fewer per
// layer than matvec, matvec, swiglu. Bindings as the other kernels for the gate matrix (0-2, x 4, out
// 5), the up matrix's codes 7 and scales 8.

fn up_scale(g: u32) -> f32 {
    return half_at(up_scales[g >> 1u], g);
}

@compute @workgroup_size(256)
fn matvec4_glu_q4c(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var ag = 0.0;
    var au = 0.0;
    if (rl.x < p.rows) {
        let nu = p.cols / 32u;
        let qd = rl.y % 4u;
        let base = rl.x * p.cols / 8u + qd;
        let e0 = rl.x * p.cols;
        var u = rl.y / 4u;
        for (; u + 8u < nu; u += 16u) {
            let g0 = words1[base + 4u * u];
            let g1 = words1[base + 4u * (u + 8u)];
            let u0 = up_words[base + 4u * u];
            let u1 = up_words[base + 4u * (u + 8u)];
            let xa0 = xq(8u * u + 2u * qd);
            let xa1 = xq(8u * u + 2u * qd + 1u);
            let xb0 = xq(8u * (u + 8u) + 2u * qd);
            let xb1 = xq(8u * (u + 8u) + 2u * qd + 1u);
            let ba = (e0 + 32u * u) >> bsh();
            let bb = (e0 + 32u * (u + 8u)) >> bsh();
            ag += block_scale(ba) * q4_0c(g0, xa0, xa1) + block_scale(bb) * q4_0c(g1, xb0, xb1);
            au += up_scale(ba) * q4_0c(u0, xa0, xa1) + up_scale(bb) * q4_0c(u1, xb0, xb1);
        }
        for (; u < nu; u += 8u) {
            let x0 = xq(8u * u + 2u * qd);
            let x1 = xq(8u * u + 2u * qd + 1u);
            let b = (e0 + 32u * u) >> bsh();
            ag += block_scale(b) * q4_0c(words1[base + 4u * u], x0, x1);
            au += up_scale(b) * q4_0c(up_words[base + 4u * u], x0, x1);
        }
    }
    glu_finish(ag, au, lid, rl);
}

// Sums each row's gate and up lanes and stores act(gate) * up: SiLU, or GELU's tanh form where
// p.gelu (elementwise.wgsl's geglu). Every thread calls it.
fn glu_finish(ag: f32, au: f32, lid: vec3<u32>, rl: vec2<u32>) {
    let s = row_sum2(vec2<f32>(ag, au), lid.x);
    let g = s.x;
    let up = s.y;
    var a = g / (1.0 + exp(-g));
    if (p.gelu == 1u) {
        a = 0.5 * g * (1.0 + tanh(0.7978846 * (g + 0.044715 * g * g * g)));
    }
    if (rl.x < p.rows && rl.y == 0u) {
        out[p.row0 + rl.x] = act(a * up);
    }
}

// Sixteen q8 codes (a vec4: elements 16v..16v+15, one block) against x vectors x0..x3.
fn q8_dot4(w: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
    return (dot(bytes(w.x), x0) + dot(bytes(w.y), x1)) + (dot(bytes(w.z), x2) + dot(bytes(w.w), x3));
}

// Codes vec4s `a` and `b` of two matrices against the x vectors from xi, loaded once for both.
fn q8_dots(a: vec4<u32>, b: vec4<u32>, xi: u32) -> vec2<f32> {
    let x0 = xq(xi);
    let x1 = xq(xi + 1u);
    let x2 = xq(xi + 2u);
    let x3 = xq(xi + 3u);
    return vec2<f32>(q8_dot4(a, x0, x1, x2, x3), q8_dot4(b, x0, x1, x2, x3));
}

// matvec4_glu_q8: the same for q8_0 gate and up matrices (one block), rows read as matvec4_q8 reads
// them (a vec4 of codes is 16 values of one block), each x load serving both; the up matrix's codes
// at binding 7, its scales at 8.
@compute @workgroup_size(256)
fn matvec4_glu_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var ag = 0.0;
    var au = 0.0;
    if (rl.x < p.rows) {
        let nv = p.cols / 16u;
        let base = rl.x * nv;
        let e0 = rl.x * p.cols;
        var v = rl.y;
        for (; v + LANES4 < nv; v += 2u * LANES4) {
            let g0 = words4[base + v];
            let g1 = words4[base + v + LANES4];
            let u0 = up_words4[base + v];
            let u1 = up_words4[base + v + LANES4];
            let d0 = q8_dots(g0, u0, 4u * v);
            let d1 = q8_dots(g1, u1, 4u * (v + LANES4));
            let b0 = (e0 + 16u * v) >> bsh();
            let b1 = (e0 + 16u * (v + LANES4)) >> bsh();
            ag += block_scale(b0) * d0.x + block_scale(b1) * d1.x;
            au += up_scale(b0) * d0.y + up_scale(b1) * d1.y;
        }
        for (; v < nv; v += LANES4) {
            let d = q8_dots(words4[base + v], up_words4[base + v], 4u * v);
            let b = (e0 + 16u * v) >> bsh();
            ag += block_scale(b) * d.x;
            au += up_scale(b) * d.y;
        }
    }
    glu_finish(ag, au, lid, rl);
}

// Eight f16 values of w (a vec4 of codes) against x vectors xa and xb.
fn dot8_f16(w: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let a = vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    let b = vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
    return dot(a, xa) + dot(b, xb);
}

// matvec4_glu_f16: the same for f16 gate and up matrices, rows read as matvec4_f16 reads them (each x
// load serving both); the up matrix's codes at binding 7, no scales.
@compute @workgroup_size(256)
fn matvec4_glu_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var ag = 0.0;
    var au = 0.0;
    if (rl.x < p.rows) {
        let nv = p.cols / 8u;
        let base = rl.x * nv;
        var v = rl.y;
        for (; v + LANES4 < nv; v += 2u * LANES4) {
            let g0 = words4[base + v];
            let g1 = words4[base + v + LANES4];
            let u0 = up_words4[base + v];
            let u1 = up_words4[base + v + LANES4];
            let xa0 = xq(2u * v);
            let xa1 = xq(2u * v + 1u);
            let xb0 = xq(2u * (v + LANES4));
            let xb1 = xq(2u * (v + LANES4) + 1u);
            ag += dot8_f16(g0, xa0, xa1) + dot8_f16(g1, xb0, xb1);
            au += dot8_f16(u0, xa0, xa1) + dot8_f16(u1, xb0, xb1);
        }
        for (; v < nv; v += LANES4) {
            let x0 = xq(2u * v);
            let x1 = xq(2u * v + 1u);
            ag += dot8_f16(words4[base + v], x0, x1);
            au += dot8_f16(up_words4[base + v], x0, x1);
        }
    }
    glu_finish(ag, au, lid, rl);
}

// matvec4_qkv_q4c: a layer's Q, K and V products (q4_0, one width and block) in one dispatch, their
// codes and scales concatenated at load (QkvLayout: each matrix at an aligned offset), laid out as
// matvec4_q4c. Rows run Q's, then K's, then V's; each matrix has whole workgroups of 8 rows, so a
// workgroup reads one matrix. Where `rope` is 1 (llama's adjacent pairs, nothing between the products
// and RoPE), Q's and K's rows leave rotated: pair (2f, 2f + 1) of a head is two rows of one workgroup,
// rotated by the table's cos and sin of frequency f, rounded once. Two dispatches fewer per layer, three
// with RoPE, and the three products fill the GPU together.
// Bindings: 0 QkvParams, 1 codes (words1; matvec4_qkv_f16: words4), 2 scales, 4 x, 5 Q, 9 K, 10 V
// (or the layer's f16 K and V caches, QkvParams.kv_direct), 11 the RoPE table (rope.wgsl's, one row,
// and the decode row's KV slot at entry slot_at).

struct QkvParams {
    // Rows of Q and of K (and V).
    q_rows: u32,
    kv_rows: u32,
    cols: u32,
    block: u32,
    // Where K's and V's codes start (words; f16: vec4s) and their scales (words).
    k_words: u32,
    v_words: u32,
    k_scales: u32,
    v_scales: u32,
    rope: u32,
    head_size: u32,
    // RMSNorm folded in (matvec4_qkv_q4i; MatParams.norm, .eps).
    norm: u32,
    eps: f32,
    // 1: K and V go straight into an f16 KV cache (bindings 9 and 10 are the layer's caches, f16
    // activations), at the slot the RoPE table holds at entry slot_at; 0: into the K and V rows.
    kv_direct: u32,
    slot_at: u32,
    // matvec4_qkv_k: V's type code and Q's and K's (KIND_Q4_K, KIND_Q5_K or KIND_Q6_K;
    // llama-quantize's mixes give some layers' attn_v more bits).
    v_kind: u32,
    qk_kind: u32,
}

@group(0) @binding(0) var<uniform> qp: QkvParams;
@group(0) @binding(9) var<storage, read_write> out_k: array<act>;
@group(0) @binding(10) var<storage, read_write> out_v: array<act>;
@group(0) @binding(11) var<storage, read> rope_table: array<f32>;

// Each row's sum, for the row beside it (RoPE's pairs).
var<workgroup> pair_sums: array<f32, 8>;

fn store_qkv(m: u32, r: u32, v: f32) {
    if (m == 0u) {
        out[r] = act(v);
        return;
    }
    // An f16 cache row is the slot's kv_rows f16 values, as an f16 activation row is laid out.
    var at = r;
    if (qp.kv_direct == 1u) {
        at += bitcast<u32>(rope_table[qp.slot_at]) * qp.kv_rows;
    }
    if (m == 1u) {
        out_k[at] = act(v);
    } else {
        out_v[at] = act(v);
    }
}

// Word w of unit u (32 values) of a row starting at element e0, this lane's quarter qd: as
// dot_q4c, with the matrix's scales from word sbase on.
fn qkv_unit(w: u32, u: u32, qd: u32, e0: u32, sbase: u32, sh: u32) -> f32 {
    let b = (e0 + 32u * u) >> sh;
    let d = half_at(scales[sbase + (b >> 1u)], b);
    return d * q4_0c(w, xq(8u * u + 2u * qd), xq(8u * u + 2u * qd + 1u));
}

// The matrix workgroup `wid` reads (uniform across it: 0 Q, 1 K, 2 V), its first row, and where its
// codes and scales start (in the codes' units: words for q4_0, vec4s for f16).
struct QkvPart {
    m: u32,
    first: u32,
    rows: u32,
    wbase: u32,
    sbase: u32,
}

fn qkv_part(wid: vec3<u32>) -> QkvPart {
    return qkv_part_in(group_of(wid));
}

// The section and first row of row group g.
fn qkv_part_in(g: u32) -> QkvPart {
    let g0 = g * ROWS4;
    if (g0 >= qp.q_rows + qp.kv_rows) {
        return QkvPart(2u, g0 - qp.q_rows - qp.kv_rows, qp.kv_rows, qp.v_words, qp.v_scales);
    }
    if (g0 >= qp.q_rows) {
        return QkvPart(1u, g0 - qp.q_rows, qp.kv_rows, qp.k_words, qp.k_scales);
    }
    return QkvPart(0u, g0, qp.q_rows, 0u, 0u);
}

// Sums each row's lanes and stores it, Q's and K's pairs rotated where `rope` is 1. Every thread
// calls it (it holds barriers).
fn qkv_finish(part: QkvPart, acc: f32, lid: vec3<u32>) {
    let total = row_sum(acc, lid.x);
    let local = lid.x / LANES4;
    let r = part.first + local;
    let lane = lid.x % LANES4;
    if (qp.rope == 1u && part.m < 2u) {
        if (lane == 0u) {
            pair_sums[local] = total;
        }
        workgroupBarrier();
        // The first row of each pair rotates both.
        if (lane == 0u && r % 2u == 0u && r < part.rows) {
            let f = (r % qp.head_size) / 2u;
            let c = rope_table[2u * f];
            let s = rope_table[2u * f + 1u];
            let b = pair_sums[local + 1u];
            store_qkv(part.m, r, total * c - b * s);
            store_qkv(part.m, r + 1u, total * s + b * c);
        }
    } else if (lane == 0u && r < part.rows) {
        store_qkv(part.m, r, total);
    }
}

@compute @workgroup_size(256)
fn matvec4_qkv_q4c(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let part = qkv_part(wid);
    let r = part.first + lid.x / LANES4;
    let lane = lid.x % LANES4;
    let sh = countTrailingZeros(qp.block);
    let sbase = part.sbase;
    var acc = 0.0;
    if (r < part.rows) {
        let nu = qp.cols / 32u;
        let qd = lane % 4u;
        let base = part.wbase + r * qp.cols / 8u + qd;
        let e0 = r * qp.cols;
        var u = lane / 4u;
        for (; u + 24u < nu; u += 32u) {
            let w0 = words1[base + 4u * u];
            let w1 = words1[base + 4u * (u + 8u)];
            let w2 = words1[base + 4u * (u + 16u)];
            let w3 = words1[base + 4u * (u + 24u)];
            acc += (qkv_unit(w0, u, qd, e0, sbase, sh) + qkv_unit(w1, u + 8u, qd, e0, sbase, sh))
                + (qkv_unit(w2, u + 16u, qd, e0, sbase, sh) + qkv_unit(w3, u + 24u, qd, e0, sbase, sh));
        }
        for (; u < nu; u += 8u) {
            acc += qkv_unit(words1[base + 4u * u], u, qd, e0, sbase, sh);
        }
    }
    qkv_finish(part, acc, lid);
}

// matvec4_qkv_q8: the same for q8_0 weights, rows read as matvec4_q8 reads them (codes in vec4s:
// QkvParams.k_words and v_words count vec4s; scales in words).
@compute @workgroup_size(256)
fn matvec4_qkv_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let part = qkv_part(wid);
    let r = part.first + lid.x / LANES4;
    let lane = lid.x % LANES4;
    let sh = countTrailingZeros(qp.block);
    var acc = 0.0;
    if (r < part.rows) {
        let nv = qp.cols / 16u;
        let base = part.wbase + r * nv;
        let e0 = r * qp.cols;
        var v = lane;
        for (; v + LANES4 < nv; v += 2u * LANES4) {
            let w0 = words4[base + v];
            let w1 = words4[base + v + LANES4];
            let b0 = (e0 + 16u * v) >> sh;
            let b1 = (e0 + 16u * (v + LANES4)) >> sh;
            let x0 = 4u * v;
            let x1 = 4u * (v + LANES4);
            acc += half_at(scales[part.sbase + (b0 >> 1u)], b0)
                * q8_dot4(w0, xq(x0), xq(x0 + 1u), xq(x0 + 2u), xq(x0 + 3u))
                + half_at(scales[part.sbase + (b1 >> 1u)], b1)
                * q8_dot4(w1, xq(x1), xq(x1 + 1u), xq(x1 + 2u), xq(x1 + 3u));
        }
        for (; v < nv; v += LANES4) {
            let b = (e0 + 16u * v) >> sh;
            let x = 4u * v;
            acc += half_at(scales[part.sbase + (b >> 1u)], b)
                * q8_dot4(words4[base + v], xq(x), xq(x + 1u), xq(x + 2u), xq(x + 3u));
        }
    }
    qkv_finish(part, acc, lid);
}

// matvec4_qkv_f16: the same for f16 weights, rows read as matvec4_f16 reads them (a vec4 of codes is
// eight values); bindings as matvec4_qkv_q4c less the scales.
@compute @workgroup_size(256)
fn matvec4_qkv_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let part = qkv_part(wid);
    let r = part.first + lid.x / LANES4;
    let lane = lid.x % LANES4;
    var acc = 0.0;
    if (r < part.rows) {
        let nv = qp.cols / 8u;
        acc = f16_lane(part.wbase + r * nv, nv, lane);
    }
    qkv_finish(part, acc, lid);
}
