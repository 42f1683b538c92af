// matmul_h: matvec.wgsl's `matmul` for f16 weights with f16 activations, multiplying in f16 where the
// adapter has shader-f16 and the decoder asks for it (`GpuOptions::half_math`). A workgroup covers
// MH_R (128) weight rows by MM_T (64) tokens; the tiles sit in workgroup memory as f16 (half the bytes
// a column), and each thread sums an 8-row by 4-token block (rows 4c..4c+3 and 64+4c..64+4c+3) over
// MH_SUB (16) columns in f16 (vec4<f16> FMAs: NVIDIA issues two lanes an instruction; three
// workgroup-memory loads feed 32 products), then adds those sums into f32 accumulators: each product
// and partial sum rounds to 11 bits, so the error grows with 16 terms, not a row's thousands
// (llama.cpp's Vulkan GEMM keeps the whole row's sum in f16). On lavapipe, stories260K's max
// |dlogit| against the oracle: 1.005e-1 summing 32 columns in f16, 6.860e-2 with 16, 5.248e-2 with
// 8, 3.969e-2 in f32 math; the f16 verdict's bound is 1.231e-1.
// Staging: a thread reads two columns of four consecutive rows (tokens), a word each (two such
// quads of weight rows, one of tokens), and stores each column's four as one vec4<f16>. Tiles are
// column-major in vec4s of four rows, column k's at [32k, 32k + 32) for weights and [16k, 16k + 16)
// for x, the vec4 index within each 16 xored with k / 2 so that a warp's stores (16 column pairs)
// and reads (16 vec4s of one column) fall in distinct banks. (H100, 7B f16 pp512 in f16 math: 1911
// tokens/s with `matmul`'s staging, 2045 with it in 128-bit loads, 2069 by quads; H200, 2057 with
// 64 x 64 tiles and 4 x 4 blocks, 2132 this way: `benchmarks/2026-12-05-h100-xq.md`.)
// Loop-local arrays have initializers: Firefox 153's naga does not zero a bare `var` each iteration
// (gfx-rs/wgpu#9489), and h then carried the previous columns' sums.
// matmul_h128: the same over 128 rows by 128 tokens, each thread an 8-row by 8-token block (rows
// as above, tokens 4ct..4ct+3 and 64+4ct..64+4ct+3): four workgroup-memory loads feed 64
// products, twice matmul_h's. It sums each whole 32-column step in f16: in 16-column runs the
// extra conversions made it slower than matmul_h (H100, ffn_up 1570 us a dispatch against 1542).
// Forced on, on lavapipe, max |dlogit| against the oracle 4.790e-3 (builtin) and 8.687e-3
// (stories260K) where matmul_h scores 3.261e-3 and 1.121e-2 (`tall_tiles_stay_near_the_oracle`);
// stories260K's verdict drift 1.005e-1 of 1.231e-1 (matmul_h 6.860e-2), as matmul_h's was in
// 32-column runs. A 4096-row matrix over 512 tokens is 128 of its workgroups, fewer than an
// H100's 132 multiprocessors, and ran 7% slower than matmul_h, so the decoder takes it only where
// its grid has `TALL_MIN_GROUPS` (`GpuDecoder::tall_tiles`). On an H200, 7B f16 pp512: ffn_gate
// and ffn_up (344 workgroups) 1404 us a dispatch against matmul_h's 1541, the pass 2144-2149 ->
// 2228-2233 tokens/s (`benchmarks/2026-12-06-h200-tall.md`). x's tile is laid out as the
// weights' (`hx2`; 16 KiB of tiles in all, WebGPU's default limit).
// Prepended with step.wgsl, quant.wgsl, matrix.wgsl (MM_T, MM_K, `store_out`) and act_f16.wgsl only.
//
// Bindings (group 0), as `matmul`'s but for the element types:
//   0 params: uniform MatParams
//   1 w2:    storage read array<u32>   (the f16 weights, row-major, two a word)
//   4 x2:    storage read array<u32>   (cols f16 values per row of the pass, two a word)
//   5 out:   storage read_write array<act>  (out_len values per row)
//   6 steps: storage read array<Step>  (the row count)
// Dispatch: (ceil(rows / 128), ceil(pass rows / 64)), matmul_h128's ceil(pass rows / 128)
// (`Kernel::rows_per_group`, `Kernel::tokens_per_group`), rows of whole 32-column steps
// (`MatvecKernel::for_matmul`), so a step's words are whole.
@group(0) @binding(1) var<storage, read> w2: array<u32>;
@group(0) @binding(4) var<storage, read> x2: array<u32>;
const MH_R: u32 = 128u;
// matmul_h128's tokens a workgroup.
const MH_TALL: u32 = 128u;
// Columns summed in f16 before the sums go to f32 (see the header).
const MH_SUB: u32 = 16u;
var<workgroup> hw: array<vec4<f16>, 1024>;
var<workgroup> hx: array<vec4<f16>, 512>;

@compute @workgroup_size(256)
fn matmul_h(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MH_R;
    let t0 = wid.y * MM_T;
    // Computing role: rows 4cr..4cr+3 and 64+4cr..64+4cr+3, tokens 4ct..4ct+3.
    let cr = lid.x % 16u;
    let ct = lid.x / 16u;
    // Staging role: row quads sq and sq + 16 (token quad sq), columns 2 sk and 2 sk + 1.
    let sq = lid.x / 16u;
    let sk = lid.x % 16u;
    var acc: array<vec4<f32>, 8>;
    for (var k0 = 0u; k0 < p.cols; k0 += MM_K) {
        var wq = array<vec2<f16>, 8>();
        var xq = array<vec2<f16>, 4>();
        for (var i = 0u; i < 4u; i++) {
            let r = r0 + 4u * sq + i;
            if (r < p.rows) {
                wq[i] = vec2<f16>(unpack2x16float(w2[(r * p.cols + k0) / 2u + sk]));
            }
            if (r + 64u < p.rows) {
                wq[4u + i] = vec2<f16>(unpack2x16float(w2[((r + 64u) * p.cols + k0) / 2u + sk]));
            }
            let t = t0 + 4u * sq + i;
            if (t < n) {
                xq[i] = vec2<f16>(unpack2x16float(x2[(t * p.cols + k0) / 2u + sk]));
            }
        }
        let a = 64u * sk + (sq ^ sk);
        hw[a] = vec4<f16>(wq[0].x, wq[1].x, wq[2].x, wq[3].x);
        hw[a + 32u] = vec4<f16>(wq[0].y, wq[1].y, wq[2].y, wq[3].y);
        hw[a + 16u] = vec4<f16>(wq[4].x, wq[5].x, wq[6].x, wq[7].x);
        hw[a + 48u] = vec4<f16>(wq[4].y, wq[5].y, wq[6].y, wq[7].y);
        let b = 32u * sk + (sq ^ sk);
        hx[b] = vec4<f16>(xq[0].x, xq[1].x, xq[2].x, xq[3].x);
        hx[b + 16u] = vec4<f16>(xq[0].y, xq[1].y, xq[2].y, xq[3].y);
        workgroupBarrier();
        for (var k1 = 0u; k1 < MM_K; k1 += MH_SUB) {
            var h = array<vec4<f16>, 8>();
            for (var k = k1; k < k1 + MH_SUB; k++) {
                let s = k / 2u;
                let w = hw[32u * k + (cr ^ s)];
                let v = hw[32u * k + 16u + (cr ^ s)];
                let xk = hx[16u * k + (ct ^ s)];
                h[0] = fma(vec4<f16>(w.x), xk, h[0]);
                h[1] = fma(vec4<f16>(w.y), xk, h[1]);
                h[2] = fma(vec4<f16>(w.z), xk, h[2]);
                h[3] = fma(vec4<f16>(w.w), xk, h[3]);
                h[4] = fma(vec4<f16>(v.x), xk, h[4]);
                h[5] = fma(vec4<f16>(v.y), xk, h[5]);
                h[6] = fma(vec4<f16>(v.z), xk, h[6]);
                h[7] = fma(vec4<f16>(v.w), xk, h[7]);
            }
            for (var i = 0u; i < 8u; i++) {
                acc[i] += vec4<f32>(h[i]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_out(acc[i][j], r0 + 4u * cr + i, t0 + 4u * ct + j, n);
            store_out(acc[4u + i][j], r0 + 64u + 4u * cr + i, t0 + 4u * ct + j, n);
        }
    }
}

var<workgroup> hx2: array<vec4<f16>, 1024>;

@compute @workgroup_size(256)
fn matmul_h128(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MH_R;
    let t0 = wid.y * MH_TALL;
    // Computing role: rows 4cr.. and 64+4cr.., tokens 4ct.. and 64+4ct.. (four each).
    let cr = lid.x % 16u;
    let ct = lid.x / 16u;
    // Staging role: quads sq and sq + 16 of rows and of tokens, columns 2 sk and 2 sk + 1.
    let sq = lid.x / 16u;
    let sk = lid.x % 16u;
    var acc: array<vec4<f32>, 16>;
    for (var k0 = 0u; k0 < p.cols; k0 += MM_K) {
        var wq = array<vec2<f16>, 8>();
        var xq = array<vec2<f16>, 8>();
        for (var i = 0u; i < 8u; i++) {
            // Rows (tokens) 4sq + i, then 64 + 4sq + i - 4.
            let o = 4u * sq + 60u * (i / 4u) + i;
            if (r0 + o < p.rows) {
                wq[i] = vec2<f16>(unpack2x16float(w2[((r0 + o) * p.cols + k0) / 2u + sk]));
            }
            if (t0 + o < n) {
                xq[i] = vec2<f16>(unpack2x16float(x2[((t0 + o) * p.cols + k0) / 2u + sk]));
            }
        }
        let a = 64u * sk + (sq ^ sk);
        hw[a] = vec4<f16>(wq[0].x, wq[1].x, wq[2].x, wq[3].x);
        hw[a + 32u] = vec4<f16>(wq[0].y, wq[1].y, wq[2].y, wq[3].y);
        hw[a + 16u] = vec4<f16>(wq[4].x, wq[5].x, wq[6].x, wq[7].x);
        hw[a + 48u] = vec4<f16>(wq[4].y, wq[5].y, wq[6].y, wq[7].y);
        hx2[a] = vec4<f16>(xq[0].x, xq[1].x, xq[2].x, xq[3].x);
        hx2[a + 32u] = vec4<f16>(xq[0].y, xq[1].y, xq[2].y, xq[3].y);
        hx2[a + 16u] = vec4<f16>(xq[4].x, xq[5].x, xq[6].x, xq[7].x);
        hx2[a + 48u] = vec4<f16>(xq[4].y, xq[5].y, xq[6].y, xq[7].y);
        workgroupBarrier();
        // The whole 32-column step in f16 (see the header).
        {
            var h = array<vec4<f16>, 16>();
            for (var k = 0u; k < MM_K; k++) {
                let s = k / 2u;
                let w = hw[32u * k + (cr ^ s)];
                let v = hw[32u * k + 16u + (cr ^ s)];
                let xa = hx2[32u * k + (ct ^ s)];
                let xb = hx2[32u * k + 16u + (ct ^ s)];
                h[0] = fma(vec4<f16>(w.x), xa, h[0]);
                h[1] = fma(vec4<f16>(w.y), xa, h[1]);
                h[2] = fma(vec4<f16>(w.z), xa, h[2]);
                h[3] = fma(vec4<f16>(w.w), xa, h[3]);
                h[4] = fma(vec4<f16>(v.x), xa, h[4]);
                h[5] = fma(vec4<f16>(v.y), xa, h[5]);
                h[6] = fma(vec4<f16>(v.z), xa, h[6]);
                h[7] = fma(vec4<f16>(v.w), xa, h[7]);
                h[8] = fma(vec4<f16>(w.x), xb, h[8]);
                h[9] = fma(vec4<f16>(w.y), xb, h[9]);
                h[10] = fma(vec4<f16>(w.z), xb, h[10]);
                h[11] = fma(vec4<f16>(w.w), xb, h[11]);
                h[12] = fma(vec4<f16>(v.x), xb, h[12]);
                h[13] = fma(vec4<f16>(v.y), xb, h[13]);
                h[14] = fma(vec4<f16>(v.z), xb, h[14]);
                h[15] = fma(vec4<f16>(v.w), xb, h[15]);
            }
            for (var i = 0u; i < 16u; i++) {
                acc[i] += vec4<f32>(h[i]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let ra = r0 + 4u * cr + i;
        for (var j = 0u; j < 4u; j++) {
            let ta = t0 + 4u * ct + j;
            store_out(acc[i][j], ra, ta, n);
            store_out(acc[4u + i][j], ra + 64u, ta, n);
            store_out(acc[8u + i][j], ra, ta + 64u, n);
            store_out(acc[12u + i][j], ra + 64u, ta + 64u, n);
        }
    }
}
