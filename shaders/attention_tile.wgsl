// The prompt pass's attention in tiles of rows (flash attention), appended to attention.wgsl (its
// bindings, `act`, `Step`): taken where keys and values are f16, heads are 64 or 128 wide and no
// window limits the context, so row r attends positions 0..n_att-1 at their own slots.
// The per-row kernel (attention.wgsl) read the whole context once per row: 48.5 ms of a 7B
// 512-token pass on an H200. A tile of 16 rows reading keys and values a thread at a time from the
// caches (`attention_tile`, removed) took 14.5 ms on an H100, where llama.cpp's staged kernel took 5.3;
// staging them, 8.2 ms (`benchmarks/2026-12-06-h100-staged.md`).
//
// attention_staged: one workgroup of 128 threads per head and SQ consecutive rows, walking the
// context SK positions at a time with a running maximum and sum per row, so the rows share every
// key and value read. Each chunk's keys, then its values, are staged in workgroup memory by 128-bit
// loads of the whole workgroup (kcache4, vcache4: bindings 8 and 9, the caches seen as
// vec4<u32>), both issued before any arithmetic.
// Per chunk: thread (key j, rows 2w and 2w + 1, w = lid / 32) scores its key against two staged
// query rows (pre-scaled) into sg_s; then thread (row i, lane) takes the chunk's maximum for its row,
// rescales its accumulators, and adds exp(score - max) times values 8 lane .. 8 lane + 7 of the head
// (4 lane .. 4 lane + 3 for heads of 64).
// Workgroup memory: 8 x 128 f32 queries, 32 staged keys or values of 17 vec4 (one of padding, so
// the keys a quarter-warp reads start in different banks), 8 x 32 scores: 13.5 KiB, within WebGPU's
// 16 KiB. Dispatch: (n_heads, ceil(rows / SQ)).
const SQ: u32 = 8u;
const SK: u32 = 32u;
const KS: u32 = 17u;
@group(0) @binding(8) var<storage, read> kcache4: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> vcache4: array<vec4<u32>>;
var<workgroup> sg_q: array<vec4<f32>, 256>;
var<workgroup> sg_kv: array<vec4<u32>, 544>;
var<workgroup> sg_s: array<f32, 256>;

// This thread's share of a chunk's keys or values (vec4 words e = lid, lid + 128, .. of SK rows of
// w4), zeros past the context's span so that no unwritten cache word reaches the sums.
fn sg_load(c0: u32, span: u32, w4: u32, base: u32, lid: u32, values: bool) -> array<vec4<u32>, 4> {
    var w = array<vec4<u32>, 4>();
    for (var i = 0u; i < 4u; i++) {
        let e = lid + 128u * i;
        let t = c0 + e / w4;
        if (e < SK * w4 && t < span) {
            let o = (t * p.kv_dim) / 8u + base + e % w4;
            if (values) {
                w[i] = vcache4[o];
            } else {
                w[i] = kcache4[o];
            }
        }
    }
    return w;
}

fn sg_stage(w: array<vec4<u32>, 4>, w4: u32, lid: u32) {
    for (var i = 0u; i < 4u; i++) {
        let e = lid + 128u * i;
        if (e < SK * w4) {
            sg_kv[(e / w4) * KS + e % w4] = w[i];
        }
    }
}

// Staged query rows ra and ra + 1 (row r's at r * hs / 4) dotted with staged key j.
fn sg_scores(j: u32, ra: u32, hs: u32) -> vec2<f32> {
    var acc = vec2<f32>(0.0);
    let qa = ra * hs / 4u;
    let qb = qa + hs / 4u;
    for (var d = 0u; d < hs / 8u; d++) {
        let kw = sg_kv[j * KS + d];
        let k0 = vec4<f32>(unpack2x16float(kw.x), unpack2x16float(kw.y));
        let k1 = vec4<f32>(unpack2x16float(kw.z), unpack2x16float(kw.w));
        acc.x += dot(k0, sg_q[qa + 2u * d]) + dot(k1, sg_q[qa + 2u * d + 1u]);
        acc.y += dot(k0, sg_q[qb + 2u * d]) + dot(k1, sg_q[qb + 2u * d + 1u]);
    }
    return acc;
}

// Staged value t's words for this lane: four (heads of 128) or two, the rest zero.
fn sg_value(t: u32, lane: u32, hs: u32) -> vec4<u32> {
    if (hs == 128u) {
        return sg_kv[t * KS + lane];
    }
    let v = sg_kv[t * KS + lane / 2u];
    return select(vec4<u32>(v.xy, 0u, 0u), vec4<u32>(v.zw, 0u, 0u), lane % 2u == 1u);
}

@compute @workgroup_size(128)
fn attention_staged(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let hs = p.head_size;
    let w4 = hs / 8u;
    let kvh = (h / (p.n_heads / p.n_kv_heads)) * hs;
    let rows = steps[0].rows;
    let r0 = wid.y * SQ;
    let scale = 1.0 / sqrt(f32(hs));
    // The tile's queries, scaled, four values a vec4 (row r's at r * hs / 4); rows past the pass are
    // zero (and never stored).
    for (var e = lid.x; e < SQ * hs / 4u; e += 128u) {
        let r = r0 + 4u * e / hs;
        var v = vec4<f32>(0.0);
        if (r < rows) {
            let o = (r * p.n_heads + h) * hs + (4u * e) % hs;
            v = vec4<f32>(f32(q[o]), f32(q[o + 1u]), f32(q[o + 2u]), f32(q[o + 3u])) * scale;
        }
        sg_q[e] = v;
    }
    // The most positions any row of the tile attends (the last row's, in a prompt).
    var span = 0u;
    for (var r = r0; r < min(rows, r0 + SQ); r++) {
        span = max(span, steps[r].n_att);
    }
    // Scoring role: key j of the chunk, rows ra and ra + 1.
    let j = lid.x % SK;
    let ra = 2u * (lid.x / SK);
    var n_a = vec2<u32>(0u);
    for (var i = 0u; i < 2u; i++) {
        if (r0 + ra + i < rows) {
            n_a[i] = steps[r0 + ra + i].n_att;
        }
    }
    // Summing role: row ri, words of the head from 4 lane (heads of 128) or 2 lane.
    let ri = lid.x / 16u;
    let lane = lid.x % 16u;
    let base = kvh / 8u;
    var m = -3.402823e38;
    var l = 0.0;
    var o0 = vec2<f32>(0.0);
    var o1 = vec2<f32>(0.0);
    var o2 = vec2<f32>(0.0);
    var o3 = vec2<f32>(0.0);
    for (var c0 = 0u; c0 < span; c0 += SK) {
        // Keys and values leave the caches together; the values wait in registers for the keys'
        // turn in workgroup memory to end.
        let kw = sg_load(c0, span, w4, base, lid.x, false);
        let vw = sg_load(c0, span, w4, base, lid.x, true);
        // The last chunk's values are read (and sg_q written, the first time) before keys land.
        workgroupBarrier();
        sg_stage(kw, w4, lid.x);
        workgroupBarrier();
        let t = c0 + j;
        let s = select(vec2<f32>(-3.402823e38), sg_scores(j, ra, hs), vec2<u32>(t) < n_a);
        sg_s[ra * SK + j] = s.x;
        sg_s[(ra + 1u) * SK + j] = s.y;
        workgroupBarrier();
        sg_stage(vw, w4, lid.x);
        workgroupBarrier();
        // The row's chunk maximum, its running state rescaled, then its weighted values.
        let so = ri * SK;
        var mc = m;
        for (var k = 0u; k < SK; k++) {
            mc = max(mc, sg_s[so + k]);
        }
        let alpha = exp(m - mc);
        m = mc;
        l *= alpha;
        o0 *= alpha;
        o1 *= alpha;
        o2 *= alpha;
        o3 *= alpha;
        let n = min(SK, span - c0);
        for (var k = 0u; k < n; k++) {
            let v = sg_value(k, lane, hs);
            let e = exp(sg_s[so + k] - m);
            l += e;
            o0 += e * unpack2x16float(v.x);
            o1 += e * unpack2x16float(v.y);
            o2 += e * unpack2x16float(v.z);
            o3 += e * unpack2x16float(v.w);
        }
    }
    let r = r0 + ri;
    if (r < rows) {
        // Four words a lane (eight values) for heads of 128, two for heads of 64.
        let b = (r * p.n_heads + h) * hs + (hs / 16u) * lane;
        let os = array<vec2<f32>, 4>(o0, o1, o2, o3);
        for (var k = 0u; k < hs / 32u; k++) {
            out[b + 2u * k] = act(os[k].x / l);
            out[b + 2u * k + 1u] = act(os[k].y / l);
        }
    }
}
