// matvec4_kquant: the decode products of K-quant weights (ggml's Q4_K, Q5_K, Q6_K as GGUF stores them;
// kquant.wgsl has the byte layout). Appended to matvec4.wgsl's module (its bindings, row_of, finish,
// glu_finish, the Q/K/V kernels' parts) after matvec4_kquant_x.wgsl, or after matvec4_norm.wgsl and
// matvec4_kquant_norm.wgsl for the norm-folding kernels.
//
// Q4_K and Q5_K super-blocks are 9 and 11 vec4s, so a super-block's header (d, dmin, the 12 bytes of
// sub-block scales and mins) is one vec4 and its codes 8 more (Q5_K: 2 vec4s of fifth bits between).
// Eight lanes share a super-block, each taking one vec4 of codes (16 bytes: 32 values of two
// sub-blocks), so 32 lanes cover 4 super-blocks a pass; two passes are loaded before any arithmetic.
// Q6_K's 53-word super-blocks are not vec4-aligned: alone it keeps the 32-bit kernel (matvec_k); in
// the fused kernels (a Q6_K file's gate/up and Q/K/V, or V beside Q4_K or Q5_K Q and K, as
// llama-quantize's Q4_K_M and Q5_K_M give some layers' attn_v more bits) it is read a word at a time
// through binding 2 (codes32), 16 lanes a super-block.
//
// Kernels: matvec4_q4k, matvec4_q5k (one matrix); matvec4_glu_k (a Q4_K or Q5_K gate and up, the
// up's super-blocks at binding 7, as the other GLU kernels) and matvec4_glu_q6k (Q6_K, a word at a
// time: the gate's words at binding 2, the up's at 7); matvec4_qkv_k (a layer's Q, K and V as
// matvec4_qkv_q4c lays them out, QkvParams in vec4 units, Q and K Q4_K, Q5_K or Q6_K, V any of
// them, as llama-quantize's mixes give it more bits); and matvec4_glu_kn, matvec4_glu_q6kn,
// matvec4_qkv_kn (matvec4_kquant_norm.wgsl) with the RMSNorm folded in (f16 activations: w x staged
// as f16 by stage_x_f16, the sums scaled by the norm's factor at the end, as matvec4_glu_f16n does).
// A kernel's x comes from x8: x4 in this module (matvec4_kquant_x.wgsl's x8, `staged` false), or
// the staged xh in the norm-folding one (matvec4_kquant_norm.wgsl's), so that the plain kernels
// declare no staging memory (12 KB a workgroup, which would cost occupancy on small GPUs and
// zeroing in browsers).

// Q6_K codes as 32-bit words: the Q/K/V buffer (matvec4_qkv_k), a Q6_K gate (matvec4_glu_q6k); the
// K-quant kernels bind no scales.
@group(0) @binding(2) var<storage, read> codes32: array<u32>;

// The low and the high nibbles of the four bytes of `w`, as floats.
fn lo4(w: u32) -> vec4<f32> {
    return u2f4((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
}

fn hi4(w: u32) -> vec4<f32> {
    return u2f4((vec4<u32>(w) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
}

// Bit `b` of each of the four bytes of `w`, as 0 or 16.
fn bit16(w: u32, b: u32) -> vec4<f32> {
    return u2f4(((vec4<u32>(w) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(b))) & vec4<u32>(1u)) * vec4<u32>(16u));
}

// Scale and min of sub-block j from a K header vec4 (bytes 4..16 are hdr.y, hdr.z, hdr.w).
fn k_scale_min(hdr: vec4<u32>, j: u32) -> vec2<f32> {
    let sh = 8u * (j & 3u);
    if (j < 4u) {
        return vec2<f32>(f32((hdr.y >> sh) & 63u), f32((hdr.z >> sh) & 63u));
    }
    let lo = (hdr.w >> sh) & 255u;
    return vec2<f32>(
        f32((lo & 15u) | ((((hdr.y >> sh) >> 6u) & 3u) << 4u)),
        f32((lo >> 4u) | ((((hdr.z >> sh) >> 6u) & 3u) << 4u)));
}

// x vector j alone (Q6_K's parts read single vectors).
fn x4v(j: u32, staged: bool) -> vec4<f32> {
    let v = x8(j & ~1u, staged);
    return select(v[0], v[1], (j & 1u) == 1u);
}

// The x values that codes vec4 `i` (0..8) of a super-block whose x starts at vector xs multiply
// (x vectors a: its low nibbles', b: its high ones'), and their sums.
struct KX {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    b0: vec4<f32>,
    b1: vec4<f32>,
    b2: vec4<f32>,
    b3: vec4<f32>,
    sums: vec2<f32>,
}

fn k_x(i: u32, xs: u32, staged: bool) -> KX {
    let xl = xs + 16u * (i >> 1u) + 4u * (i & 1u);
    let a01 = x8(xl, staged);
    let a23 = x8(xl + 2u, staged);
    let b01 = x8(xl + 8u, staged);
    let b23 = x8(xl + 10u, staged);
    let one = vec4<f32>(1.0);
    let sums = vec2<f32>(dot((a01[0] + a01[1]) + (a23[0] + a23[1]), one),
        dot((b01[0] + b01[1]) + (b23[0] + b23[1]), one));
    return KX(a01[0], a01[1], a23[0], a23[1], b01[0], b01[1], b23[0], b23[1], sums);
}

// Codes vec4 `i` (0..8) of a super-block (header hdr) against its x: its low nibbles are elements
// 64c + 16h + 0..16 (sub-block 2c), its high ones 32 further (2c + 1), c = i / 2, h = i % 2. `qh` holds
// Q5_K's fifth bits of the same bytes (zero for Q4_K, `five` false).
fn k_dot(hdr: vec4<u32>, w: vec4<u32>, qh: vec4<u32>, five: bool, i: u32, x: KX) -> f32 {
    let c = i >> 1u;
    var l0 = lo4(w.x); var l1 = lo4(w.y); var l2 = lo4(w.z); var l3 = lo4(w.w);
    var h0 = hi4(w.x); var h1 = hi4(w.y); var h2 = hi4(w.z); var h3 = hi4(w.w);
    if (five) {
        l0 += bit16(qh.x, 2u * c); l1 += bit16(qh.y, 2u * c);
        l2 += bit16(qh.z, 2u * c); l3 += bit16(qh.w, 2u * c);
        h0 += bit16(qh.x, 2u * c + 1u); h1 += bit16(qh.y, 2u * c + 1u);
        h2 += bit16(qh.z, 2u * c + 1u); h3 += bit16(qh.w, 2u * c + 1u);
    }
    let ql = (dot(l0, x.a0) + dot(l1, x.a1)) + (dot(l2, x.a2) + dot(l3, x.a3));
    let qhi = (dot(h0, x.b0) + dot(h1, x.b1)) + (dot(h2, x.b2) + dot(h3, x.b3));
    let dm = unpack2x16float(hdr.x);
    let s0 = k_scale_min(hdr, 2u * c);
    let s1 = k_scale_min(hdr, 2u * c + 1u);
    return dm.x * (s0.x * ql + s1.x * qhi) - dm.y * (s0.y * x.sums.x + s1.y * x.sums.y);
}

// Lane `lane`'s part of a K-quant row of nsb super-blocks from vec4 `base`, each `per` vec4s (9 or
// 11) with its codes from vec4 `codes`: lane l takes codes vec4 l % 8 of super-blocks l / 8,
// l / 8 + 4, ...
fn row_k(base: u32, nsb: u32, lane: u32, per: u32, codes: u32, five: bool, staged: bool) -> f32 {
    let i = lane % 8u;
    var sb = lane / 8u;
    var acc = 0.0;
    for (; sb + 4u < nsb; sb += 8u) {
        let a = base + sb * per;
        let b = a + 4u * per;
        let ha = words4[a];
        let wa = words4[a + codes + i];
        let hb = words4[b];
        let wb = words4[b + codes + i];
        var qa = vec4<u32>(0u);
        var qb = vec4<u32>(0u);
        if (five) {
            qa = words4[a + 1u + (i & 1u)];
            qb = words4[b + 1u + (i & 1u)];
        }
        acc += k_dot(ha, wa, qa, five, i, k_x(i, sb * 64u, staged))
            + k_dot(hb, wb, qb, five, i, k_x(i, (sb + 4u) * 64u, staged));
    }
    for (; sb < nsb; sb += 4u) {
        let a = base + sb * per;
        var qa = vec4<u32>(0u);
        if (five) {
            qa = words4[a + 1u + (i & 1u)];
        }
        acc += k_dot(words4[a], words4[a + codes + i], qa, five, i, k_x(i, sb * 64u, staged));
    }
    return acc;
}

@compute @workgroup_size(256)
fn matvec4_q4k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var acc = 0.0;
    if (rl.x < p.rows) {
        let nsb = p.cols / 256u;
        acc = row_k(rl.x * nsb * 9u, nsb, rl.y, 9u, 1u, false, false);
    }
    finish(acc, lid, rl.x);
}

@compute @workgroup_size(256)
fn matvec4_q5k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rl = row_of(wid, lid);
    var acc = 0.0;
    if (rl.x < p.rows) {
        let nsb = p.cols / 256u;
        acc = row_k(rl.x * nsb * 11u, nsb, rl.y, 11u, 3u, true, false);
    }
    finish(acc, lid, rl.x);
}

// A signed byte at bit `shift` of `v`.
fn i8_at(v: u32, shift: u32) -> f32 {
    return f32(i32(v << (24u - shift)) >> 24u);
}

// Part `part` (0..16) of a Q6_K super-block: part 8n + k holds bytes 4k..4k+4 of half n, elements
// 128n + 32i + 4k + (0..4) for i < 4 (kquant.wgsl's kq_part_dot). The words it reads: low nibbles
// a and b, high bit pairs h, the scales of its four sub-blocks (two per word) and the word of d.
struct Q6W {
    a: u32,
    b: u32,
    h: u32,
    s01: u32,
    s23: u32,
    d: u32,
}

// Part `part`'s words of the super-block at word w of codes32 (binding 2).
fn q6_at(w: u32, part: u32) -> Q6W {
    let n = part >> 3u;
    let k = part & 7u;
    return Q6W(codes32[w + 16u * n + k], codes32[w + 16u * n + 8u + k], codes32[w + 32u + 8u * n + k],
        codes32[w + 48u + 2u * n], codes32[w + 49u + 2u * n], codes32[w + 52u]);
}

// The same of the up matrix (binding 7, matvec4_glu_q6k).
fn q6_up_at(w: u32, part: u32) -> Q6W {
    let n = part >> 3u;
    let k = part & 7u;
    return Q6W(up_words[w + 16u * n + k], up_words[w + 16u * n + 8u + k],
        up_words[w + 32u + 8u * n + k], up_words[w + 48u + 2u * n], up_words[w + 49u + 2u * n],
        up_words[w + 52u]);
}

// The four x vectors part `part` of a super-block whose x starts at vector xs multiplies.
fn q6_x(xs: u32, part: u32, staged: bool) -> array<vec4<f32>, 4> {
    let c = xs + 32u * (part >> 3u) + (part & 7u);
    return array<vec4<f32>, 4>(x4v(c, staged), x4v(c + 8u, staged), x4v(c + 16u, staged),
        x4v(c + 24u, staged));
}

fn q6_dot(q: Q6W, part: u32, x: array<vec4<f32>, 4>) -> f32 {
    let sh = vec4<u32>(0u, 8u, 16u, 24u);
    let a = vec4<u32>(q.a) >> sh;
    let b = vec4<u32>(q.b) >> sh;
    let h = vec4<u32>(q.h) >> sh;
    // Scales 8n + k/4 + 2i, for i < 4: two per word.
    let s01 = q.s01 >> (8u * ((part & 7u) >> 2u));
    let s23 = q.s23 >> (8u * ((part & 7u) >> 2u));
    let m4 = vec4<u32>(15u);
    let m2 = vec4<u32>(3u);
    let q0 = u2f4((a & m4) | ((h & m2) << vec4<u32>(4u)));
    let q1 = u2f4((b & m4) | (((h >> vec4<u32>(2u)) & m2) << vec4<u32>(4u)));
    let q2 = u2f4(((a >> vec4<u32>(4u)) & m4) | (((h >> vec4<u32>(4u)) & m2) << vec4<u32>(4u)));
    let q3 = u2f4(((b >> vec4<u32>(4u)) & m4) | (((h >> vec4<u32>(6u)) & m2) << vec4<u32>(4u)));
    let m = vec4<f32>(32.0);
    let s = (i8_at(s01, 0u) * dot(q0 - m, x[0]) + i8_at(s01, 16u) * dot(q1 - m, x[1]))
        + (i8_at(s23, 0u) * dot(q2 - m, x[2]) + i8_at(s23, 16u) * dot(q3 - m, x[3]));
    return unpack2x16float(q.d).x * s;
}

// Lane `lane`'s part of a Q6_K row of nsb super-blocks from word `base` of codes32: 16 lanes a
// super-block, two super-blocks a pass.
fn row_q6(base: u32, nsb: u32, lane: u32, staged: bool) -> f32 {
    let part = lane % 16u;
    var acc = 0.0;
    for (var sb = lane / 16u; sb < nsb; sb += 2u) {
        acc += q6_dot(q6_at(base + sb * 53u, part), part, q6_x(sb * 64u, part, staged));
    }
    return acc;
}

// matvec4_glu_q6k(n): the same for Q6_K gate and up, the gate's words at binding 2 (codes32), the
// up's at 7 as words, a row's lanes as row_q6 takes them.
fn glu_q6k(wid: vec3<u32>, lid: vec3<u32>, staged: bool, scale: f32) {
    let rl = row_of(wid, lid);
    var a = vec2<f32>(0.0);
    if (rl.x < p.rows) {
        let nsb = p.cols / 256u;
        let part = rl.y % 16u;
        for (var sb = rl.y / 16u; sb < nsb; sb += 2u) {
            let w = (rl.x * nsb + sb) * 53u;
            let g = q6_at(w, part);
            let u = q6_up_at(w, part);
            let x = q6_x(sb * 64u, part, staged);
            a += vec2<f32>(q6_dot(g, part, x), q6_dot(u, part, x));
        }
    }
    glu_finish(a.x * scale, a.y * scale, lid, rl);
}

@compute @workgroup_size(256)
fn matvec4_glu_q6k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    glu_q6k(wid, lid, false, 1.0);
}

// The layout of a K-quant super-block of kind `kind` (Q4_K or Q5_K): vec4s a super-block, the first
// vec4 of codes, whether there are fifth bits.
struct KLayout {
    per: u32,
    codes: u32,
    five: bool,
}

fn k_layout(kind: u32) -> KLayout {
    if (kind == KIND_Q5_K) {
        return KLayout(11u, 3u, true);
    }
    return KLayout(9u, 1u, false);
}

// matvec4_glu_k(n): SwiGLU's (or GELU's) gate and up, both Q4_K or both Q5_K (p.kind), in one
// dispatch, rows read as matvec4_q4k reads them, a super-block a lane at a time (each x load serving
// both; the two matrices' loads in flight together).
fn glu_k(wid: vec3<u32>, lid: vec3<u32>, staged: bool, scale: f32) {
    let rl = row_of(wid, lid);
    let kl = k_layout(p.kind);
    var a = vec2<f32>(0.0);
    if (rl.x < p.rows) {
        let nsb = p.cols / 256u;
        let i = rl.y % 8u;
        for (var sb = rl.y / 8u; sb < nsb; sb += 4u) {
            let o = (rl.x * nsb + sb) * kl.per;
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
            let x = k_x(i, sb * 64u, staged);
            a += vec2<f32>(k_dot(hg, wg, qg, kl.five, i, x), k_dot(hu, wu, qu, kl.five, i, x));
        }
    }
    glu_finish(a.x * scale, a.y * scale, lid, rl);
}

@compute @workgroup_size(256)
fn matvec4_glu_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    glu_k(wid, lid, false, 1.0);
}

// matvec4_qkv_k(n): a layer's Q, K and V in one dispatch (Q and K both Q4_K, Q5_K or Q6_K,
// QkvParams.qk_kind; V any of the three, QkvParams.v_kind), with matvec4_qkv_q4c's sections, RoPE
// and direct KV stores.
fn qkv_k(wid: vec3<u32>, lid: vec3<u32>, staged: bool, scale: f32) {
    let part = qkv_part(wid);
    let r = part.first + lid.x / LANES4;
    let lane = lid.x % LANES4;
    let nsb = qp.cols / 256u;
    // Uniform across the workgroup: it reads one section.
    let kind = select(qp.qk_kind, qp.v_kind, part.m == 2u);
    var acc = 0.0;
    if (r < part.rows) {
        if (kind == KIND_Q6_K) {
            acc = row_q6(4u * part.wbase + r * nsb * 53u, nsb, lane, staged);
        } else {
            let kl = k_layout(kind);
            let base = part.wbase + r * nsb * kl.per;
            acc = row_k(base, nsb, lane, kl.per, kl.codes, kl.five, staged);
        }
    }
    qkv_finish(part, acc * scale, lid);
}

@compute @workgroup_size(256)
fn matvec4_qkv_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    qkv_k(wid, lid, false, 1.0);
}

