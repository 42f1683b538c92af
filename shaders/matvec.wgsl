// Matrix-vector products for decode (out = W x) and the embedding gather (out = W[row]), for every weight
// kind, reading packed words and dequantizing in registers. Prepended with step.wgsl and quant.wgsl.
//
// Bindings (group 0):
//   0 params: uniform MatParams
//   1 words:  storage read array<u32>   (layout in quant.wgsl)
//   2 scales: storage read array<u32>
//   3 mins:   storage read array<u32>   (a dummy word when the kind has none)
//   4 x:      storage read array<f32>   (matvec: cols values; embed: unused dummy)
//   5 out:    storage read_write array<f32>  (matvec: rows values; embed: cols values)
//   6 step:   uniform Step (embed reads the token id from it)
// matvec dispatch: one workgroup per 4 rows (cols % 32 == 0), matvec_any one per row; folded into (x, y)
// as group = x + y * 65535.
// embed dispatch: ceil(cols / 64) workgroups.

struct MatParams {
    rows: u32,
    cols: u32,
    block: u32,
    kind: u32,
    // 1: out += W x (the residual add fused in); 0: out = W x.
    accumulate: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> mins: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<uniform> st: Step;

fn block_scale(g: u32) -> f32 {
    return half_at(scales[g >> 1u], g);
}

fn block_min(g: u32) -> f32 {
    if (p.kind == KIND_Q4_1) {
        return half_at(mins[g >> 1u], g);
    }
    return -8.0 * block_scale(g);
}

// The value of element (r, c).
fn weight(r: u32, c: u32) -> f32 {
    let i = r * p.cols + c;
    switch p.kind {
        case KIND_F32: { return bitcast<f32>(words[i]); }
        case KIND_F16: { return half_at(words[i >> 1u], i); }
        case KIND_Q8_0: {
            let w = words[i >> 2u];
            let b = (w >> (8u * (i & 3u))) & 0xffu;
            let q = f32(i32(b << 24u) >> 24u);
            return q * block_scale(i / p.block);
        }
        default: {
            let q = f32((words[i >> 3u] >> (4u * (i & 7u))) & 15u);
            let g = i / p.block;
            return q * block_scale(g) + block_min(g);
        }
    }
}

// matvec (fast path, cols a multiple of 32): a workgroup of 128 threads computes ROWS rows. A row is cut
// into units of 32 columns (4 words of q4, 8 of q8_0, 16 of f16, 32 of f32, one scale for quantized
// kinds). Each thread takes units at a stride of 128, loads the unit's 32 x values once into registers
// and reuses them for all ROWS rows, so x costs a quarter of a weight read and consecutive threads read
// consecutive words of each row. Per-row sums are then reduced across the workgroup.
const ROWS: u32 = 4u;
const WGF: u32 = 128u;
var<workgroup> red: array<f32, 512>;

// Dot of unit u of row r (32 columns starting at u * 32) with xv.
fn unit_dot(r: u32, u: u32, xv: array<vec4<f32>, 8>) -> f32 {
    let gi = r * p.cols + u * 32u;
    switch p.kind {
        case KIND_F32: {
            var acc = 0.0;
            for (var j = 0u; j < 8u; j++) {
                let o = gi + 4u * j;
                acc += dot(vec4<f32>(bitcast<f32>(words[o]), bitcast<f32>(words[o + 1u]),
                    bitcast<f32>(words[o + 2u]), bitcast<f32>(words[o + 3u])), xv[j]);
            }
            return acc;
        }
        case KIND_F16: {
            var acc = 0.0;
            let w0 = gi / 2u;
            for (var j = 0u; j < 8u; j++) {
                let a = unpack2x16float(words[w0 + 2u * j]);
                let b = unpack2x16float(words[w0 + 2u * j + 1u]);
                acc += dot(vec4<f32>(a, b), xv[j]);
            }
            return acc;
        }
        case KIND_Q8_0: {
            var acc = 0.0;
            let w0 = gi / 4u;
            for (var j = 0u; j < 8u; j++) {
                let w = words[w0 + j];
                acc += dot(vec4<f32>(f32(i32(w << 24u) >> 24u), f32(i32(w << 16u) >> 24u),
                    f32(i32(w << 8u) >> 24u), f32(i32(w) >> 24u)), xv[j]);
            }
            return acc * block_scale(gi / p.block);
        }
        default: {
            let w0 = gi / 8u;
            var qx = 0.0;
            var sx = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j++) {
                let w = words[w0 + j];
                let lo = vec4<f32>(f32(w & 15u), f32((w >> 4u) & 15u), f32((w >> 8u) & 15u), f32((w >> 12u) & 15u));
                let hi = vec4<f32>(f32((w >> 16u) & 15u), f32((w >> 20u) & 15u), f32((w >> 24u) & 15u), f32(w >> 28u));
                qx += dot(lo, xv[2u * j]) + dot(hi, xv[2u * j + 1u]);
                sx += xv[2u * j] + xv[2u * j + 1u];
            }
            let g = gi / p.block;
            return block_scale(g) * qx + block_min(g) * dot(sx, vec4<f32>(1.0));
        }
    }
}

@compute @workgroup_size(128)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r0 = (wid.x + wid.y * 65535u) * ROWS;
    let units = p.cols / 32u;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var u = lid.x; u < units; u += WGF) {
        var xv: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            let c = u * 32u + 4u * j;
            xv[j] = vec4<f32>(x[c], x[c + 1u], x[c + 2u], x[c + 3u]);
        }
        for (var i = 0u; i < ROWS; i++) {
            if (r0 + i < p.rows) {
                acc[i] += unit_dot(r0 + i, u, xv);
            }
        }
    }
    for (var i = 0u; i < ROWS; i++) {
        red[i * WGF + lid.x] = acc[i];
    }
    workgroupBarrier();
    for (var s = WGF / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            for (var i = 0u; i < ROWS; i++) {
                red[i * WGF + lid.x] += red[i * WGF + lid.x + s];
            }
        }
        workgroupBarrier();
    }
    if (lid.x < ROWS && r0 + lid.x < p.rows) {
        let v = red[lid.x * WGF];
        if (p.accumulate != 0u) {
            out[r0 + lid.x] += v;
        } else {
            out[r0 + lid.x] = v;
        }
    }
}

// matvec_any: any column count (e.g. f16 fallbacks of 172-wide rows); one row per workgroup of 64
// threads, element by element.
var<workgroup> red64: array<f32, 64>;

@compute @workgroup_size(64)
fn matvec_any(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wid.x + wid.y * 65535u;
    if (r >= p.rows) {
        return;
    }
    var acc = 0.0;
    for (var c = lid.x; c < p.cols; c += 64u) {
        acc += weight(r, c) * x[c];
    }
    red64[lid.x] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red64[lid.x] += red64[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        if (p.accumulate != 0u) {
            out[r] += red64[0];
        } else {
            out[r] = red64[0];
        }
    }
}

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) {
        return;
    }
    out[c] = weight(st.token, c);
}
