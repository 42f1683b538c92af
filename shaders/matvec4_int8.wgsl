// matvec4_q4i: the q4_0 decode product with integer dot products, as llama.cpp's NVIDIA path takes
// for long rows (x quantized to 8 bits per block of 32, `dot4I8Packed` on four codes at a time): the
// float kernels spend several instructions decoding each code, and on an H200 that, not memory,
// bounds them (benchmarks/2026-12-03-h200-qkv.md). Run under `MatvecKernel::TiledInt8` (natively
// the default); matvec4_glu_q4i and matvec4_qkv_q4i (below) do the same for the fused gate/up and
// Q/K/V.
// Appended to matvec4.wgsl and matvec4_norm.wgsl (their bindings, row_of, finish, bsh, xq, the Q/K/V
// kernels' parts, norm_w and norm_scale).
//
// Each workgroup first quantizes all of x into workgroup memory, a thread per block of 32 values
// (its eight loads at once, one barrier in all): word j of block b (values 32b+8j..32b+8j+7, as a
// q4 word of codes holds them) becomes two words of signed bytes, values 8j, 8j+2, 8j+4, 8j+6 and
// 8j+1, 8j+3, 8j+5, 8j+7 of the block (the low and the high nibbles of the codes' bytes), at
// xw[j * nb + b] (nb blocks a row), with one f32 scale per block (max |x| / 127, values rounded to
// nearest). Then each lane of a row takes whole blocks, one vec4 of codes each, 32 blocks apart
// (a warp's load is 512 contiguous bytes, its reads of xw consecutive words), four blocks' loads
// issued before any arithmetic: a 4096-wide row is one round of loads per lane, and the first
// round's loads (codes and scales) go out before x is quantized, so their latency overlaps it. A
// code word's nibbles become signed bytes n - 8 without leaving the word, and two dot4I8Packed take
// its eight products exactly in integers; the row sums d_w * d_x * that in f32.
// (An earlier layout, four lanes on the four words of a block with 32-bit loads, took four to
// sixteen dependent rounds of loads a row: 7B q4_0 decode 3.585 -> 3.151 ms/token on an H200,
// benchmarks/2026-12-04-h200-int8-vec4.md.)
// Rows of at most XW_WORDS * 8 values (`MatvecKernel::for_matrix`); XW_WORDS comes in the part
// before this file: 1536 (13.5 KB of x, within WebGPU's 16 KB default) or, in the long module for
// adapters that allow 32 KB, 2816 (25 KB); the other rows keep matvec4_q4c. The quantization of x
// is the only difference from the oracle's arithmetic: each value moves by at most half a step
// (max |x| / 254 of its block).
// RMSNorm folds in as matvec4_norm.wgsl says (quantizing per block is blind to a common scale, so
// quantizing w * x and scaling the products is what quantizing the normalised x would give).

// x quantized: per block and word, the even and the odd values' bytes; per block, the scale.
var<workgroup> xw: array<vec2<u32>, XW_WORDS>;
var<workgroup> xd: array<f32, XW_WORDS / 4u>;

// Quantizes x (`cols` values; times the norm's weights where `norm`) into xw and xd; every thread
// calls it. Returns the norm's scale (1 without a norm).
fn quantize_x(t: u32, cols: u32, norm: bool, eps: f32) -> f32 {
    let nb = cols / 32u;
    var ss = 0.0;
    for (var b = t; b < nb; b += 256u) {
        var x = x_block(b, norm);
        ss += x.ss;
        for (var j = 0u; j < 4u; j++) {
            let qa = vec4<i32>(round(x.v[2u * j] * x.inv));
            let qb = vec4<i32>(round(x.v[2u * j + 1u] * x.inv));
            xw[j * nb + b] = vec2<u32>(
                pack4xI8Clamp(vec4<i32>(qa.x, qa.z, qb.x, qb.z)),
                pack4xI8Clamp(vec4<i32>(qa.y, qa.w, qb.y, qb.w)));
        }
        xd[b] = x.d;
    }
    workgroupBarrier();
    if (!norm) {
        return 1.0;
    }
    return norm_scale(ss, t, cols, eps);
}

// The eight products of code word w with x words x, exactly: the nibbles of each byte as signed
// bytes n - 8 ((n + 0x78) ^ 0x80 never carries out of a byte, as n <= 15).
fn dot_q4i(w: u32, x: vec2<u32>) -> i32 {
    let lo = ((w & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u;
    let hi = (((w >> 4u) & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u;
    return dot4I8Packed(lo, x.x) + dot4I8Packed(hi, x.y);
}

// Block b's 32 products (codes w) with x, times x's scale; `nb` blocks a row.
fn block_q4i(w: vec4<u32>, b: u32, nb: u32) -> f32 {
    let s = (dot_q4i(w.x, xw[b]) + dot_q4i(w.y, xw[nb + b]))
        + (dot_q4i(w.z, xw[2u * nb + b]) + dot_q4i(w.w, xw[3u * nb + b]));
    return xd[b] * f32(s);
}

// Where a row's blocks run out within a round of four: block b + 32i clamped to the row's last
// (its load stays in the row) and weighed 0.
fn round_blocks(b: u32, nb: u32) -> vec4<u32> {
    return min(vec4<u32>(b) + vec4<u32>(0u, LANES4, 2u * LANES4, 3u * LANES4), vec4<u32>(nb - 1u));
}

// 1 for the round's blocks within the row, 0 for those past it.
fn live(b: u32, nb: u32) -> vec4<f32> {
    let k = vec4<u32>(b) + vec4<u32>(0u, LANES4, 2u * LANES4, 3u * LANES4);
    return select(vec4<f32>(0.0), vec4<f32>(1.0), k < vec4<u32>(nb));
}

// Block b's weight scale: a row starting at element e0, scales from word sbase on, blocks of 1 << sh
// values.
fn scale_q4i(b: u32, e0: u32, sbase: u32, sh: u32) -> f32 {
    let g = (e0 + 32u * b) >> sh;
    return half_at(scales[sbase + (g >> 1u)], g);
}

// A lane's round: the codes of blocks b, b + 32, b + 64, b + 96 of a row (clamped within it) and
// their weight scales (0 past the row).
struct Round {
    w0: vec4<u32>,
    w1: vec4<u32>,
    w2: vec4<u32>,
    w3: vec4<u32>,
    d: vec4<f32>,
}

fn load_round(vbase: u32, b: u32, nb: u32, e0: u32, sbase: u32, sh: u32) -> Round {
    let k = round_blocks(b, nb);
    let on = live(b, nb);
    let d = vec4<f32>(scale_q4i(k.x, e0, sbase, sh), scale_q4i(k.y, e0, sbase, sh),
        scale_q4i(k.z, e0, sbase, sh), scale_q4i(k.w, e0, sbase, sh));
    return Round(words4[vbase + k.x], words4[vbase + k.y], words4[vbase + k.z], words4[vbase + k.w],
        d * on);
}

fn sum_round(r: Round, b: u32, nb: u32) -> f32 {
    let k = round_blocks(b, nb);
    return (r.d.x * block_q4i(r.w0, k.x, nb) + r.d.y * block_q4i(r.w1, k.y, nb))
        + (r.d.z * block_q4i(r.w2, k.z, nb) + r.d.w * block_q4i(r.w3, k.w, nb));
}

// A lane's part of a q4_0 row of `nb` blocks whose codes start at vec4 `vbase`, given its first
// round (loaded before x was quantized, so that those loads overlap it).
fn q4i_lane(first: Round, vbase: u32, nb: u32, lane: u32, e0: u32, sbase: u32, sh: u32) -> f32 {
    var acc = sum_round(first, lane, nb);
    for (var b = lane + 4u * LANES4; b < nb; b += 4u * LANES4) {
        acc += sum_round(load_round(vbase, b, nb, e0, sbase, sh), b, nb);
    }
    return acc;
}

// The single products (attn_output, ffn_down, the classifier) fold no norm. Rows past the matrix
// read its last row (their sums are dropped).
// Each workgroup serves row groups g, g + G, .. (G workgroups in the grid), x quantized once for
// all of them: by default the host dispatches a workgroup per group (one pass of the loop), and a
// grid timed on the model (`GpuDecoder::tune_grid`) or `GpuOptions::int8_groups` caps G so that
// fewer workgroups stage x (each reads all of it from L2:
// at 4096 columns 8 KB of f16 x, and 16 KB of f32 norm weights where a norm is folded in, where a
// group of eight q4_0 rows is 18 KB).
@compute @workgroup_size(256)
fn matvec4_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    let nb = p.cols / 32u;
    let groups = (p.rows + ROWS4 - 1u) / ROWS4;
    let g0 = group_of(wid);
    var rl = row_in(g0, lid);
    var r = min(rl.x, p.rows - 1u);
    var first = load_round(r * nb, rl.y, nb, r * p.cols, 0u, bsh());
    quantize_x(lid.x, p.cols, false, 0.0);
    for (var g = g0; g < groups; g += nwg.x * nwg.y) {
        if (g != g0) {
            // The last group's row sums are read before the scratch is written again.
            workgroupBarrier();
            rl = row_in(g, lid);
            r = min(rl.x, p.rows - 1u);
            first = load_round(r * nb, rl.y, nb, r * p.cols, 0u, bsh());
        }
        finish(q4i_lane(first, r * nb, nb, rl.y, r * p.cols, 0u, bsh()), lid, rl.x);
    }
}

// Block b's products with x for the gate's codes g and the up's u (one read of x for both), times
// x's scale.
fn pair_q4i(g: vec4<u32>, u: vec4<u32>, b: u32, nb: u32) -> vec2<f32> {
    let x0 = xw[b];
    let x1 = xw[nb + b];
    let x2 = xw[2u * nb + b];
    let x3 = xw[3u * nb + b];
    let sg = (dot_q4i(g.x, x0) + dot_q4i(g.y, x1)) + (dot_q4i(g.z, x2) + dot_q4i(g.w, x3));
    let su = (dot_q4i(u.x, x0) + dot_q4i(u.y, x1)) + (dot_q4i(u.z, x2) + dot_q4i(u.w, x3));
    return xd[b] * vec2<f32>(f32(sg), f32(su));
}

// A gate/up round: Round's for both matrices (the up's codes and scales at bindings 7 and 8).
struct GluRound {
    g: Round,
    u0: vec4<u32>,
    u1: vec4<u32>,
    u2: vec4<u32>,
    u3: vec4<u32>,
    du: vec4<f32>,
}

fn load_glu(vbase: u32, b: u32, nb: u32, e0: u32) -> GluRound {
    let k = round_blocks(b, nb);
    let on = live(b, nb);
    let g = (vec4<u32>(e0) + 32u * k) >> vec4<u32>(bsh());
    let du = vec4<f32>(up_scale(g.x), up_scale(g.y), up_scale(g.z), up_scale(g.w)) * on;
    return GluRound(load_round(vbase, b, nb, e0, 0u, bsh()), up_words4[vbase + k.x],
        up_words4[vbase + k.y], up_words4[vbase + k.z], up_words4[vbase + k.w], du);
}

fn sum_glu(r: GluRound, b: u32, nb: u32) -> vec2<f32> {
    let k = round_blocks(b, nb);
    let p0 = pair_q4i(r.g.w0, r.u0, k.x, nb);
    let p1 = pair_q4i(r.g.w1, r.u1, k.y, nb);
    let p2 = pair_q4i(r.g.w2, r.u2, k.z, nb);
    let p3 = pair_q4i(r.g.w3, r.u3, k.w, nb);
    return vec2<f32>(dot(r.g.d, vec4<f32>(p0.x, p1.x, p2.x, p3.x)),
        dot(r.du, vec4<f32>(p0.y, p1.y, p2.y, p3.y)));
}

// matvec4_glu_q4i: matvec4_glu_q4c's gate and up products with integer dot products, x quantized
// once for both (bindings as matvec4_glu_q4c): four blocks of each a round, the first loaded
// before x is quantized.
@compute @workgroup_size(256)
fn matvec4_glu_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    let nb = p.cols / 32u;
    let groups = (p.rows + ROWS4 - 1u) / ROWS4;
    let g0 = group_of(wid);
    var rl = row_in(g0, lid);
    var r = min(rl.x, p.rows - 1u);
    var first = load_glu(r * nb, rl.y, nb, r * p.cols);
    let scale = quantize_x(lid.x, p.cols, p.norm == 1u, p.eps);
    for (var g = g0; g < groups; g += nwg.x * nwg.y) {
        if (g != g0) {
            workgroupBarrier();
            rl = row_in(g, lid);
            r = min(rl.x, p.rows - 1u);
            first = load_glu(r * nb, rl.y, nb, r * p.cols);
        }
        var a = sum_glu(first, rl.y, nb);
        for (var b = rl.y + 4u * LANES4; b < nb; b += 4u * LANES4) {
            a += sum_glu(load_glu(r * nb, b, nb, r * p.cols), b, nb);
        }
        glu_finish(a.x * scale, a.y * scale, lid, rl);
    }
}

// matvec4_qkv_q4i: matvec4_qkv_q4c's Q, K and V products (and RoPE) with integer dot products, x
// quantized once for the three (bindings as matvec4_qkv_q4c, and 12). A section's codes start on
// a whole vec4 (its rows are whole blocks).
@compute @workgroup_size(256)
fn matvec4_qkv_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = lid.x % LANES4;
    let nb = qp.cols / 32u;
    let sh = countTrailingZeros(qp.block);
    let groups = (qp.q_rows + 2u * qp.kv_rows) / ROWS4;
    let g0 = group_of(wid);
    var part = qkv_part_in(g0);
    var r = min(part.first + lid.x / LANES4, part.rows - 1u);
    var first = load_round(part.wbase / 4u + r * nb, lane, nb, r * qp.cols, part.sbase, sh);
    let scale = quantize_x(lid.x, qp.cols, qp.norm == 1u, qp.eps);
    for (var g = g0; g < groups; g += nwg.x * nwg.y) {
        if (g != g0) {
            workgroupBarrier();
            part = qkv_part_in(g);
            r = min(part.first + lid.x / LANES4, part.rows - 1u);
            first = load_round(part.wbase / 4u + r * nb, lane, nb, r * qp.cols, part.sbase, sh);
        }
        let vbase = part.wbase / 4u + r * nb;
        let acc = q4i_lane(first, vbase, nb, lane, r * qp.cols, part.sbase, sh);
        qkv_finish(part, acc * scale, lid);
    }
}
