// K-quant weights (ggml's Q4_K, Q5_K, Q6_K) read as GGUF stores them: 256-element super-blocks whose
// sub-block scales are quantized inside the block, each super-block padded to whole words, a row's
// super-blocks consecutive (engine/src/kquant.rs has the element formulas). Appended to the matvec
// module: uses its parameters (p, block = 256), codes (binding 1), x (4) and out (5); binds no scales
// or mins (2, 3).
//
// Bytes of one super-block (words = bytes / 4, rounded up):
//   Q4_K (36 words): 0 f16 d, 2 f16 dmin, 4..16 six-bit scales and mins of 8 sub-blocks of 32,
//                    16..144 codes: byte 32c + l holds element 64c + l (low nibble) and 64c + 32 + l.
//   Q5_K (44 words): as Q4_K with 16..48 fifth bits (byte l, bit j: element 32j + l), codes at 48..176.
//   Q6_K (53 words): 0..128 low nibbles, 128..192 high bit pairs, 192..208 signed 8-bit scales of 16
//                    sub-blocks of 16, 208 f16 d. Element 128n + 32k + l: nibble k/2 of byte
//                    64n + 32(k%2) + l, bit pair k of byte 128 + 32n + l.
//
// matvec_k: as matvec (8 rows per 256 threads, 32 lanes a row, same dispatch); lane `part` of a
// super-block reads one word of codes and multiplies 8 (Q4_K, Q5_K) or 16 (Q6_K) values, so one
// pass of 32 lanes covers one or two super-blocks. matvec_k_row: one thread per row, as matvec_row.

fn kq_words() -> u32 {
    switch p.kind {
        case KIND_Q4_K: { return 36u; }
        case KIND_Q5_K: { return 44u; }
        default: { return 53u; }
    }
}

// Lanes (parts) per super-block.
fn kq_parts() -> u32 {
    if (p.kind == KIND_Q6_K) {
        return 16u;
    }
    return 32u;
}

fn kq_byte(w: u32, i: u32) -> u32 {
    return (words[w + (i >> 2u)] >> (8u * (i & 3u))) & 0xffu;
}

// Q4_K/Q5_K sub-block j's scale and min: 6 bits each, the last four split between bytes 12..16 and
// the spare top bits of bytes 4..12.
fn kq_scale_min(w: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(kq_byte(w, 4u + j) & 63u), f32(kq_byte(w, 8u + j) & 63u));
    }
    let lo = kq_byte(w, 8u + j);
    return vec2<f32>(
        f32((lo & 15u) | ((kq_byte(w, j) >> 6u) << 4u)),
        f32((lo >> 4u) | ((kq_byte(w, 4u + j) >> 6u) << 4u)));
}

// The value of element (r, c), for the kernels that read element by element (embed, matmul).
fn kq_weight(r: u32, c: u32) -> f32 {
    let w = (r * (p.cols >> 8u) + (c >> 8u)) * kq_words();
    let e = c & 255u;
    let l = e & 31u;
    if (p.kind == KIND_Q6_K) {
        let n = e >> 7u;
        let k = (e >> 5u) & 3u;
        let lo = (kq_byte(w, 64u * n + 32u * (k & 1u) + l) >> (4u * (k >> 1u))) & 15u;
        let hi = (kq_byte(w, 128u + 32u * n + l) >> (2u * k)) & 3u;
        let sc = f32(i32(kq_byte(w, 192u + (e >> 4u)) << 24u) >> 24u);
        return unpack2x16float(words[w + 52u]).x * sc * (f32(lo | (hi << 4u)) - 32.0);
    }
    let j = e >> 5u;
    let codes = select(16u, 48u, p.kind == KIND_Q5_K);
    var q = (kq_byte(w, codes + 32u * (e >> 6u) + l) >> (4u * (j & 1u))) & 15u;
    if (p.kind == KIND_Q5_K) {
        q += ((kq_byte(w, 16u + l) >> j) & 1u) << 4u;
    }
    let dm = unpack2x16float(words[w]);
    let sm = kq_scale_min(w, j);
    return dm.x * sm.x * f32(q) - dm.y * sm.y;
}

// Eight consecutive elements of row r from column c (a multiple of 8), for the matmul's tiles: they
// share one sub-block, so its scale is decoded once and the codes come from two words.
fn kq_load8(r: u32, c: u32) -> array<f32, 8> {
    let w = (r * (p.cols >> 8u) + (c >> 8u)) * kq_words();
    let e = c & 255u;
    let l0 = e & 31u;
    var v: array<f32, 8>;
    if (p.kind == KIND_Q6_K) {
        let n = e >> 7u;
        let k = (e >> 5u) & 3u;
        let lo = w + (64u * n + 32u * (k & 1u) + l0) / 4u;
        let hi = w + (128u + 32u * n + l0) / 4u;
        let d = unpack2x16float(words[w + 52u]).x * f32(i32(kq_byte(w, 192u + (e >> 4u)) << 24u) >> 24u);
        for (var i = 0u; i < 8u; i++) {
            let sh = 8u * (i & 3u);
            let q = ((words[lo + (i >> 2u)] >> (sh + 4u * (k >> 1u))) & 15u)
                | (((words[hi + (i >> 2u)] >> (sh + 2u * k)) & 3u) << 4u);
            v[i] = d * (f32(q) - 32.0);
        }
        return v;
    }
    let j = e >> 5u;
    let five = p.kind == KIND_Q5_K;
    let codes = w + (select(16u, 48u, five) + 32u * (e >> 6u) + l0) / 4u;
    let dm = unpack2x16float(words[w]);
    let sm = kq_scale_min(w, j);
    let d = dm.x * sm.x;
    let m = dm.y * sm.y;
    for (var i = 0u; i < 8u; i++) {
        let sh = 8u * (i & 3u);
        var q = (words[codes + (i >> 2u)] >> (sh + 4u * (j & 1u))) & 15u;
        if (five) {
            q += ((words[w + 4u + l0 / 4u + (i >> 2u)] >> (sh + j)) & 1u) << 4u;
        }
        v[i] = d * f32(q) - m;
    }
    return v;
}

fn kq_x4(c: u32) -> vec4<f32> {
    return vec4<f32>(f32(x[c]), f32(x[c + 1u]), f32(x[c + 2u]), f32(x[c + 3u]));
}

// A signed byte at bit `shift` of `v`.
fn kq_i8(v: u32, shift: u32) -> f32 {
    return f32(i32(v << (24u - shift)) >> 24u);
}

// Dot of part `part` of the super-block at word `w` with x from column `xc`.
fn kq_part_dot(w: u32, xc: u32, part: u32) -> f32 {
    let sh = vec4<u32>(0u, 8u, 16u, 24u);
    if (p.kind == KIND_Q6_K) {
        // Part 8n + k: bytes 4k..4k+4 of half n, elements 128n + 32i + 4k + (0..4) for i < 4.
        let n = part >> 3u;
        let k = part & 7u;
        let a = vec4<u32>(words[w + 16u * n + k]) >> sh;
        let b = vec4<u32>(words[w + 16u * n + 8u + k]) >> sh;
        let h = vec4<u32>(words[w + 32u + 8u * n + k]) >> sh;
        // Scales 8n + k/4 + 2i, for i < 4: two per word.
        let s01 = words[w + 48u + 2u * n] >> (8u * (k >> 2u));
        let s23 = words[w + 49u + 2u * n] >> (8u * (k >> 2u));
        let q0 = u2f4((a & vec4<u32>(15u)) | ((h & vec4<u32>(3u)) << vec4<u32>(4u)));
        let q1 = u2f4((b & vec4<u32>(15u)) | (((h >> vec4<u32>(2u)) & vec4<u32>(3u)) << vec4<u32>(4u)));
        let q2 = u2f4(((a >> vec4<u32>(4u)) & vec4<u32>(15u)) | (((h >> vec4<u32>(4u)) & vec4<u32>(3u)) << vec4<u32>(4u)));
        let q3 = u2f4(((b >> vec4<u32>(4u)) & vec4<u32>(15u)) | (((h >> vec4<u32>(6u)) & vec4<u32>(3u)) << vec4<u32>(4u)));
        let c = xc + 128u * n + 4u * k;
        let m = vec4<f32>(32.0);
        let s = kq_i8(s01, 0u) * dot(q0 - m, kq_x4(c))
            + kq_i8(s01, 16u) * dot(q1 - m, kq_x4(c + 32u))
            + kq_i8(s23, 0u) * dot(q2 - m, kq_x4(c + 64u))
            + kq_i8(s23, 16u) * dot(q3 - m, kq_x4(c + 96u));
        return unpack2x16float(words[w + 52u]).x * s;
    }
    // Part 8c + k: code bytes 32c + 4k..+4, elements 64c + 4k + (0..4) (low nibbles, sub-block 2c)
    // and 64c + 32 + 4k + (0..4) (high nibbles, sub-block 2c + 1).
    let c4 = part >> 3u;
    let k = part & 7u;
    let five = p.kind == KIND_Q5_K;
    let a = vec4<u32>(words[w + select(4u, 12u, five) + part]) >> sh;
    var lo = a & vec4<u32>(15u);
    var hi = (a >> vec4<u32>(4u)) & vec4<u32>(15u);
    if (five) {
        let h = vec4<u32>(words[w + 4u + k]) >> sh;
        lo += ((h >> vec4<u32>(2u * c4)) & vec4<u32>(1u)) << vec4<u32>(4u);
        hi += ((h >> vec4<u32>(2u * c4 + 1u)) & vec4<u32>(1u)) << vec4<u32>(4u);
    }
    let xl = kq_x4(xc + 64u * c4 + 4u * k);
    let xh = kq_x4(xc + 64u * c4 + 32u + 4u * k);
    let dm = unpack2x16float(words[w]);
    let s0 = kq_scale_min(w, 2u * c4);
    let s1 = kq_scale_min(w, 2u * c4 + 1u);
    let one = vec4<f32>(1.0);
    return dm.x * (s0.x * dot(u2f4(lo), xl) + s1.x * dot(u2f4(hi), xh))
        - dm.y * (s0.y * dot(xl, one) + s1.y * dot(xh, one));
}

@compute @workgroup_size(256)
fn matvec_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lane = lid.x % LANES;
    let r = (wid.x + wid.y * 65535u) * ROWS + lid.x / LANES;
    var acc = 0.0;
    if (r < p.rows) {
        let parts = kq_parts();
        let nsb = p.cols >> 8u;
        let w0 = r * nsb * kq_words();
        for (var sb = lane / parts; sb < nsb; sb += LANES / parts) {
            acc += kq_part_dot(w0 + sb * kq_words(), sb << 8u, lane % parts);
        }
    }
    reduce_rows(lid.x, r, acc);
}

@compute @workgroup_size(64)
fn matvec_k_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = (wid.x + wid.y * 65535u) * 64u + lid.x;
    if (r >= p.rows) {
        return;
    }
    let parts = kq_parts();
    let nsb = p.cols >> 8u;
    var acc = 0.0;
    for (var sb = 0u; sb < nsb; sb++) {
        let w = (r * nsb + sb) * kq_words();
        for (var part = 0u; part < parts; part++) {
            acc += kq_part_dot(w, sb << 8u, part);
        }
    }
    store_row(r, acc);
}
