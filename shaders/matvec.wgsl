// Matrix-vector products for decode (out = W x) and the embedding gather (out = W[row]), for every weight
// kind, reading packed words and dequantizing in registers. Prepended with step.wgsl and quant.wgsl.
//
// Bindings (group 0):
//   0 params: uniform MatParams
//   1 words:  storage read array<u32>   (layout in quant.wgsl)
//   2 scales: storage read array<u32>
//   3 mins:   storage read array<u32>   (a dummy word when the kind has none)
//   4 x:      storage read array<act>   (matvec: cols values; embed: unused)
//   5 out:    storage read_write array<act>  (matvec: rows values; embed: cols values)
// `act` is f16 or f32 (act.wgsl); accumulation is always f32.
//   6 step:   uniform Step (embed reads the token id from it)
// matvec dispatch: one workgroup per 8 rows (whole words per row), matvec_row one per 64 rows,
// matvec_any one per row; folded into (x, y) as group = x + y * 65535.
// embed dispatch: ceil(cols / 64) workgroups.

struct MatParams {
    rows: u32,
    cols: u32,
    block: u32,
    kind: u32,
    // 1: out += W x (the residual add fused in); 0: out = W x.
    accumulate: u32,
    // First row of this binding within the whole matrix: a matrix larger than one storage binding is
    // uploaded as row chunks, each dispatched on its own (rows above counts this chunk's rows).
    row0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> mins: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<act>;
@group(0) @binding(5) var<storage, read_write> out: array<act>;
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

// matvec: a workgroup of 256 threads computes 8 rows, 32 lanes per row. x is staged through
// workgroup memory in tiles of TILE values, shared by the 8 rows. Within a tile each lane walks the
// row's packed words at a stride of 32 (so a row's lanes read consecutive words together) and keeps
// UNROLL independent loads in flight, which is what a memory-bound decode kernel needs.
const ROWS: u32 = 8u;
const LANES: u32 = 32u;
const TILE: u32 = 2048u;
const UNROLL: u32 = 4u;
var<workgroup> xs: array<f32, 2048>;
var<workgroup> red: array<f32, 256>;

// Dot of one packed word (block `g`) with the x values it multiplies: xa holds the first four, xb the
// next four (only q4 kinds use xb; f32 uses xa.x, f16 xa.xy).
fn dot_word(word: u32, g: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    switch p.kind {
        case KIND_F32: {
            return bitcast<f32>(word) * xa.x;
        }
        case KIND_F16: {
            let v = unpack2x16float(word);
            return v.x * xa.x + v.y * xa.y;
        }
        case KIND_Q8_0: {
            let q = vec4<f32>(
                f32(i32(word << 24u) >> 24u),
                f32(i32(word << 16u) >> 24u),
                f32(i32(word << 8u) >> 24u),
                f32(i32(word) >> 24u));
            return dot(q, xa) * block_scale(g);
        }
        default: {
            let lo = vec4<f32>(
                f32(word & 15u), f32((word >> 4u) & 15u), f32((word >> 8u) & 15u), f32((word >> 12u) & 15u));
            let hi = vec4<f32>(
                f32((word >> 16u) & 15u), f32((word >> 20u) & 15u), f32((word >> 24u) & 15u), f32(word >> 28u));
            let sx = dot(xa + xb, vec4<f32>(1.0));
            return block_scale(g) * (dot(lo, xa) + dot(hi, xb)) + block_min(g) * sx;
        }
    }
}

// The packed word holding element `gi` (row-major index of its first value) against the staged x
// values from tile offset `tc`.
fn word_dot(gi: u32, tc: u32) -> f32 {
    let n = per_word();
    var xa = vec4<f32>(xs[tc], 0.0, 0.0, 0.0);
    var xb = vec4<f32>(0.0);
    if (n >= 2u) { xa.y = xs[tc + 1u]; }
    if (n >= 4u) { xa.z = xs[tc + 2u]; xa.w = xs[tc + 3u]; }
    if (n == 8u) { xb = vec4<f32>(xs[tc + 4u], xs[tc + 5u], xs[tc + 6u], xs[tc + 7u]); }
    return dot_word(words[gi / n], gi / p.block, xa, xb);
}

// The same against x in storage, from column `c`.
fn word_dot_x(gi: u32, c: u32) -> f32 {
    let n = per_word();
    var xa = vec4<f32>(f32(x[c]), 0.0, 0.0, 0.0);
    var xb = vec4<f32>(0.0);
    if (n >= 2u) { xa.y = f32(x[c + 1u]); }
    if (n >= 4u) { xa.z = f32(x[c + 2u]); xa.w = f32(x[c + 3u]); }
    if (n == 8u) { xb = vec4<f32>(f32(x[c + 4u]), f32(x[c + 5u]), f32(x[c + 6u]), f32(x[c + 7u])); }
    return dot_word(words[gi / n], gi / p.block, xa, xb);
}

// Values per packed word for the kind.
fn per_word() -> u32 {
    switch p.kind {
        case KIND_F32: { return 1u; }
        case KIND_F16: { return 2u; }
        case KIND_Q8_0: { return 4u; }
        default: { return 8u; }
    }
}

@compute @workgroup_size(256)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lane = lid.x % LANES;
    let r = (wid.x + wid.y * 65535u) * ROWS + lid.x / LANES;
    let valid = r < p.rows;
    let vpw = per_word();
    var acc = 0.0;
    for (var t0 = 0u; t0 < p.cols; t0 += TILE) {
        let tn = min(TILE, p.cols - t0);
        workgroupBarrier();
        for (var i = lid.x; i < tn; i += 256u) {
            xs[i] = f32(x[t0 + i]);
        }
        workgroupBarrier();
        if (valid) {
            // f16 rows of odd length are rejected at upload, so every tile holds whole words.
            let base = r * p.cols + t0;
            let nw = tn / vpw;
            let step = LANES * vpw;
            var w = lane;
            for (; w + (UNROLL - 1u) * LANES < nw; w += UNROLL * LANES) {
                let c = w * vpw;
                let a0 = word_dot(base + c, c);
                let a1 = word_dot(base + c + step, c + step);
                let a2 = word_dot(base + c + 2u * step, c + 2u * step);
                let a3 = word_dot(base + c + 3u * step, c + 3u * step);
                acc += (a0 + a1) + (a2 + a3);
            }
            for (; w < nw; w += LANES) {
                acc += word_dot(base + w * vpw, w * vpw);
            }
        }
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[lid.x] += red[lid.x + s];
        }
        workgroupBarrier();
    }
    if (valid && lane == 0u) {
        if (p.accumulate != 0u) {
            out[p.row0 + r] = act(f32(out[p.row0 + r]) + red[lid.x]);
        } else {
            out[p.row0 + r] = act(red[lid.x]);
        }
    }
}

// matvec_row: one thread per row, no workgroup memory and no barriers. CPU-backed adapters (lavapipe,
// SwiftShader) run a workgroup's threads as SIMD loops and pay dearly for each barrier, so there a
// plain loop per row is many times faster; GPUs prefer the tiled kernel above. Dispatch: one
// workgroup per 64 rows, folded as for matvec.
@compute @workgroup_size(64)
fn matvec_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = (wid.x + wid.y * 65535u) * 64u + lid.x;
    if (r >= p.rows) {
        return;
    }
    let vpw = per_word();
    let nw = p.cols / vpw;
    let base = r * p.cols;
    var acc = 0.0;
    for (var w = 0u; w < nw; w++) {
        acc += word_dot_x(base + w * vpw, w * vpw);
    }
    if (p.accumulate != 0u) {
        out[p.row0 + r] = act(f32(out[p.row0 + r]) + acc);
    } else {
        out[p.row0 + r] = act(acc);
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
        acc += weight(r, c) * f32(x[c]);
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
            out[p.row0 + r] = act(f32(out[p.row0 + r]) + red64[0]);
        } else {
            out[p.row0 + r] = act(red64[0]);
        }
    }
}

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) {
        return;
    }
    out[c] = act(weight(st.token - p.row0, c));
}
