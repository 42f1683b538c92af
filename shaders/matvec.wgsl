// Matrix products for every weight kind, reading packed words and dequantizing in registers: the
// matrix-vector products of decode (out = W x), the tiled matrix-matrix product of a batched prompt
// (out[t] = W x[t] for every row t of the pass) and the embedding gather (out[t] = W[token t]).
// Prepended with step.wgsl, quant.wgsl and matrix.wgsl (MatParams, bindings 0, 2, 3, 5, 6); kquant.wgsl
// follows (K-quant super-blocks, read through `kq_weight` here and by its own matvec kernels).
//
// Bindings (group 0):
//   0 params: uniform MatParams
//   1 words:  storage read array<u32>   (layout in quant.wgsl)
//   2 scales: storage read array<u32>
//   3 mins:   storage read array<u32>   (a dummy word when the kind has none)
//   4 x:      storage read array<act>   (matvec: cols values; matmul: cols values per row; embed: unused)
//   5 out:    storage read_write array<act>  (matvec: rows values; matmul: out_len values per row;
//             embed: cols values per row)
// `act` is f16 or f32 (act.wgsl); accumulation is always f32.
//   6 steps:  storage read array<Step> (embed reads each row's token; matmul the row count)
// matvec dispatch: one workgroup per 8 rows (whole words per row), matvec_row one per 64 rows,
// matvec_any one per row; folded into (x, y) as group = x + y * 65535.
// matmul dispatch: (ceil(rows / 64), ceil(pass rows / 64)), as matmul_q4i's in matmul_int8.wgsl.
// embed dispatch: (ceil(cols / 64), pass rows), once per chunk; a row whose token is in another chunk
// is left to that chunk's dispatch.

@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<act>;

// The value of element (r, c).
fn weight(r: u32, c: u32) -> f32 {
    let i = r * p.cols + c;
    switch p.kind {
        case KIND_F32: { return bitcast<f32>(words[i]); }
        case KIND_F16: { return half_at(words[i >> 1u], i); }
        case KIND_Q8_0: {
            let w = words[i >> 2u];
            let b = (w >> (8u * (i & 3u))) & 0xffu;
            let q = s8f4(vec4<u32>(b)).x;
            return q * block_scale(i / p.block);
        }
        case KIND_Q4_K, KIND_Q5_K, KIND_Q6_K: {
            return kq_weight(r, c);
        }
        default: {
            let q = u2f((words[i >> 3u] >> (4u * (i & 7u))) & 15u);
            let g = i / p.block;
            return q * block_scale(g) + block_min(g);
        }
    }
}

// matvec: a workgroup of 256 threads computes 8 rows, 32 lanes per row. Each lane walks the row's
// packed words at a stride of 32 (so a row's lanes read consecutive words together) and keeps UNROLL
// independent loads in flight, which is what a memory-bound decode kernel needs. x is read straight from
// storage: every workgroup reads all of it, but from cache. (Staging x through workgroup memory, as this
// kernel first did, made each workgroup copy the whole vector for its 8 rows: as many copies as weights
// over 8, plus two barriers a tile, which cost an H200 more than the weights themselves.)
const ROWS: u32 = 8u;
const LANES: u32 = 32u;
const UNROLL: u32 = 4u;
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
            let q = s8f4(vec4<u32>(word) >> vec4<u32>(0u, 8u, 16u, 24u));
            return dot(q, xa) * block_scale(g);
        }
        default: {
            let lo = u2f4((vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
            let hi = u2f4((vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
            let sx = dot(xa + xb, vec4<f32>(1.0));
            return block_scale(g) * (dot(lo, xa) + dot(hi, xb)) + block_min(g) * sx;
        }
    }
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
    var acc = 0.0;
    if (r < p.rows) {
        // f16 rows of odd length are rejected at upload, so every row holds whole words.
        let vpw = per_word();
        let base = r * p.cols;
        let nw = p.cols / vpw;
        let step = LANES * vpw;
        var w = lane;
        for (; w + (UNROLL - 1u) * LANES < nw; w += UNROLL * LANES) {
            let c = w * vpw;
            let a0 = word_dot_x(base + c, c);
            let a1 = word_dot_x(base + c + step, c + step);
            let a2 = word_dot_x(base + c + 2u * step, c + 2u * step);
            let a3 = word_dot_x(base + c + 3u * step, c + 3u * step);
            acc += (a0 + a1) + (a2 + a3);
        }
        for (; w < nw; w += LANES) {
            acc += word_dot_x(base + w * vpw, w * vpw);
        }
    }
    reduce_rows(lid.x, r, acc);
}

// Row r's result into out, added to what is there when the residual add is fused in.
fn store_row(r: u32, v: f32) {
    if (p.accumulate != 0u) {
        out[p.row0 + r] = act(f32(out[p.row0 + r]) + v);
    } else {
        out[p.row0 + r] = act(v);
    }
}

// Sums the LANES partial sums of each of a 256-thread workgroup's ROWS rows (thread t holds lane
// t % LANES of row r) and stores them. Called from uniform control flow (it has barriers).
fn reduce_rows(t: u32, r: u32, acc: f32) {
    let lane = t % LANES;
    red[t] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[t] += red[t + s];
        }
        workgroupBarrier();
    }
    if (r < p.rows && lane == 0u) {
        store_row(r, red[t]);
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
    store_row(r, acc);
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
        store_row(r, red64[0]);
    }
}

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let tok = steps[gid.y].token;
    if (c >= p.cols || tok < p.row0 || tok - p.row0 >= p.rows) {
        return;
    }
    out[gid.y * p.cols + c] = act(weight(tok - p.row0, c));
}

// matmul: out[t] (+)= W x[t] for the pass's rows t, for prompts, every weight kind but q4_0 under
// TiledInt8 (matmul_int8.wgsl). A workgroup of 256 threads computes a tile of MM_R (64) weight rows by
// MM_T (64) tokens, stepping through the columns MM_K (32) at a time: each thread dequantizes 8
// consecutive weights of one row and stages 8 values of one token's x, then sums a 4-row by 4-token
// block from the staged tiles, one vec4 of weights and one of x per column: 16 FMAs for two
// workgroup-memory loads. Each weight is read and dequantized once per 64 tokens.
// (A 64 x 32 tile with 4 x 2 blocks of scalar loads ran a 7B f16 prompt at 1074 tokens/s on an H200.)
// Tiles are column-major in vec4s of four rows (tokens): column k's at [16k, 16k + 16), the vec4 index
// xored with 2 (k / 8) so that the staging threads' scalar stores (four columns apart, eight rows
// each a warp) fall in distinct banks; a thread's reads are whole vec4s.
var<workgroup> wtile: array<vec4<f32>, 512>;
var<workgroup> xtile: array<vec4<f32>, 512>;

// Where value (column k, row or token r) of a tile lies: vec4 index, component.
fn tile_at(k: u32, r: u32) -> vec2<u32> {
    return vec2<u32>(16u * k + ((r / 4u) ^ (2u * (k / 8u))), r % 4u);
}

// Eight consecutive weights of row r from column c (c a multiple of 8). Rows of a whole number of MM_K
// columns read packed words (a quantized block is at least 32 wide, so the 8 share one scale); other
// rows (f16 fallbacks such as 172-wide ffn_down) go element by element with bounds.
fn load8(r: u32, c: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    if (p.cols % MM_K != 0u) {
        for (var j = 0u; j < 8u; j++) {
            if (c + j < p.cols) {
                v[j] = weight(r, c + j);
            }
        }
        return v;
    }
    let i = r * p.cols + c;
    switch p.kind {
        case KIND_Q4_K, KIND_Q5_K, KIND_Q6_K: {
            v = kq_load8(r, c);
        }
        case KIND_F32: {
            for (var j = 0u; j < 8u; j++) {
                v[j] = bitcast<f32>(words[i + j]);
            }
        }
        case KIND_F16: {
            for (var j = 0u; j < 4u; j++) {
                let h = unpack2x16float(words[i / 2u + j]);
                v[2u * j] = h.x;
                v[2u * j + 1u] = h.y;
            }
        }
        case KIND_Q8_0: {
            let d = block_scale(i / p.block);
            for (var j = 0u; j < 2u; j++) {
                let w = words[i / 4u + j];
                for (var b = 0u; b < 4u; b++) {
                    v[4u * j + b] = s8f4(vec4<u32>(w >> (8u * b))).x * d;
                }
            }
        }
        default: {
            let g = i / p.block;
            let d = block_scale(g);
            let m = block_min(g);
            let w = words[i / 8u];
            for (var j = 0u; j < 8u; j++) {
                v[j] = u2f((w >> (4u * j)) & 15u) * d + m;
            }
        }
    }
    return v;
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = steps[0].rows;
    let r0 = wid.x * MM_R;
    let t0 = wid.y * MM_T;
    // Staging roles: weight row and token lr, columns lc..lc+8.
    let lr = lid.x / 4u;
    let lc = (lid.x % 4u) * 8u;
    // Computing role: rows 4cr..4cr+3, tokens 4ct..4ct+3.
    let cr = lid.x % 16u;
    let ct = lid.x / 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.cols; k0 += MM_K) {
        var wv = array<f32, 8>();
        if (r0 + lr < p.rows) {
            wv = load8(r0 + lr, k0 + lc);
        }
        var xv = array<f32, 8>();
        if (t0 + lr < n) {
            let o = (t0 + lr) * p.cols + k0 + lc;
            for (var j = 0u; j < 8u; j++) {
                if (k0 + lc + j < p.cols) {
                    xv[j] = f32(x[o + j]);
                }
            }
        }
        for (var j = 0u; j < 8u; j++) {
            let at = tile_at(lc + j, lr);
            wtile[at.x][at.y] = wv[j];
            xtile[at.x][at.y] = xv[j];
        }
        workgroupBarrier();
        for (var k = 0u; k < MM_K; k++) {
            let s = 2u * (k / 8u);
            let w = wtile[16u * k + (cr ^ s)];
            let xk = xtile[16u * k + (ct ^ s)];
            acc[0] += w.x * xk;
            acc[1] += w.y * xk;
            acc[2] += w.z * xk;
            acc[3] += w.w * xk;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_out(acc[i][j], r0 + 4u * cr + i, t0 + 4u * ct + j, n);
        }
    }
}
