// matmul_ki: the prompt pass's K-quant product (Q4_K, Q5_K, Q6_K; out[t] (+)= W x[t]) in integer dot
// products, as matmul_q4i does for q4_0 (same tile, roles and dispatch: 64 rows by 64 tokens, a
// 32-column step at a time, a thread's 4 x 4 block, x from quant_x8). Appended after
// matmul_int8.wgsl (its staging arrays, xq, mi_row) and kquant.wgsl (the super-block layouts,
// kq_words, kq_byte, kq_scale_min); binds no scales or mins (2, 3). Taken under
// `MatvecKernel::TiledInt8` (`MatvecKernel::for_matmul`).
//
// A step is one Q4_K/Q5_K sub-block (one scale and min for the step's 32 values of a row) or two
// Q6_K sub-blocks of 16 (a scale for each half). Each staging thread decodes 8 codes of its row in
// place as bytes (a nibble, with Q5_K's fifth bit: 0..31; Q6_K's six bits less 32, signed), in
// natural order, and stages x's words of the same values (quant_x8 wrote them in that order for a
// K-quant). The weight scales are per row and half step, the min per row; the min multiplies the
// sum of the token's quantized x in the step (xq's sum times its scale; so that the result is the
// weights' exact product with the quantized x, as in matvec4_kint8.wgsl).

// Per row of the step: the scales of its two halves; the min (d_min * m, 0 for Q6_K).
var<workgroup> mk_wd: array<vec2<f32>, 64>;
var<workgroup> mk_wm: array<f32, 64>;
// Per token of the step: its scale times the sum of its quantized x.
var<workgroup> mk_xs: array<f32, 64>;

// Eight codes of row r from column c (a multiple of 8: one sub-block's) as signed bytes, natural
// order, with their scale and the sub-block's min.
struct KQ8 {
    w: vec2<u32>,
    d: f32,
    m: f32,
}

fn kq_q8(r: u32, c: u32) -> KQ8 {
    let w = (r * (p.cols >> 8u) + (c >> 8u)) * kq_words();
    let e = c & 255u;
    let l0 = e & 31u;
    if (p.kind == KIND_Q6_K) {
        let n = e >> 7u;
        let k = (e >> 5u) & 3u;
        let lo = w + (64u * n + 32u * (k & 1u) + l0) / 4u;
        let hi = w + (128u + 32u * n + l0) / 4u;
        let sh = 4u * (k >> 1u);
        let l = (vec2<u32>(words[lo], words[lo + 1u]) >> vec2<u32>(sh)) & vec2<u32>(0x0F0F0F0Fu);
        let h = (vec2<u32>(words[hi], words[hi + 1u]) >> vec2<u32>(2u * k)) & vec2<u32>(0x03030303u);
        // Less 32 per byte: n + 0x60 never carries out of a byte.
        let s = (l | (h << vec2<u32>(4u))) + vec2<u32>(0x60606060u);
        let d = unpack2x16float(words[w + 52u]).x * f32(i32(kq_byte(w, 192u + (e >> 4u)) << 24u) >> 24u);
        return KQ8(s ^ vec2<u32>(0x80808080u), d, 0.0);
    }
    let j = e >> 5u;
    let five = p.kind == KIND_Q5_K;
    let codes = w + (select(16u, 48u, five) + 32u * (e >> 6u) + l0) / 4u;
    let nib = vec2<u32>(0x0F0F0F0Fu);
    var q = (vec2<u32>(words[codes], words[codes + 1u]) >> vec2<u32>(4u * (j & 1u))) & nib;
    if (five) {
        let h = vec2<u32>(words[w + 4u + l0 / 4u], words[w + 5u + l0 / 4u]);
        q |= ((h >> vec2<u32>(j)) & vec2<u32>(0x01010101u)) << vec2<u32>(4u);
    }
    let dm = unpack2x16float(words[w]);
    let sm = kq_scale_min(w, j);
    return KQ8(q, dm.x * sm.x, dm.y * sm.y);
}

@compute @workgroup_size(256)
fn matmul_ki(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MI_R;
    let t0 = wid.y * MI_T;
    // Staging roles: weight row and token lr, eight values q (of 4 in a step).
    let lr = lid.x / 4u;
    let q = lid.x % 4u;
    // Computing role: rows cr + 16i, tokens ct + 16j (i, j < 4).
    let cr = lid.x % 16u;
    let ct = lid.x / 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.cols; k0 += 32u) {
        var wq = KQ8(vec2<u32>(0u), 0.0, 0.0);
        if (r0 + lr < p.rows) {
            wq = kq_q8(r0 + lr, k0 + 8u * q);
        }
        mi_w[q * 64u + lr] = wq.w;
        if (q == 0u) {
            mk_wd[lr].x = wq.d;
            mk_wm[lr] = wq.m;
        } else if (q == 2u) {
            mk_wd[lr].y = wq.d;
        }
        let xsum = mi_stage_xq(t0 + lr, n, k0, q, lr);
        if (q == 0u) {
            mk_xs[lr] = mi_xd[lr] * f32(xsum);
        }
        workgroupBarrier();
        // Each half step's four tokens' words against each row's: sixteen sums a thread a half.
        var lo = array<vec4<i32>, 4>();
        var hi = array<vec4<i32>, 4>();
        for (var k = 0u; k < 4u; k++) {
            let o = k * 64u;
            let x0 = mi_x[o + ct];
            let x1 = mi_x[o + ct + 16u];
            let x2 = mi_x[o + ct + 32u];
            let x3 = mi_x[o + ct + 48u];
            for (var i = 0u; i < 4u; i++) {
                let s = mi_row(mi_w[o + cr + 16u * i], x0, x1, x2, x3);
                if (k < 2u) {
                    lo[i] += s;
                } else {
                    hi[i] += s;
                }
            }
        }
        var xd = vec4<f32>(0.0);
        var xs = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let t = ct + 16u * j;
            xd[j] = mi_xd[t];
            xs[j] = mk_xs[t];
        }
        let wd0 = mk_wd[cr];
        let wd1 = mk_wd[cr + 16u];
        let wd2 = mk_wd[cr + 32u];
        let wd3 = mk_wd[cr + 48u];
        acc0 += (vec4<f32>(lo[0]) * wd0.x + vec4<f32>(hi[0]) * wd0.y) * xd - mk_wm[cr] * xs;
        acc1 += (vec4<f32>(lo[1]) * wd1.x + vec4<f32>(hi[1]) * wd1.y) * xd - mk_wm[cr + 16u] * xs;
        acc2 += (vec4<f32>(lo[2]) * wd2.x + vec4<f32>(hi[2]) * wd2.y) * xd - mk_wm[cr + 32u] * xs;
        acc3 += (vec4<f32>(lo[3]) * wd3.x + vec4<f32>(hi[3]) * wd3.y) * xd - mk_wm[cr + 48u] * xs;
        workgroupBarrier();
    }
    let acc = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_out(acc[i][j], r0 + cr + 16u * i, t0 + ct + 16u * j, n);
        }
    }
}
