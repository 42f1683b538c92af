// matvec4_q4i: the q4_0 decode product with integer dot products, as llama.cpp's NVIDIA path takes
// for long rows (x quantized to 8 bits per block of 32, `dot4I8Packed` on four codes at a time): the
// float kernels spend several instructions decoding each code, and on an H200 that, not memory,
// bounds them (benchmarks/2026-12-03-h200-qkv.md). Run under `MatvecKernel::TiledInt8` (natively
// the default); matvec4_glu_q4i and matvec4_qkv_q4i (below) do the same for the fused gate/up and
// Q/K/V.
// Appended to matvec4.wgsl and matvec4_norm.wgsl (their bindings, row_of, finish, bsh, xq, the Q/K/V
// kernels' parts, norm_w and norm_scale).
//
// Each workgroup first quantizes all of x into workgroup memory: word k of x (values 8k..8k+7, as a
// q4 word of codes holds them) becomes two words of signed bytes, values 8k, 8k+2, 8k+4, 8k+6 and
// 8k+1, 8k+3, 8k+5, 8k+7 (the low and the high nibbles of the codes' bytes), with one f32 scale per
// 32 values (max |x| / 127, values rounded to nearest). Then the lanes run as matvec4_q4c's: a
// code word's nibbles become signed bytes n - 8 without leaving the word, and two dot4I8Packed
// take its eight products exactly in integers; the row sums d_w * d_x * that in f32.
// Rows of at most XW_WORDS * 8 values (`MatvecKernel::for_matrix`); the other rows keep
// matvec4_q4c. The quantization of x is the only difference from the oracle's arithmetic: each value
// moves by at most half a step (max |x| / 254 of its block).
// RMSNorm folds in as matvec4_norm.wgsl says (quantizing per block is blind to a common scale, so
// quantizing w * x and scaling the products is what quantizing the normalised x would give).

const XW_WORDS: u32 = 1536u;

// x quantized: per word, the even and the odd values' bytes; per 32 values, the scale.
var<workgroup> xw: array<vec2<u32>, 1536>;
var<workgroup> xd: array<f32, 384>;
// Quantizes x (`cols` values; times the norm's weights where `norm`) into xw and xd; every thread
// calls it. rowsum (reduce_shared.wgsl or reduce_subgroup.wgsl) holds each thread's max |x| for a
// moment: four threads' words are a block. Returns the norm's scale (1 without a norm).
fn quantize_x(t: u32, cols: u32, norm: bool, eps: f32) -> f32 {
    let words = cols / 8u;
    var ss = 0.0;
    for (var c0 = 0u; c0 < words; c0 += 256u) {
        let k = c0 + t;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if (k < words) {
            a = xq(2u * k);
            b = xq(2u * k + 1u);
            if (norm) {
                ss += dot(a, a) + dot(b, b);
                a *= norm_w[2u * k];
                b *= norm_w[2u * k + 1u];
            }
        }
        let m = max(abs(a), abs(b));
        rowsum[t] = max(max(m.x, m.y), max(m.z, m.w));
        workgroupBarrier();
        let q0 = 4u * (t / 4u);
        let amax = max(max(rowsum[q0], rowsum[q0 + 1u]), max(rowsum[q0 + 2u], rowsum[q0 + 3u]));
        let inv = select(0.0, 127.0 / amax, amax > 0.0);
        if (k < words) {
            let qa = vec4<i32>(round(a * inv));
            let qb = vec4<i32>(round(b * inv));
            xw[k] = vec2<u32>(
                pack4xI8Clamp(vec4<i32>(qa.x, qa.z, qb.x, qb.z)),
                pack4xI8Clamp(vec4<i32>(qa.y, qa.w, qb.y, qb.w)));
            if (t % 4u == 0u) {
                xd[k / 4u] = amax / 127.0;
            }
        }
        workgroupBarrier();
    }
    if (!norm) {
        return 1.0;
    }
    return norm_scale(ss, t, cols, eps);
}

// The eight products of code word w with x word k, exactly: the nibbles of each byte as signed
// bytes n - 8 ((n + 0x78) ^ 0x80 never carries out of a byte, as n <= 15).
fn dot_q4i(w: u32, k: u32) -> i32 {
    let lo = ((w & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u;
    let hi = (((w >> 4u) & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u;
    let x = xw[k];
    return dot4I8Packed(lo, x.x) + dot4I8Packed(hi, x.y);
}

// A lane's part of a q4_0 row of p.cols or qp.cols values (`nu` units of 32): codes from word `base`
// (the row's first word plus the lane's quarter qd), the row's first element e0, its scales from word
// sbase on, blocks of 1 << sh values. matvec4_q4i's rows start their scales at 0; each Q/K/V section
// at its own.
fn q4i_lane(base: u32, nu: u32, lane: u32, e0: u32, sbase: u32, sh: u32) -> f32 {
    let qd = lane % 4u;
    var acc = 0.0;
    var u = lane / 4u;
    for (; u + 24u < nu; u += 32u) {
        let w0 = words1[base + 4u * u];
        let w1 = words1[base + 4u * (u + 8u)];
        let w2 = words1[base + 4u * (u + 16u)];
        let w3 = words1[base + 4u * (u + 24u)];
        acc += (unit_q4i(w0, u, qd, e0, sbase, sh) + unit_q4i(w1, u + 8u, qd, e0, sbase, sh))
            + (unit_q4i(w2, u + 16u, qd, e0, sbase, sh) + unit_q4i(w3, u + 24u, qd, e0, sbase, sh));
    }
    for (; u < nu; u += 8u) {
        acc += unit_q4i(words1[base + 4u * u], u, qd, e0, sbase, sh);
    }
    return acc;
}

// Word `w` of unit u (32 values), this lane's quarter qd, of a row starting at element e0.
fn unit_q4i(w: u32, u: u32, qd: u32, e0: u32, sbase: u32, sh: u32) -> f32 {
    let b = (e0 + 32u * u) >> sh;
    return half_at(scales[sbase + (b >> 1u)], b) * xd[u] * f32(dot_q4i(w, 4u * u + qd));
}

// The single products (attn_output, ffn_down, the classifier) fold no norm.
@compute @workgroup_size(256)
fn matvec4_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    quantize_x(lid.x, p.cols, false, 0.0);
    let rl = row_of(wid, lid);
    var acc = 0.0;
    if (rl.x < p.rows) {
        let base = rl.x * p.cols / 8u + rl.y % 4u;
        acc = q4i_lane(base, p.cols / 32u, rl.y, rl.x * p.cols, 0u, bsh());
    }
    finish(acc, lid, rl.x);
}

// matvec4_glu_q4i: matvec4_glu_q4c's gate and up products with integer dot products, x quantized
// once for both (bindings as matvec4_glu_q4c).
@compute @workgroup_size(256)
fn matvec4_glu_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = quantize_x(lid.x, p.cols, p.norm == 1u, p.eps);
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
            let ba = (e0 + 32u * u) >> bsh();
            let bb = (e0 + 32u * (u + 8u)) >> bsh();
            let ka = 4u * u + qd;
            let kb = 4u * (u + 8u) + qd;
            ag += block_scale(ba) * xd[u] * f32(dot_q4i(g0, ka))
                + block_scale(bb) * xd[u + 8u] * f32(dot_q4i(g1, kb));
            au += up_scale(ba) * xd[u] * f32(dot_q4i(u0, ka))
                + up_scale(bb) * xd[u + 8u] * f32(dot_q4i(u1, kb));
        }
        for (; u < nu; u += 8u) {
            let b = (e0 + 32u * u) >> bsh();
            let k = 4u * u + qd;
            ag += block_scale(b) * xd[u] * f32(dot_q4i(words1[base + 4u * u], k));
            au += up_scale(b) * xd[u] * f32(dot_q4i(up_words[base + 4u * u], k));
        }
    }
    glu_finish(ag * scale, au * scale, lid, rl);
}

// matvec4_qkv_q4i: matvec4_qkv_q4c's Q, K and V products (and RoPE) with integer dot products, x
// quantized once for the three (bindings as matvec4_qkv_q4c, and 12).
@compute @workgroup_size(256)
fn matvec4_qkv_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = quantize_x(lid.x, qp.cols, qp.norm == 1u, qp.eps);
    let part = qkv_part(wid);
    let r = part.first + lid.x / LANES4;
    let lane = lid.x % LANES4;
    var acc = 0.0;
    if (r < part.rows) {
        let base = part.wbase + r * qp.cols / 8u + lane % 4u;
        let sh = countTrailingZeros(qp.block);
        acc = q4i_lane(base, qp.cols / 32u, lane, r * qp.cols, part.sbase, sh);
    }
    qkv_finish(part, acc * scale, lid);
}
