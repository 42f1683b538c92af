// matmul_h: matvec.wgsl's `matmul` for f16 weights with f16 activations, multiplying in f16 where the
// adapter has shader-f16 and the decoder asks for it (`GpuOptions::half_math`). The tiles sit in
// workgroup memory as f16 (half the bytes a column), and each thread sums its 4-row by 4-token block
// over one 32-column step in f16 (vec4<f16> FMAs: NVIDIA issues two lanes an instruction), then adds
// the step's sums into f32 accumulators: a step rounds each product and each partial sum to 11 bits,
// so the error grows with 32 terms, not a row's thousands (llama.cpp's Vulkan GEMM keeps the whole
// row's sum in f16). A thread stages its 8 weights and 8 values of x with one 128-bit load each
// (H100, 8B f16 pp512: 1748 -> 1915 tokens/s against 32-bit and 16-bit loads).
// Prepended with step.wgsl, quant.wgsl, matrix.wgsl (tiles, `store_out`) and act_f16.wgsl only.
//
// Bindings (group 0), as `matmul`'s but for the element types:
//   0 params: uniform MatParams
//   1 w8:    storage read array<vec4<u32>>  (the f16 weights, row-major, 8 a vec4)
//   4 x8:    storage read array<vec4<f16>>  (cols values per row of the pass, 4 a vec4)
//   5 out:   storage read_write array<act>  (out_len values per row)
//   6 steps: storage read array<Step>       (the row count)
// Dispatch: (ceil(rows / 64), ceil(pass rows / 64)), rows of whole 32-column steps
// (`MatvecKernel::for_matmul`), so every 128-bit load is whole and aligned.
@group(0) @binding(1) var<storage, read> w8: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> x8: array<vec4<f16>>;
var<workgroup> hw: array<vec4<f16>, 512>;
var<workgroup> hx: array<vec4<f16>, 512>;

@compute @workgroup_size(256)
fn matmul_h(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MM_R;
    let t0 = wid.y * MM_T;
    // Staging and computing roles as `matmul`'s; the same tile layout (`tile_at`).
    let lr = lid.x / 4u;
    let lc = (lid.x % 4u) * 8u;
    let cr = lid.x % 16u;
    let ct = lid.x / 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.cols; k0 += MM_K) {
        var wv: array<f16, 8>;
        if (r0 + lr < p.rows) {
            let q = w8[((r0 + lr) * p.cols + k0 + lc) / 8u];
            for (var j = 0u; j < 4u; j++) {
                let h = vec2<f16>(unpack2x16float(q[j]));
                wv[2u * j] = h.x;
                wv[2u * j + 1u] = h.y;
            }
        }
        var xv: array<f16, 8>;
        if (t0 + lr < n) {
            let o = ((t0 + lr) * p.cols + k0 + lc) / 4u;
            let a = x8[o];
            let b = x8[o + 1u];
            xv = array<f16, 8>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
        }
        for (var j = 0u; j < 8u; j++) {
            let at = tile_at(lc + j, lr);
            hw[at.x][at.y] = wv[j];
            hx[at.x][at.y] = xv[j];
        }
        workgroupBarrier();
        var h: array<vec4<f16>, 4>;
        for (var k = 0u; k < MM_K; k++) {
            let s = 2u * (k / 8u);
            let w = hw[16u * k + (cr ^ s)];
            let xk = hx[16u * k + (ct ^ s)];
            h[0] = fma(vec4<f16>(w.x), xk, h[0]);
            h[1] = fma(vec4<f16>(w.y), xk, h[1]);
            h[2] = fma(vec4<f16>(w.z), xk, h[2]);
            h[3] = fma(vec4<f16>(w.w), xk, h[3]);
        }
        for (var i = 0u; i < 4u; i++) {
            acc[i] += vec4<f32>(h[i]);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_out(acc[i][j], r0 + 4u * cr + i, t0 + 4u * ct + j, n);
        }
    }
}
