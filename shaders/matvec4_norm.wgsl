// RMSNorm folded into the product that reads it (MatParams.norm, QkvParams.norm = 1): x is then the
// residual stream, each workgroup reads w * x (the norm's weights at binding 12) while it sums x^2,
// and the products are scaled by 1 / sqrt(mean(x^2) + eps) at the end: the same arithmetic as the
// norm's, without the dispatch that writes the normalised x (on an H200 each RMSNorm dispatch cost
// ~7 us of a 7B q4_0 token; folding 64 of them took 4.258 to 3.821 ms, benchmarks/2026-12-04-h200-fold.md).
// The integer-dot kernels (matvec4_int8.wgsl) fold it into their quantization of x; for f16 and q8_0
// weights, matvec4_qkv_f16n, matvec4_glu_f16n, matvec4_qkv_q8n and matvec4_glu_q8n (here) stage
// w * x in workgroup memory as f16, as the normalised x was stored (f16 activations only), rows of
// at most XH_VEC4S * 8 values (matvec4_kquant.wgsl's K-quant kernels too).
// Appended to matvec4.wgsl's module (its bindings, row_of, glu_finish, the Q/K/V kernels' parts).
// Bindings beyond matvec4's: 12 norm_w: storage read array<vec4<f32>> (cols / 4), the norm's weights;
// where a kernel here folds no norm, x again (never read).

@group(0) @binding(12) var<storage, read> norm_w: array<vec4<f32>>;

// Each 32-lane row's part of the sum of squares.
var<workgroup> norm_sums: array<f32, 8>;

// The norm's scale from each thread's part `ss` of the sum of x^2 over `cols` values. Every thread
// calls it (barriers), after its own last read of rowsum (row_sum's precondition).
fn norm_scale(ss: f32, t: u32, cols: u32, eps: f32) -> f32 {
    let row = row_sum(ss, t);
    if (t % 32u == 0u) {
        norm_sums[t / 32u] = row;
    }
    workgroupBarrier();
    let total = ((norm_sums[0] + norm_sums[1]) + (norm_sums[2] + norm_sums[3]))
        + ((norm_sums[4] + norm_sums[5]) + (norm_sums[6] + norm_sums[7]));
    return 1.0 / sqrt(total / f32(cols) + eps);
}

// Block b of x (32 values, times the norm's weights where `norm`) for the integer-dot kernels'
// quantization (matvec4_int8.wgsl, matvec4_kint8.wgsl): the values, their part of the sum of x^2
// (the norm's), and the step max |value| / 127 with its inverse (0 for a block of zeros).
struct XBlock {
    v: array<vec4<f32>, 8>,
    ss: f32,
    d: f32,
    inv: f32,
}

fn x_block(b: u32, norm: bool) -> XBlock {
    var v: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        v[i] = xq(8u * b + i);
    }
    var ss = 0.0;
    var m = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        if (norm) {
            ss += dot(v[i], v[i]);
            v[i] *= norm_w[8u * b + i];
        }
        m = max(m, abs(v[i]));
    }
    let amax = max(max(m.x, m.y), max(m.z, m.w));
    return XBlock(v, ss, amax / 127.0, select(0.0, 127.0 / amax, amax > 0.0));
}

const XH_VEC4S: u32 = 768u;

// w * x as f16, eight values a vec4 (values 8k..8k+7 in xh[k], as a vec4 of f16 codes holds them).
var<workgroup> xh: array<vec4<u32>, 768>;

// Stages w * x (`cols` values) in xh and returns the norm's scale; every thread calls it. The
// barriers in norm_scale make xh whole before any lane reads it.
fn stage_x_f16(t: u32, cols: u32, eps: f32) -> f32 {
    var ss = 0.0;
    for (var k = t; k < cols / 8u; k += 256u) {
        let a = xq(2u * k);
        let b = xq(2u * k + 1u);
        ss += dot(a, a) + dot(b, b);
        let ga = a * norm_w[2u * k];
        let gb = b * norm_w[2u * k + 1u];
        xh[k] = vec4<u32>(pack2x16float(ga.xy), pack2x16float(ga.zw), pack2x16float(gb.xy),
            pack2x16float(gb.zw));
    }
    return norm_scale(ss, t, cols, eps);
}

// Eight f16 codes (a vec4) times staged values xh[k].
fn dot_xh(w: vec4<u32>, k: u32) -> f32 {
    let x = xh[k];
    return dot8_f16(w, vec4<f32>(unpack2x16float(x.x), unpack2x16float(x.y)),
        vec4<f32>(unpack2x16float(x.z), unpack2x16float(x.w)));
}

// matvec4_qkv_f16n: matvec4_qkv_f16 with the norm folded in (its bindings and 12).
@compute @workgroup_size(256)
fn matvec4_qkv_f16n(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = stage_x_f16(lid.x, qp.cols, qp.eps);
    let part = qkv_part(wid);
    let r = part.first + lid.x / LANES4;
    let lane = lid.x % LANES4;
    var acc = 0.0;
    if (r < part.rows) {
        let nv = qp.cols / 8u;
        let base = part.wbase + r * nv;
        var v = lane;
        for (; v + 3u * LANES4 < nv; v += 4u * LANES4) {
            let w0 = words4[base + v];
            let w1 = words4[base + v + LANES4];
            let w2 = words4[base + v + 2u * LANES4];
            let w3 = words4[base + v + 3u * LANES4];
            acc += (dot_xh(w0, v) + dot_xh(w1, v + LANES4))
                + (dot_xh(w2, v + 2u * LANES4) + dot_xh(w3, v + 3u * LANES4));
        }
        for (; v < nv; v += LANES4) {
            acc += dot_xh(words4[base + v], v);
        }
    }
    qkv_finish(part, acc * scale, lid);
}

// matvec4_glu_f16n: matvec4_glu_f16 with the norm folded in (its bindings and 12).
@compute @workgroup_size(256)
fn matvec4_glu_f16n(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = stage_x_f16(lid.x, p.cols, p.eps);
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
            ag += dot_xh(g0, v) + dot_xh(g1, v + LANES4);
            au += dot_xh(u0, v) + dot_xh(u1, v + LANES4);
        }
        for (; v < nv; v += LANES4) {
            ag += dot_xh(words4[base + v], v);
            au += dot_xh(up_words4[base + v], v);
        }
    }
    glu_finish(ag * scale, au * scale, lid, rl);
}

// Sixteen q8 codes (a vec4) times staged values 16v..16v+15 (xh[2v], xh[2v + 1]).
fn q8_xh(w: vec4<u32>, v: u32) -> f32 {
    let a = xh[2u * v];
    let b = xh[2u * v + 1u];
    return q8_dot4(w, vec4<f32>(unpack2x16float(a.x), unpack2x16float(a.y)),
        vec4<f32>(unpack2x16float(a.z), unpack2x16float(a.w)),
        vec4<f32>(unpack2x16float(b.x), unpack2x16float(b.y)),
        vec4<f32>(unpack2x16float(b.z), unpack2x16float(b.w)));
}

// matvec4_glu_q8n: matvec4_glu_q8 with the norm folded in (its bindings and 12).
@compute @workgroup_size(256)
fn matvec4_glu_q8n(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = stage_x_f16(lid.x, p.cols, p.eps);
    let rl = row_of(wid, lid);
    var ag = 0.0;
    var au = 0.0;
    if (rl.x < p.rows) {
        let nv = p.cols / 16u;
        let base = rl.x * nv;
        let e0 = rl.x * p.cols;
        for (var v = rl.y; v < nv; v += LANES4) {
            let g = words4[base + v];
            let u = up_words4[base + v];
            let b = (e0 + 16u * v) >> bsh();
            ag += block_scale(b) * q8_xh(g, v);
            au += up_scale(b) * q8_xh(u, v);
        }
    }
    glu_finish(ag * scale, au * scale, lid, rl);
}

// matvec4_qkv_q8n: matvec4_qkv_q8 with the norm folded in (its bindings and 12).
@compute @workgroup_size(256)
fn matvec4_qkv_q8n(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = stage_x_f16(lid.x, qp.cols, qp.eps);
    let part = qkv_part(wid);
    let r = part.first + lid.x / LANES4;
    let lane = lid.x % LANES4;
    let sh = countTrailingZeros(qp.block);
    var acc = 0.0;
    if (r < part.rows) {
        let nv = qp.cols / 16u;
        let base = part.wbase + r * nv;
        let e0 = r * qp.cols;
        for (var v = lane; v < nv; v += LANES4) {
            let b = (e0 + 16u * v) >> sh;
            acc += half_at(scales[part.sbase + (b >> 1u)], b) * q8_xh(words4[base + v], v);
        }
    }
    qkv_finish(part, acc * scale, lid);
}
