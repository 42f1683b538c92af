// matvec4: the decode matrix-vector product (out = W x, or out += W x) reading the codes 128 bits at a
// time: one vec4<u32> is a whole q4 block of 32 (16 q8 codes, 8 f16 or 4 f32 values), and x is read as
// vec4s too. A GPU needs many bytes in flight per lane to stream a matrix; with 32-bit loads a lane had
// a quarter of them (benchmarks/2026-11-30-h200-batched.md).
// Prepended with step.wgsl, quant.wgsl and matrix.wgsl (MatParams, bindings 0, 2, 3, 5, 6).
//
// Bindings (group 0), as matvec.wgsl but for the element types:
//   1 words4: storage read array<vec4<u32>>  (the codes of quant.wgsl, four words per element)
//   4 x4:     storage read array<vec4<act>>  (cols / 4 vectors)
// Taken only where a row is whole vec4s and a vec4 never straddles two blocks: cols % 32 == 0, and
// for q4 kinds block % 32 == 0, for q8_0 block % 16 == 0 (MatvecKernel::for_matrix).
// Each lane serves 4 rows and loads each x vector once for all four: with one row per lane, x was
// read once per row, as many bytes through the caches as an f16 matrix, and f16 and q4_0 decoded at the
// same speed on an H200 (7.03 and 7.05 ms/token, 7B).
// Dispatch: one workgroup of 64 threads per 8 rows (two groups of 32 lanes, 4 rows each), folded into
// (x, y) as group = x + y * 65535.

@group(0) @binding(1) var<storage, read> words4: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> x4: array<vec4<act>>;

const LANES4: u32 = 32u;
var<workgroup> red4: array<vec4<f32>, 64>;

// Values one vec4 of codes holds for the kind.
fn per_vec4() -> u32 {
    switch p.kind {
        case KIND_F32: { return 4u; }
        case KIND_F16: { return 8u; }
        case KIND_Q8_0: { return 16u; }
        default: { return 32u; }
    }
}

fn xq(i: u32) -> vec4<f32> {
    return vec4<f32>(x4[i]);
}

// Four 4-bit codes of `w` from bit `shift` on, as floats: nibbles shift, shift+4, shift+8, shift+12.
fn nib(w: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(shift, shift + 4u, shift + 8u, shift + 12u)) & vec4<u32>(15u));
}

// The four signed bytes of `w`, low byte first.
fn bytes(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

fn f16x8(w: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    return dot(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), xa)
        + dot(vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)), xb);
}

fn q8x16(w: vec4<u32>, e: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
    let s = (dot(bytes(w.x), x0) + dot(bytes(w.y), x1)) + (dot(bytes(w.z), x2) + dot(bytes(w.w), x3));
    return s * block_scale(e / p.block);
}

// A q4 block of 32 (word k holds elements 8k..8k+7, low nibble first) against x0..x7; sx is their sum.
fn q4x32(w: vec4<u32>, e: u32, xa: array<vec4<f32>, 8>, sx: f32) -> f32 {
    let q = (dot(nib(w.x, 0u), xa[0]) + dot(nib(w.x, 16u), xa[1]))
        + (dot(nib(w.y, 0u), xa[2]) + dot(nib(w.y, 16u), xa[3]))
        + (dot(nib(w.z, 0u), xa[4]) + dot(nib(w.z, 16u), xa[5]))
        + (dot(nib(w.w, 0u), xa[6]) + dot(nib(w.w, 16u), xa[7]));
    let g = e / p.block;
    return block_scale(g) * q + block_min(g) * sx;
}

@compute @workgroup_size(64)
fn matvec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lane = lid.x % LANES4;
    let r0 = ((wid.x + wid.y * 65535u) * 2u + lid.x / LANES4) * 4u;
    var acc = vec4<f32>(0.0);
    if (r0 < p.rows) {
        let vpv = per_vec4();
        let nv = p.cols / vpv;
        // Rows past the end repeat the last one; their sums are never written.
        let last = p.rows - 1u;
        let ra = vec4<u32>(min(vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u), vec4<u32>(last)));
        let b = ra * nv;
        let e = ra * p.cols;
        switch p.kind {
            case KIND_F32: {
                for (var v = lane; v < nv; v += LANES4) {
                    let xa = xq(v);
                    acc += vec4<f32>(
                        dot(bitcast<vec4<f32>>(words4[b.x + v]), xa),
                        dot(bitcast<vec4<f32>>(words4[b.y + v]), xa),
                        dot(bitcast<vec4<f32>>(words4[b.z + v]), xa),
                        dot(bitcast<vec4<f32>>(words4[b.w + v]), xa));
                }
            }
            case KIND_F16: {
                for (var v = lane; v < nv; v += LANES4) {
                    let xa = xq(2u * v);
                    let xb = xq(2u * v + 1u);
                    acc += vec4<f32>(
                        f16x8(words4[b.x + v], xa, xb),
                        f16x8(words4[b.y + v], xa, xb),
                        f16x8(words4[b.z + v], xa, xb),
                        f16x8(words4[b.w + v], xa, xb));
                }
            }
            case KIND_Q8_0: {
                for (var v = lane; v < nv; v += LANES4) {
                    let x0 = xq(4u * v); let x1 = xq(4u * v + 1u);
                    let x2 = xq(4u * v + 2u); let x3 = xq(4u * v + 3u);
                    let c = 16u * v;
                    acc += vec4<f32>(
                        q8x16(words4[b.x + v], e.x + c, x0, x1, x2, x3),
                        q8x16(words4[b.y + v], e.y + c, x0, x1, x2, x3),
                        q8x16(words4[b.z + v], e.z + c, x0, x1, x2, x3),
                        q8x16(words4[b.w + v], e.w + c, x0, x1, x2, x3));
                }
            }
            default: {
                for (var v = lane; v < nv; v += LANES4) {
                    let i = 8u * v;
                    let xa = array<vec4<f32>, 8>(xq(i), xq(i + 1u), xq(i + 2u), xq(i + 3u),
                        xq(i + 4u), xq(i + 5u), xq(i + 6u), xq(i + 7u));
                    let s4 = ((xa[0] + xa[1]) + (xa[2] + xa[3])) + ((xa[4] + xa[5]) + (xa[6] + xa[7]));
                    let sx = dot(s4, vec4<f32>(1.0));
                    let c = 32u * v;
                    acc += vec4<f32>(
                        q4x32(words4[b.x + v], e.x + c, xa, sx),
                        q4x32(words4[b.y + v], e.y + c, xa, sx),
                        q4x32(words4[b.z + v], e.z + c, xa, sx),
                        q4x32(words4[b.w + v], e.w + c, xa, sx));
                }
            }
        }
    }
    red4[lid.x] = acc;
    workgroupBarrier();
    for (var s = LANES4 / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red4[lid.x] += red4[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lane < 4u && r0 + lane < p.rows) {
        let r = r0 + lane;
        let sum = red4[lid.x - lane][lane];
        if (p.accumulate != 0u) {
            out[p.row0 + r] = act(f32(out[p.row0 + r]) + sum);
        } else {
            out[p.row0 + r] = act(sum);
        }
    }
}
