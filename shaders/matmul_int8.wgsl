// matmul_q4i: the prompt pass's q4_0 product (out[t] (+)= W x[t]) in integer dot products, as
// llama.cpp's mul_mmq: the float matmul above spends an FMA and a workgroup-memory load on each
// weight and token, where `dot4I8Packed` takes four products in one instruction from one load.
// Appended to matvec.wgsl's module (its bindings, `words`, `x`, MatParams, `steps`); bindings as
// matmul's less the mins and x, plus xq (7). Taken for q4_0 rows of whole blocks of 32 under
// `MatvecKernel::TiledInt8` (`MatvecKernel::for_matmul`); `matmul_q8i`, the same body, for q8_0's
// (H100, 7B q8_0 pp512: 3395 tokens/s against the float matmul's 1732-1736,
// `benchmarks/2026-12-06-h100-q8i.md`).
//
// x comes quantized, once per product input (`quant_x8`, below; Q, K and V share one, gate and up
// one): each token's 32 values of a block as bytes (max |x| / 127 per block, rounded to nearest)
// with their scale, so that no workgroup of the hundreds reading a token's x quantizes it again.
// A workgroup of 256 threads covers MI_R (64) weight rows by MI_T (64) tokens, stepping 32 columns
// (a block) at a time. Per step, each row's block is staged as signed bytes n - 8, per code word (8
// values) the even values' bytes then the odd values' (as a word's low and high nibbles hold them),
// with the block's scale, and each token's x words (quantized in that order) with theirs. Staged
// words are laid out word-major (word q of every row, then word q + 1), so a warp's loads of
// consecutive rows hit distinct banks.
// Each thread then sums a 4-row by 4-token block: eight dot4I8Packed per row and token, exact, times
// the two scales in f32; a block's 32 staged loads feed 128 dot4I8Packed (a 4 x 2 block took 24
// loads for 64, and the 64 x 32 tile ran a 7B prompt at 1744 tokens/s on an H200, 2307 now). x's
// quantization is the only departure from the oracle's arithmetic, as in matvec4_q4i (half a step
// at most).
// Dispatch: (ceil(rows / 64), ceil(pass rows / 64)) (`Kernel::rows_per_group`), after quant_x8's.
//
// xq (binding 7), for a pass of n rows of `cols` (p.cols) values: token t's block b's eight code
// words at 8 (t * cols / 32 + b), then from word n * cols / 4 its (scale bits, sum of the 32 codes)
// at 2 (t * cols / 32 + b). Sized for the largest pass and row (`GpuDecoder::xq`).

const MI_R: u32 = 64u;
const MI_T: u32 = 64u;

// Code word q of row (token) r of the step at [q * 64 + r]: (even bytes, odd bytes).
var<workgroup> mi_w: array<vec2<u32>, 256>;
var<workgroup> mi_x: array<vec2<u32>, 256>;
var<workgroup> mi_wd: array<f32, 64>;
var<workgroup> mi_xd: array<f32, 64>;
var<workgroup> mi_max: array<f32, 256>;
// quant_x8's eight codes' sums a thread.
var<workgroup> mi_sum: array<i32, 256>;

@group(0) @binding(7) var<storage, read_write> xq: array<u32>;

// The byte lanes of (a, b), values 8q..8q+7: even values, then odd values.
fn mi_pack(a: vec4<i32>, b: vec4<i32>) -> vec2<u32> {
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

// A staging thread's eight values of x (token t, columns c..c+8; zeros past the pass's n tokens)
// and the largest |x| of the token's step, shared through mi_max: one barrier, so every thread
// calls it.
struct MiX {
    a: vec4<f32>,
    b: vec4<f32>,
    amax: f32,
}

fn mi_stage_x(t: u32, n: u32, c: u32, tid: u32) -> MiX {
    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    if (t < n) {
        let o = t * p.cols + c;
        a = vec4<f32>(f32(x[o]), f32(x[o + 1u]), f32(x[o + 2u]), f32(x[o + 3u]));
        b = vec4<f32>(f32(x[o + 4u]), f32(x[o + 5u]), f32(x[o + 6u]), f32(x[o + 7u]));
    }
    let m = max(abs(a), abs(b));
    mi_max[tid] = max(max(m.x, m.y), max(m.z, m.w));
    workgroupBarrier();
    let g = 4u * (tid / 4u);
    return MiX(a, b, max(max(mi_max[g], mi_max[g + 1u]), max(mi_max[g + 2u], mi_max[g + 3u])));
}

// quant_x8: x's rows as bytes per block of 32 into xq (layout above), for the GEMMs of one input.
// p.cols: the row length (a multiple of 32); p.kind: the weights' kind, which decides the order of a
// code word's bytes (q4_0's even values then odd, as its nibbles; the K-quants' natural order).
// Four threads a block, eight values each, as the GEMMs stage them. Dispatch: ceil(pass rows *
// cols / 32 / 64) workgroups of 256, folded as group = x + y * 65535.
@compute @workgroup_size(256)
fn quant_x8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let nb = p.cols / 32u;
    let g = (wid.x + wid.y * 65535u) * 64u + lid.x / 4u;
    let q = lid.x % 4u;
    // Past the pass's last block t >= n: x reads as zeros and nothing is stored.
    let t = g / nb;
    let sx = mi_stage_x(t, n, (g % nb) * 32u + 8u * q, lid.x);
    let inv = select(0.0, 127.0 / sx.amax, sx.amax > 0.0);
    let qa = vec4<i32>(round(sx.a * inv));
    let qb = vec4<i32>(round(sx.b * inv));
    let sq = qa + qb;
    mi_sum[lid.x] = (sq.x + sq.y) + (sq.z + sq.w);
    workgroupBarrier();
    if (t >= n) {
        return;
    }
    var w = vec2<u32>(pack4xI8Clamp(qa), pack4xI8Clamp(qb));
    if (p.kind == KIND_Q4_0) {
        w = mi_pack(qa, qb);
    }
    xq[8u * g + 2u * q] = w.x;
    xq[8u * g + 2u * q + 1u] = w.y;
    if (q == 0u) {
        let b = lid.x;
        let o = n * p.cols / 4u + 2u * g;
        xq[o] = bitcast<u32>(sx.amax / 127.0);
        xq[o + 1u] = bitcast<u32>((mi_sum[b] + mi_sum[b + 1u]) + (mi_sum[b + 2u] + mi_sum[b + 3u]));
    }
}

// A GEMM staging thread's share of the step at column k0 (token t, code words 2q and 2q + 1): its x
// words into mi_x and, for q = 0, the token's scale into mi_xd; returns the block's sum of codes
// (q = 0; zeros past the pass's n tokens).
fn mi_stage_xq(t: u32, n: u32, k0: u32, q: u32, lr: u32) -> i32 {
    var w = vec2<u32>(0u);
    var d = 0.0;
    var s = 0;
    if (t < n) {
        let g = t * (p.cols / 32u) + k0 / 32u;
        w = vec2<u32>(xq[8u * g + 2u * q], xq[8u * g + 2u * q + 1u]);
        if (q == 0u) {
            let o = n * p.cols / 4u + 2u * g;
            d = bitcast<f32>(xq[o]);
            s = bitcast<i32>(xq[o + 1u]);
        }
    }
    mi_x[q * 64u + lr] = w;
    if (q == 0u) {
        mi_xd[lr] = d;
    }
    return s;
}

@compute @workgroup_size(256)
fn matmul_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    mi_matmul(wid, lid, false);
}

// matmul_q8i: the same for q8_0 rows of whole blocks of 32, whose codes are signed bytes already, in
// natural order (quant_x8 stages x so for any kind but q4_0); a block's two words a staging thread.
@compute @workgroup_size(256)
fn matmul_q8i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    mi_matmul(wid, lid, true);
}

// The body of both; `q8` is a literal at each call, so the compiler keeps one staging path in each.
fn mi_matmul(wid: vec3<u32>, lid: vec3<u32>, q8: bool) {
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
    for (var k0 = 0u; k0 < p.cols; k0 += 32u) {
        // The row's code word, q4_0's nibbles made signed bytes n - 8 in place (as dot_q4i).
        var d = 0.0;
        var wv = vec2<u32>(0u);
        if (r0 + lr < p.rows) {
            let i = (r0 + lr) * p.cols + k0;
            if (q8) {
                wv = vec2<u32>(words[i / 4u + 2u * q], words[i / 4u + 2u * q + 1u]);
            } else {
                let w = words[i / 8u + q];
                wv = vec2<u32>(((w & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u,
                    (((w >> 4u) & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u);
            }
            d = block_scale(i / p.block);
        }
        mi_w[q * 64u + lr] = wv;
        if (q == 0u) {
            mi_wd[lr] = d;
        }
        mi_stage_xq(t0 + lr, n, k0, q, lr);
        workgroupBarrier();
        // Four tokens' words per code word, each row's against them: sixteen sums a thread.
        var s0 = vec4<i32>(0);
        var s1 = vec4<i32>(0);
        var s2 = vec4<i32>(0);
        var s3 = vec4<i32>(0);
        for (var k = 0u; k < 4u; k++) {
            let o = k * 64u;
            let x0 = mi_x[o + ct];
            let x1 = mi_x[o + ct + 16u];
            let x2 = mi_x[o + ct + 32u];
            let x3 = mi_x[o + ct + 48u];
            s0 += mi_row(mi_w[o + cr], x0, x1, x2, x3);
            s1 += mi_row(mi_w[o + cr + 16u], x0, x1, x2, x3);
            s2 += mi_row(mi_w[o + cr + 32u], x0, x1, x2, x3);
            s3 += mi_row(mi_w[o + cr + 48u], x0, x1, x2, x3);
        }
        let xd = vec4<f32>(mi_xd[ct], mi_xd[ct + 16u], mi_xd[ct + 32u], mi_xd[ct + 48u]);
        acc0 += vec4<f32>(s0) * (mi_wd[cr] * xd);
        acc1 += vec4<f32>(s1) * (mi_wd[cr + 16u] * xd);
        acc2 += vec4<f32>(s2) * (mi_wd[cr + 32u] * xd);
        acc3 += vec4<f32>(s3) * (mi_wd[cr + 48u] * xd);
        workgroupBarrier();
    }
    let acc = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_out(acc[i][j], r0 + cr + 16u * i, t0 + ct + 16u * j, n);
        }
    }
}
