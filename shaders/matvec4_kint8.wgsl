// matvec4_kint8: the K-quant decode products with integer dot products (`MatvecKernel::TiledInt8`),
// as matvec4_int8.wgsl does for q4_0: the float kernels (matvec4_kquant.wgsl) spend several
// instructions turning each code into a float and multiplying it by an x read from memory, and on an
// H100 a 7B Q4_K_M token streamed its weights at about 870 GB/s where q4_0's integer kernels reach
// 1.5 TB/s (benchmarks/2026-12-05-h100-kquant-fusions.md).
// Appended to the float K-quant module's files (matvec4.wgsl's bindings, row_in, finish,
// glu_finish, the Q/K/V parts; matvec4_norm.wgsl's norm_w and norm_scale; matvec4_kquant.wgsl's
// k_layout, k_scale_min, Q6W, q6_at, i8_at and codes32).
//
// Each workgroup first quantizes x into workgroup memory, a thread per block of 32 values (a
// K-quant sub-block): 8 bits a value, max |x| / 127 the block's scale, rounded to nearest, and the
// sum of the quantized values beside the scale (a K-quant weight is d * sc * q - dmin * m, so each
// sub-block's min multiplies the sum of its x; the quantized sum, not the exact one, as llama.cpp's
// q8_1 keeps it, so that the result is the weights' exact product with the quantized x: against the
// exact sum, x's rounding met the codes' mean of 7.5 uncancelled, twice the error on the test
// models). The values go where the lanes read them: lane i (0..8) of a
// super-block takes codes vec4 i (32 bytes: its low nibbles are values 16h..16h+16 of sub-block 2c,
// its high ones the same of 2c + 1, c = i / 2, h = i % 2), so those 16 values are one vec4 of words
// at xk[16 sb + i] and the high nibbles' at xk[16 sb + 8 + i]: a super-block's eight lanes read 128
// contiguous bytes. A code byte's nibble (with Q5_K's fifth bit, at most 31) is a non-negative
// signed byte, and dot4I8Packed takes four products at once; the min's part is the lane with h = 0's,
// for both its sub-blocks. Q6_K (a V beside Q4_K or Q5_K Q and K, or a Q6_K file's Q/K/V) takes
// its 6-bit codes less 32 as signed bytes the same way.
// Kernels: matvec4_ki (one Q4_K or Q5_K matrix, p.kind), matvec4_q6ki (one Q6_K matrix, read a word
// at a time as matvec4_kquant.wgsl's row_q6 reads it), matvec4_glu_ki (gate and up),
// matvec4_qkv_ki (Q/K/V as matvec4_qkv_k takes them), the RMSNorm folded in where p.norm (qp.norm)
// as matvec4_int8.wgsl folds it. Each workgroup loops over row groups a grid apart (x quantized
// once for all of them; the grid timed on the model as for q4_0). Rows of at most XK_BLOCKS * 32
// values (`MatvecKernel::for_matrix`); XK_BLOCKS comes in the part before this file: 352 (x and
// its scales fill 14 KB, the rest of WebGPU's 16 KB default goes to the row sums) or, in the long
// module for adapters that allow 32 KB, 704 (28 KB).
// The quantization of x is the only difference from the oracle's arithmetic: each value moves by
// at most half a step (max |x| / 254 of its block).

// x quantized: two vec4s of words a block of 32 (four values a word), placed as above; per block,
// the scale and the sum of its values.
var<workgroup> xk: array<vec4<u32>, 2u * XK_BLOCKS>;
var<workgroup> xks: array<vec2<f32>, XK_BLOCKS>;

// Quantizes x (`cols` values; times the norm's weights where `norm`) into xk and xks; every thread
// calls it. Returns the norm's scale (1 without a norm).
fn quantize_xk(t: u32, cols: u32, norm: bool, eps: f32) -> f32 {
    let nb = cols / 32u;
    var ss = 0.0;
    for (var b = t; b < nb; b += 256u) {
        var x = x_block(b, norm);
        ss += x.ss;
        var w = array<u32, 8>();
        var s = vec4<i32>(0);
        for (var i = 0u; i < 8u; i++) {
            let q = vec4<i32>(round(x.v[i] * x.inv));
            w[i] = pack4xI8Clamp(q);
            s += q;
        }
        // Sub-block j of super-block b / 8: its halves at slots 8 (j % 2) + 2 (j / 2) and one on.
        let j = b & 7u;
        let slot = 16u * (b >> 3u) + 8u * (j & 1u) + (j & 6u);
        xk[slot] = vec4<u32>(w[0], w[1], w[2], w[3]);
        xk[slot + 1u] = vec4<u32>(w[4], w[5], w[6], w[7]);
        xks[b] = vec2<f32>(x.d, x.d * f32((s.x + s.y) + (s.z + s.w)));
    }
    workgroupBarrier();
    if (!norm) {
        return 1.0;
    }
    return norm_scale(ss, t, cols, eps);
}

// What lane i of super-block sb multiplies: the quantized x of its low and high nibbles, and the
// scales and sums of sub-blocks 2c and 2c + 1.
struct KXI {
    a: vec4<u32>,
    b: vec4<u32>,
    sa: vec2<f32>,
    sb: vec2<f32>,
}

fn k_xi(i: u32, sb: u32) -> KXI {
    let blk = 8u * sb + (i & 6u);
    return KXI(xk[16u * sb + i], xk[16u * sb + 8u + i], xks[blk], xks[blk + 1u]);
}

fn dot4i(w: vec4<u32>, x: vec4<u32>) -> i32 {
    return (dot4I8Packed(w.x, x.x) + dot4I8Packed(w.y, x.y))
        + (dot4I8Packed(w.z, x.z) + dot4I8Packed(w.w, x.w));
}

// Codes vec4 i of a Q4_K or Q5_K super-block (header hdr; Q5_K's fifth bits of the same bytes in qh,
// `five`) against its quantized x.
fn ki_dot(hdr: vec4<u32>, w: vec4<u32>, qh: vec4<u32>, five: bool, i: u32, x: KXI) -> f32 {
    let c = i >> 1u;
    let m = vec4<u32>(0x0F0F0F0Fu);
    var lo = w & m;
    var hi = (w >> vec4<u32>(4u)) & m;
    if (five) {
        let one = vec4<u32>(0x01010101u);
        lo |= ((qh >> vec4<u32>(2u * c)) & one) << vec4<u32>(4u);
        hi |= ((qh >> vec4<u32>(2u * c + 1u)) & one) << vec4<u32>(4u);
    }
    let dm = unpack2x16float(hdr.x);
    let s0 = k_scale_min(hdr, 2u * c);
    let s1 = k_scale_min(hdr, 2u * c + 1u);
    var r = dm.x * (s0.x * x.sa.x * f32(dot4i(lo, x.a)) + s1.x * x.sb.x * f32(dot4i(hi, x.b)));
    if ((i & 1u) == 0u) {
        r -= dm.y * (s0.y * x.sa.y + s1.y * x.sb.y);
    }
    return r;
}

// Lane `lane`'s part of a Q4_K or Q5_K row of nsb super-blocks from vec4 `base`, lanes as row_k
// takes them (two super-blocks' loads before any arithmetic).
fn row_ki(base: u32, nsb: u32, lane: u32, kl: KLayout) -> f32 {
    let i = lane % 8u;
    var sb = lane / 8u;
    var acc = 0.0;
    for (; sb + 4u < nsb; sb += 8u) {
        let a = base + sb * kl.per;
        let b = a + 4u * kl.per;
        let ha = words4[a];
        let wa = words4[a + kl.codes + i];
        let hb = words4[b];
        let wb = words4[b + kl.codes + i];
        var qa = vec4<u32>(0u);
        var qb = vec4<u32>(0u);
        if (kl.five) {
            qa = words4[a + 1u + (i & 1u)];
            qb = words4[b + 1u + (i & 1u)];
        }
        acc += ki_dot(ha, wa, qa, kl.five, i, k_xi(i, sb))
            + ki_dot(hb, wb, qb, kl.five, i, k_xi(i, sb + 4u));
    }
    for (; sb < nsb; sb += 4u) {
        let a = base + sb * kl.per;
        var qa = vec4<u32>(0u);
        if (kl.five) {
            qa = words4[a + 1u + (i & 1u)];
        }
        acc += ki_dot(words4[a], words4[a + kl.codes + i], qa, kl.five, i, k_xi(i, sb));
    }
    return acc;
}

// Six-bit codes (0..63, a byte each) less 32, as signed bytes: n + 0x60 never carries out of a byte.
fn s6(v: u32) -> u32 {
    return (v + 0x60606060u) ^ 0x80808080u;
}

// Part `part` of a Q6_K super-block sb (matvec4_kquant.wgsl's q6_dot) against the quantized x: its
// four words hold values 128n + 32i + 4k + (0..4) of sub-block 4n + i (n = part / 8, k = part % 8).
fn q6i_dot(q: Q6W, part: u32, sb: u32) -> f32 {
    let n = part >> 3u;
    let k = part & 7u;
    let m4 = 0x0F0F0F0Fu;
    let m2 = 0x03030303u;
    let q0 = s6((q.a & m4) | ((q.h & m2) << 4u));
    let q1 = s6((q.b & m4) | (((q.h >> 2u) & m2) << 4u));
    let q2 = s6(((q.a >> 4u) & m4) | (((q.h >> 4u) & m2) << 4u));
    let q3 = s6(((q.b >> 4u) & m4) | (((q.h >> 6u) & m2) << 4u));
    let s01 = q.s01 >> (8u * (k >> 2u));
    let s23 = q.s23 >> (8u * (k >> 2u));
    // Sub-block 4n + i's half k / 4 sits at slot 8 (i % 2) + 4n + (i & 2) + k / 4, word k % 4.
    let at = 16u * sb + 4u * n + (k >> 2u);
    let wd = k & 3u;
    let blk = 8u * sb + 4u * n;
    let d0 = i8_at(s01, 0u) * xks[blk].x * f32(dot4I8Packed(q0, xk[at][wd]));
    let d1 = i8_at(s01, 16u) * xks[blk + 1u].x * f32(dot4I8Packed(q1, xk[at + 8u][wd]));
    let d2 = i8_at(s23, 0u) * xks[blk + 2u].x * f32(dot4I8Packed(q2, xk[at + 2u][wd]));
    let d3 = i8_at(s23, 16u) * xks[blk + 3u].x * f32(dot4I8Packed(q3, xk[at + 10u][wd]));
    return unpack2x16float(q.d).x * ((d0 + d1) + (d2 + d3));
}

// Lane `lane`'s part of a Q6_K row from word `base` of codes32, lanes as row_q6 takes them.
fn row_q6i(base: u32, nsb: u32, lane: u32) -> f32 {
    let part = lane % 16u;
    var acc = 0.0;
    for (var sb = lane / 16u; sb < nsb; sb += 2u) {
        acc += q6i_dot(q6_at(base + sb * 53u, part), part, sb);
    }
    return acc;
}

@compute @workgroup_size(256)
fn matvec4_ki(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    let nsb = p.cols / 256u;
    let kl = k_layout(p.kind);
    let groups = (p.rows + ROWS4 - 1u) / ROWS4;
    let g0 = group_of(wid);
    quantize_xk(lid.x, p.cols, false, 0.0);
    for (var g = g0; g < groups; g += nwg.x * nwg.y) {
        if (g != g0) {
            // The last group's row sums are read before the scratch is written again.
            workgroupBarrier();
        }
        let rl = row_in(g, lid);
        let r = min(rl.x, p.rows - 1u);
        finish(row_ki(r * nsb * kl.per, nsb, rl.y, kl), lid, rl.x);
    }
}

// matvec4_q6ki: one Q6_K matrix (the _M mixes' ffn_down and attn_v in some layers, the
// classifier), its words at binding 2 (codes32) as the fused kernels read them.
@compute @workgroup_size(256)
fn matvec4_q6ki(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    let nsb = p.cols / 256u;
    let groups = (p.rows + ROWS4 - 1u) / ROWS4;
    let g0 = group_of(wid);
    quantize_xk(lid.x, p.cols, false, 0.0);
    for (var g = g0; g < groups; g += nwg.x * nwg.y) {
        if (g != g0) {
            workgroupBarrier();
        }
        let rl = row_in(g, lid);
        let r = min(rl.x, p.rows - 1u);
        finish(row_q6i(r * nsb * 53u, nsb, rl.y), lid, rl.x);
    }
}

@compute @workgroup_size(256)
fn matvec4_glu_ki(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    let nsb = p.cols / 256u;
    let kl = k_layout(p.kind);
    let groups = (p.rows + ROWS4 - 1u) / ROWS4;
    let g0 = group_of(wid);
    let scale = quantize_xk(lid.x, p.cols, p.norm == 1u, p.eps);
    for (var g = g0; g < groups; g += nwg.x * nwg.y) {
        if (g != g0) {
            workgroupBarrier();
        }
        let rl = row_in(g, lid);
        let r = min(rl.x, p.rows - 1u);
        let i = rl.y % 8u;
        var a = vec2<f32>(0.0);
        for (var sb = rl.y / 8u; sb < nsb; sb += 4u) {
            let o = (r * nsb + sb) * kl.per;
            let hg = words4[o];
            let wg = words4[o + kl.codes + i];
            let hu = up_words4[o];
            let wu = up_words4[o + kl.codes + i];
            var qg = vec4<u32>(0u);
            var qu = vec4<u32>(0u);
            if (kl.five) {
                qg = words4[o + 1u + (i & 1u)];
                qu = up_words4[o + 1u + (i & 1u)];
            }
            let x = k_xi(i, sb);
            a += vec2<f32>(ki_dot(hg, wg, qg, kl.five, i, x), ki_dot(hu, wu, qu, kl.five, i, x));
        }
        glu_finish(a.x * scale, a.y * scale, lid, rl);
    }
}

@compute @workgroup_size(256)
fn matvec4_qkv_ki(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = lid.x % LANES4;
    let nsb = qp.cols / 256u;
    let groups = (qp.q_rows + 2u * qp.kv_rows) / ROWS4;
    let g0 = group_of(wid);
    let scale = quantize_xk(lid.x, qp.cols, qp.norm == 1u, qp.eps);
    for (var g = g0; g < groups; g += nwg.x * nwg.y) {
        if (g != g0) {
            workgroupBarrier();
        }
        let part = qkv_part_in(g);
        let r = min(part.first + lid.x / LANES4, part.rows - 1u);
        // Uniform across the workgroup: it reads one section.
        let kind = select(qp.qk_kind, qp.v_kind, part.m == 2u);
        var acc = 0.0;
        if (kind == KIND_Q6_K) {
            acc = row_q6i(4u * part.wbase + r * nsb * 53u, nsb, lane);
        } else {
            let kl = k_layout(kind);
            acc = row_ki(part.wbase + r * nsb * kl.per, nsb, lane, kl);
        }
        qkv_finish(part, acc * scale, lid);
    }
}
