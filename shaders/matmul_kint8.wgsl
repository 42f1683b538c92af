// matmul_ki: the prompt pass's K-quant product (Q4_K, Q5_K, Q6_K; out[t] (+)= W x[t]) in integer dot
// products, as matmul_q4i does for q4_0 (same tile, roles and dispatch: 64 rows by 64 tokens, a
// thread's 4 x 4 block). Appended after matmul_int8.wgsl (mi_row) and kquant.wgsl (the super-block
// layouts, kq_words, kq_byte, kq_scale_min); binds no scales or mins (2, 3). Taken under
// `MatvecKernel::TiledInt8` (`MatvecKernel::for_matmul`).
//
// A step is 64 columns between two barriers: two Q4_K/Q5_K sub-blocks (a scale and a min each) or
// four Q6_K sub-blocks of 16 (a scale each), twice matmul_q4i's step, so that each staging thread
// has two loads of codes in flight and a prompt pays half the barriers. Each staging thread decodes
// 8 codes of its row in each half in place as bytes (a nibble, with Q5_K's fifth bit: 0..31; Q6_K's
// six bits less 32, signed), in natural order, and x the same (values 8q..8q+7 of the half as two
// words, quantized per token and half as matmul_q4i quantizes per block). The weight scales are
// per row and quarter, the mins per row and half; a min multiplies the sum of the token's quantized
// x (so that the result is the weights' exact product with the quantized x, as in
// matvec4_kint8.wgsl).

// Per row of the step: the scales of its four quarters of 16 values and the mins of its two halves
// (d_min * m, 0 for Q6_K). Codes and x are staged in matmul_int8.wgsl's arrays, x by mi_stage_x.
var<workgroup> mk_wd: array<vec4<f32>, 64>;
var<workgroup> mk_wm: array<vec2<f32>, 64>;

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

// Staging thread (lr, q)'s codes for the step at column k0: row r's 8q..8q+7 of each half, with
// their scales (a Q6_K half's second quarter from q = 2).
fn mk_stage_w(r: u32, k0: u32, lr: u32, q: u32) {
    var d = vec2<f32>(0.0);
    var m = vec2<f32>(0.0);
    for (var h = 0u; h < 2u; h++) {
        var k = KQ8(vec2<u32>(0u), 0.0, 0.0);
        if (r < p.rows) {
            k = kq_q8(r, k0 + 32u * h + 8u * q);
        }
        mi_w[256u * h + 64u * q + lr] = k.w;
        d[h] = k.d;
        m[h] = k.m;
    }
    if (q == 0u) {
        mk_wd[lr].x = d.x;
        mk_wd[lr].z = d.y;
        mk_wm[lr] = m;
    } else if (q == 2u) {
        mk_wd[lr].y = d.x;
        mk_wd[lr].w = d.y;
    }
}

// Row r's share of half h against four tokens: each quarter's sums times its scale, times x's
// scales, less the min times x's quantized sums (xs: already times x's scales).
fn mk_row(lo: vec4<i32>, hi: vec4<i32>, r: u32, h: u32, xd: vec4<f32>, xs: vec4<f32>) -> vec4<f32> {
    let d = mk_wd[r];
    return (vec4<f32>(lo) * d[2u * h] + vec4<f32>(hi) * d[2u * h + 1u]) * xd - mk_wm[r][h] * xs;
}

@compute @workgroup_size(256)
fn matmul_ki(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MI_R;
    let t0 = wid.y * MI_T;
    // Staging roles: weight row and token lr, eight values q (of 4 in a half step).
    let lr = lid.x / 4u;
    let q = lid.x % 4u;
    // Computing role: rows cr + 16i, tokens ct + 16j (i, j < 4).
    let cr = lid.x % 16u;
    let ct = lid.x / 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.cols; k0 += 64u) {
        mk_stage_w(r0 + lr, k0, lr, q);
        mi_stage_x(t0 + lr, n, k0, lr, q, lid.x, true);
        workgroupBarrier();
        for (var h = 0u; h < 2u; h++) {
            let lo = mi_sums(h, 0u, 2u, cr, ct);
            let hi = mi_sums(h, 2u, 2u, cr, ct);
            let xd = mi_xd4(h, ct);
            var xs = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j++) {
                let t = 4u * (ct + 16u * j);
                xs[j] = f32((mi_xs[t][h] + mi_xs[t + 1u][h]) + (mi_xs[t + 2u][h] + mi_xs[t + 3u][h]));
            }
            xs *= xd;
            acc0 += mk_row(lo.s0, hi.s0, cr, h, xd, xs);
            acc1 += mk_row(lo.s1, hi.s1, cr + 16u, h, xd, xs);
            acc2 += mk_row(lo.s2, hi.s2, cr + 32u, h, xd, xs);
            acc3 += mk_row(lo.s3, hi.s3, cr + 48u, h, xd, xs);
        }
        workgroupBarrier();
    }
    let acc = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_out(acc[i][j], r0 + cr + 16u * i, t0 + ct + 16u * j, n);
        }
    }
}
