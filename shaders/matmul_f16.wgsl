// matmul_h: matvec.wgsl's `matmul` for f16 weights with f16 activations, multiplying in f16 where the
// adapter has shader-f16 and the decoder asks for it (`GpuOptions::half_math`). The tiles sit in
// workgroup memory as f16 (half the bytes a column), and each thread sums its 4-row by 4-token block
// over one 32-column step in f16 (vec4<f16> FMAs: NVIDIA issues two lanes an instruction), then adds
// the step's sums into f32 accumulators: a step rounds each product and each partial sum to 11 bits,
// so the error grows with 32 terms, not a row's thousands (llama.cpp's Vulkan GEMM keeps the whole
// row's sum in f16).
// Staging: a thread reads two columns of four consecutive rows (tokens), a word each, and stores each
// column's four as one vec4<f16>: 4 stores a step where a row's 8 columns took 16 scalar ones. Tiles
// are column-major in vec4s of four rows, column k's at [16k, 16k + 16), the vec4 index xored with
// k / 2 so that a warp's stores (16 column pairs) and reads (16 vec4s of one column) fall in distinct
// banks. (H100, 7B f16 pp512 in f16 math: 1911 tokens/s with `matmul`'s staging, 2045 with it in
// 128-bit loads, 2069 this way; `benchmarks/2026-12-05-h100-xq.md`.)
// Prepended with step.wgsl, quant.wgsl, matrix.wgsl (MM_R, MM_T, MM_K, `store_out`) and act_f16.wgsl
// only.
//
// Bindings (group 0), as `matmul`'s but for the element types:
//   0 params: uniform MatParams
//   1 w2:    storage read array<u32>   (the f16 weights, row-major, two a word)
//   4 x2:    storage read array<u32>   (cols f16 values per row of the pass, two a word)
//   5 out:   storage read_write array<act>  (out_len values per row)
//   6 steps: storage read array<Step>  (the row count)
// Dispatch: (ceil(rows / 64), ceil(pass rows / 64)), rows of whole 32-column steps
// (`MatvecKernel::for_matmul`), so a step's words are whole.
@group(0) @binding(1) var<storage, read> w2: array<u32>;
@group(0) @binding(4) var<storage, read> x2: array<u32>;
var<workgroup> hw: array<vec4<f16>, 512>;
var<workgroup> hx: array<vec4<f16>, 512>;

@compute @workgroup_size(256)
fn matmul_h(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MM_R;
    let t0 = wid.y * MM_T;
    // Computing role: rows 4cr..4cr+3, tokens 4ct..4ct+3.
    let cr = lid.x % 16u;
    let ct = lid.x / 16u;
    // Staging role: row (token) quad sq, columns 2 sk and 2 sk + 1.
    let sq = lid.x / 16u;
    let sk = lid.x % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.cols; k0 += MM_K) {
        var wq: array<vec2<f16>, 4>;
        var xq: array<vec2<f16>, 4>;
        for (var i = 0u; i < 4u; i++) {
            let r = r0 + 4u * sq + i;
            if (r < p.rows) {
                wq[i] = vec2<f16>(unpack2x16float(w2[(r * p.cols + k0) / 2u + sk]));
            }
            let t = t0 + 4u * sq + i;
            if (t < n) {
                xq[i] = vec2<f16>(unpack2x16float(x2[(t * p.cols + k0) / 2u + sk]));
            }
        }
        let a = 32u * sk + (sq ^ sk);
        hw[a] = vec4<f16>(wq[0].x, wq[1].x, wq[2].x, wq[3].x);
        hw[a + 16u] = vec4<f16>(wq[0].y, wq[1].y, wq[2].y, wq[3].y);
        hx[a] = vec4<f16>(xq[0].x, xq[1].x, xq[2].x, xq[3].x);
        hx[a + 16u] = vec4<f16>(xq[0].y, xq[1].y, xq[2].y, xq[3].y);
        workgroupBarrier();
        var h: array<vec4<f16>, 4>;
        for (var k = 0u; k < MM_K; k++) {
            let s = k / 2u;
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
