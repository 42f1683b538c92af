// matmul_q4i: the prompt pass's q4_0 product (out[t] (+)= W x[t]) in integer dot products, as
// llama.cpp's mul_mmq: the float matmul above spends an FMA and a workgroup-memory load on each
// weight and token, where `dot4I8Packed` takes four products in one instruction from one load.
// Appended to matvec.wgsl's module (its bindings, `words`, `x`, MatParams, `steps`); bindings as
// matmul's less the mins. Taken for q4_0 rows of whole blocks of 32 under `MatvecKernel::TiledInt8`
// (`MatvecKernel::for_matmul`).
//
// A workgroup of 256 threads covers MI_R weight rows by MI_T tokens, stepping 32 columns (a block) at
// a time. Per step, each row's block is staged as signed bytes n - 8, per code word (8 values) the
// even values' bytes then the odd values' (as a word's low and high nibbles hold them), with the
// block's scale; each token's 32 values of x are quantized to bytes the same way (max |x| / 127 per
// block, rounded to nearest), with their scale. Each thread then sums a 4-row by 2-token block: eight
// dot4I8Packed per row and token, exact, times the two scales in f32. x's quantization is the only
// departure from the oracle's arithmetic, as in matvec4_q4i (half a step at most).
// Dispatch: (ceil(rows / 64), ceil(pass rows / 32)), as matmul.

const MI_R: u32 = 64u;
const MI_T: u32 = 32u;

// Per row (token) and code word q of the step: (even bytes, odd bytes).
var<workgroup> mi_w: array<vec2<u32>, 256>;
var<workgroup> mi_x: array<vec2<u32>, 128>;
var<workgroup> mi_wd: array<f32, 64>;
var<workgroup> mi_xd: array<f32, 32>;
var<workgroup> mi_max: array<f32, 128>;

// The byte lanes of (a, b), values 8q..8q+7: even values, then odd values.
fn mi_pack(a: vec4<i32>, b: vec4<i32>) -> vec2<u32> {
    return vec2<u32>(pack4xI8Clamp(vec4<i32>(a.x, a.z, b.x, b.z)),
        pack4xI8Clamp(vec4<i32>(a.y, a.w, b.y, b.w)));
}

@compute @workgroup_size(256)
fn matmul_q4i(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MI_R;
    let t0 = wid.y * MI_T;
    // Staging roles: weight row lr, code word q (of 4 in a block); threads below 128 also token xt.
    let lr = lid.x / 4u;
    let q = lid.x % 4u;
    let xt = lid.x / 4u;
    // Computing role: rows cr + 16i (i < 4), tokens ct + 16j (j < 2).
    let cr = lid.x % 16u;
    let ct = lid.x / 16u;
    var acc: array<f32, 8>;
    for (var k0 = 0u; k0 < p.cols; k0 += 32u) {
        // The row's code word, its nibbles made signed bytes n - 8 in place (as dot_q4i).
        var d = 0.0;
        var wv = vec2<u32>(0u);
        if (r0 + lr < p.rows) {
            let i = (r0 + lr) * p.cols + k0;
            let w = words[i / 8u + q];
            wv = vec2<u32>(((w & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u,
                (((w >> 4u) & 0x0F0F0F0Fu) + 0x78787878u) ^ 0x80808080u);
            d = block_scale(i / p.block);
        }
        mi_w[lid.x] = wv;
        if (q == 0u) {
            mi_wd[lr] = d;
        }
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if (lid.x < 128u && t0 + xt < n) {
            let o = (t0 + xt) * p.cols + k0 + 8u * q;
            a = vec4<f32>(f32(x[o]), f32(x[o + 1u]), f32(x[o + 2u]), f32(x[o + 3u]));
            b = vec4<f32>(f32(x[o + 4u]), f32(x[o + 5u]), f32(x[o + 6u]), f32(x[o + 7u]));
        }
        let m = max(abs(a), abs(b));
        if (lid.x < 128u) {
            mi_max[lid.x] = max(max(m.x, m.y), max(m.z, m.w));
        }
        workgroupBarrier();
        if (lid.x < 128u) {
            let g = 4u * xt;
            let amax = max(max(mi_max[g], mi_max[g + 1u]), max(mi_max[g + 2u], mi_max[g + 3u]));
            let inv = select(0.0, 127.0 / amax, amax > 0.0);
            mi_x[lid.x] = mi_pack(vec4<i32>(round(a * inv)), vec4<i32>(round(b * inv)));
            if (q == 0u) {
                mi_xd[xt] = amax / 127.0;
            }
        }
        workgroupBarrier();
        // The two tokens' bytes once, then each row's against both: eight dot4I8Packed a pair.
        var x0: array<vec2<u32>, 4>;
        var x1: array<vec2<u32>, 4>;
        for (var k = 0u; k < 4u; k++) {
            x0[k] = mi_x[ct * 4u + k];
            x1[k] = mi_x[(ct + 16u) * 4u + k];
        }
        let d0 = mi_xd[ct];
        let d1 = mi_xd[ct + 16u];
        for (var i = 0u; i < 4u; i++) {
            let rs = cr + 16u * i;
            var s0 = 0;
            var s1 = 0;
            for (var k = 0u; k < 4u; k++) {
                let w = mi_w[rs * 4u + k];
                s0 += dot4I8Packed(w.x, x0[k].x) + dot4I8Packed(w.y, x0[k].y);
                s1 += dot4I8Packed(w.x, x1[k].x) + dot4I8Packed(w.y, x1[k].y);
            }
            let wd = mi_wd[rs];
            acc[2u * i] += f32(s0) * wd * d0;
            acc[2u * i + 1u] += f32(s1) * wd * d1;
        }
        workgroupBarrier();
    }
    store_tile(acc, r0 + cr, t0 + ct, n);
}
