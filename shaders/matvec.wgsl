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
// matvec dispatch: one workgroup per row, rows folded into (x, y) as row = x + y * 65535.
// embed dispatch: ceil(cols / 64) workgroups.

struct MatParams {
    rows: u32,
    cols: u32,
    block: u32,
    kind: u32,
}

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> mins: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<uniform> st: Step;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

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

// Dot product of block g (of row r, block index b within the row) with x.
fn block_dot(g: u32, b: u32) -> f32 {
    let c0 = b * p.block;
    if (p.kind == KIND_Q8_0) {
        let per = p.block / 4u;
        var acc = 0.0;
        for (var w = 0u; w < per; w++) {
            let word = words[g * per + w];
            let c = c0 + w * 4u;
            acc += f32(i32(word << 24u) >> 24u) * x[c]
                + f32(i32(word << 16u) >> 24u) * x[c + 1u]
                + f32(i32(word << 8u) >> 24u) * x[c + 2u]
                + f32(i32(word) >> 24u) * x[c + 3u];
        }
        return acc * block_scale(g);
    }
    // 4-bit: d * sum(q * x) + m * sum(x)
    let per = p.block / 8u;
    var qx = 0.0;
    var sx = 0.0;
    for (var w = 0u; w < per; w++) {
        let word = words[g * per + w];
        let c = c0 + w * 8u;
        for (var k = 0u; k < 8u; k++) {
            let xv = x[c + k];
            qx += f32((word >> (4u * k)) & 15u) * xv;
            sx += xv;
        }
    }
    return block_scale(g) * qx + block_min(g) * sx;
}

@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wid.x + wid.y * 65535u;
    if (r >= p.rows) {
        return;
    }
    var acc = 0.0;
    if (p.kind == KIND_F32) {
        let base = r * p.cols;
        for (var c = lid.x; c < p.cols; c += WG) {
            acc += bitcast<f32>(words[base + c]) * x[c];
        }
    } else if (p.kind == KIND_F16) {
        // cols is even for every f16 matrix the engine uploads, so a row is whole words.
        let base = r * p.cols / 2u;
        for (var w = lid.x; w < p.cols / 2u; w += WG) {
            let v = unpack2x16float(words[base + w]);
            acc += v.x * x[2u * w] + v.y * x[2u * w + 1u];
        }
    } else {
        let bpr = p.cols / p.block;
        for (var b = lid.x; b < bpr; b += WG) {
            acc += block_dot(r * bpr + b, b);
        }
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            partial[lid.x] += partial[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        out[r] = partial[0];
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
