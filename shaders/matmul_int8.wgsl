// matmul_q4i: the prompt pass's q4_0 product (out[t] (+)= W x[t]) in integer dot products, as
// llama.cpp's mul_mmq: the float matmul above spends an FMA and a workgroup-memory load on each
// weight and token, where `dot4I8Packed` takes four products in one instruction from one load.
// Appended to matvec.wgsl's module (its bindings, `words`, `x`, MatParams, `steps`); bindings as
// matmul's less the mins. Taken for q4_0 rows of whole blocks of 32 under `MatvecKernel::TiledInt8`
// (`MatvecKernel::for_matmul`).
//
// A workgroup of 256 threads covers MI_R (64) weight rows by MI_T (64) tokens, stepping 64 columns
// (two blocks, a half each; a row's last half may lie past its end, staged as zeros) between two
// barriers, so that each staging thread has two loads in flight and a prompt pays half the
// barriers of a block's step. Per half, each row's block is staged as signed bytes n - 8, per code
// word (8 values) the even values' bytes then the odd values' (as a word's low and high nibbles
// hold them), with the block's scale; each token's 32 values of x are quantized to bytes the same
// way (max |x| / 127 per block, rounded to nearest), with their scale. Staged code words are laid
// out word-major (word q of every row, then word q + 1), so a warp's loads of consecutive rows hit
// distinct banks. Each thread then sums a 4-row by 4-token block: eight dot4I8Packed per row and
// token and half, exact, times the two scales in f32; a block's 32 staged loads feed 128
// dot4I8Packed (a 4 x 2 block took 24 loads for 64, and the 64 x 32 tile ran a 7B prompt at 1744
// tokens/s on an H200, 2307 after). x's quantization is the only departure from the oracle's
// arithmetic, as in matvec4_q4i (half a step at most).
// Dispatch: (ceil(rows / 64), ceil(pass rows / 64)) (`Kernel::matmul_tokens`).

const MI_R: u32 = 64u;
const MI_T: u32 = 64u;

// A step's staged codes and x: code word q (values 8q..8q+7 of a block of 32) of row (token) r of
// half h at [256h + 64q + r] (word-major, so a warp's loads of consecutive rows hit distinct banks).
var<workgroup> mi_w: array<vec2<u32>, 512>;
var<workgroup> mi_x: array<vec2<u32>, 512>;
// Per token, x's scale for each half; per staging thread, the sum of its eight quantized values
// and their largest |x|, per half.
var<workgroup> mi_xd: array<vec2<f32>, 64>;
var<workgroup> mi_xs: array<vec2<i32>, 256>;
var<workgroup> mi_max: array<vec2<f32>, 256>;

// The byte lanes of (a, b), values 8q..8q+7: even values, then odd values (as a q4_0 code word's
// low and high nibbles hold them), or in natural order (the K-quants' staging).
fn mi_pack(a: vec4<i32>, b: vec4<i32>, natural: bool) -> vec2<u32> {
    if (natural) {
        return vec2<u32>(pack4xI8Clamp(a), pack4xI8Clamp(b));
    }
    return vec2<u32>(pack4xI8Clamp(vec4<i32>(a.x, a.z, b.x, b.z)),
        pack4xI8Clamp(vec4<i32>(a.y, a.w, b.y, b.w)));
}

// One row's code word against four tokens': (even, odd) bytes each.
fn mi_row(w: vec2<u32>, x0: vec2<u32>, x1: vec2<u32>, x2: vec2<u32>, x3: vec2<u32>) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(w.x, x0.x) + dot4I8Packed(w.y, x0.y),
        dot4I8Packed(w.x, x1.x) + dot4I8Packed(w.y, x1.y),
        dot4I8Packed(w.x, x2.x) + dot4I8Packed(w.y, x2.y),
        dot4I8Packed(w.x, x3.x) + dot4I8Packed(w.y, x3.y));
}

// Staging thread (lr, q)'s share of x for the step at column k0: token t's values 8q..8q+7 of each
// half (zeros past the pass's n tokens and the row's end), quantized per token and half (max |x| /
// 127, rounded to nearest), into mi_x, mi_xd and mi_xs. One barrier (the maxima), so every thread
// calls it.
fn mi_stage_x(t: u32, n: u32, k0: u32, lr: u32, q: u32, tid: u32, natural: bool) {
    var v = array<vec4<f32>, 4>();
    for (var h = 0u; h < 2u; h++) {
        let c = k0 + 32u * h + 8u * q;
        if (t < n && c < p.cols) {
            let o = t * p.cols + c;
            v[2u * h] = vec4<f32>(f32(x[o]), f32(x[o + 1u]), f32(x[o + 2u]), f32(x[o + 3u]));
            v[2u * h + 1u] = vec4<f32>(f32(x[o + 4u]), f32(x[o + 5u]), f32(x[o + 6u]), f32(x[o + 7u]));
        }
    }
    let m0 = max(abs(v[0]), abs(v[1]));
    let m1 = max(abs(v[2]), abs(v[3]));
    mi_max[tid] = vec2<f32>(max(max(m0.x, m0.y), max(m0.z, m0.w)), max(max(m1.x, m1.y), max(m1.z, m1.w)));
    workgroupBarrier();
    let g = 4u * (tid / 4u);
    let amax = max(max(mi_max[g], mi_max[g + 1u]), max(mi_max[g + 2u], mi_max[g + 3u]));
    var xs = vec2<i32>(0);
    for (var h = 0u; h < 2u; h++) {
        let inv = select(0.0, 127.0 / amax[h], amax[h] > 0.0);
        let a = vec4<i32>(round(v[2u * h] * inv));
        let b = vec4<i32>(round(v[2u * h + 1u] * inv));
        mi_x[256u * h + 64u * q + lr] = mi_pack(a, b, natural);
        let s = a + b;
        xs[h] = (s.x + s.y) + (s.z + s.w);
    }
    mi_xs[tid] = xs;
    if (q == 0u) {
        mi_xd[lr] = amax / 127.0;
    }
}

// The integer sums of rows cr + 16i against tokens ct + 16j over code words k..k + nk - 1 of half h.
struct Mi4 {
    s0: vec4<i32>,
    s1: vec4<i32>,
    s2: vec4<i32>,
    s3: vec4<i32>,
}

fn mi_sums(h: u32, k: u32, nk: u32, cr: u32, ct: u32) -> Mi4 {
    var s = Mi4(vec4<i32>(0), vec4<i32>(0), vec4<i32>(0), vec4<i32>(0));
    for (var i = k; i < k + nk; i++) {
        let o = 256u * h + 64u * i;
        let x0 = mi_x[o + ct];
        let x1 = mi_x[o + ct + 16u];
        let x2 = mi_x[o + ct + 32u];
        let x3 = mi_x[o + ct + 48u];
        s.s0 += mi_row(mi_w[o + cr], x0, x1, x2, x3);
        s.s1 += mi_row(mi_w[o + cr + 16u], x0, x1, x2, x3);
        s.s2 += mi_row(mi_w[o + cr + 32u], x0, x1, x2, x3);
        s.s3 += mi_row(mi_w[o + cr + 48u], x0, x1, x2, x3);
    }
    return s;
}

// Tokens ct + 16j's x scales for half h.
fn mi_xd4(h: u32, ct: u32) -> vec4<f32> {
    return vec4<f32>(mi_xd[ct][h], mi_xd[ct + 16u][h], mi_xd[ct + 32u][h], mi_xd[ct + 48u][h]);
}

// Per row of the step, the scale of each half's block.
var<workgroup> mi_wd: array<vec2<f32>, 64>;

@compute @workgroup_size(256)
fn matmul_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MI_R;
    let t0 = wid.y * MI_T;
    // Staging roles: weight row and token lr, code word q (of 4 in a block).
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
        // Each half's code word, its nibbles made signed bytes n - 8 in place (as dot_q4i).
        var d = vec2<f32>(0.0);
        for (var h = 0u; h < 2u; h++) {
            var wv = vec2<u32>(0u);
            let c = k0 + 32u * h;
            if (r0 + lr < p.rows && c < p.cols) {
                let i = (r0 + lr) * p.cols + c;
                let w = words[i / 8u + q];
                wv = vec2<u32>(((w & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u,
                    (((w >> 4u) & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u);
                d[h] = block_scale(i / p.block);
            }
            mi_w[256u * h + 64u * q + lr] = wv;
        }
        if (q == 0u) {
            mi_wd[lr] = d;
        }
        mi_stage_x(t0 + lr, n, k0, lr, q, lid.x, false);
        workgroupBarrier();
        for (var h = 0u; h < 2u; h++) {
            let s = mi_sums(h, 0u, 4u, cr, ct);
            let xd = mi_xd4(h, ct);
            acc0 += vec4<f32>(s.s0) * (mi_wd[cr][h] * xd);
            acc1 += vec4<f32>(s.s1) * (mi_wd[cr + 16u][h] * xd);
            acc2 += vec4<f32>(s.s2) * (mi_wd[cr + 32u][h] * xd);
            acc3 += vec4<f32>(s.s3) * (mi_wd[cr + 48u][h] * xd);
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
