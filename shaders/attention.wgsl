// Attention over the KV cache (row formats in kv.wgsl). Prepended with step.wgsl and kvformat.wgsl.
//
// Bindings (group 0): 0 params, 1 q (read, n_heads * head_size per row), 2 kcache (read), 3 vcache
//   (read), 4 att (read_write scratch, n_heads * cap per row), 5 out (read_write, n_heads * head_size per
//   row), 6 steps (read array<Step>).
// Dispatch: (n_heads, rows) workgroups of 256 threads, one per query head and row (head_size a multiple
// of 4, at most 256); head h reads KV head h / (n_heads / n_kv_heads). Row r attends what steps[r]
// says, so a batched prompt is causal: every row of the pass has been stored before any row attends.
// Softmax subtracts the maximum score first; the weighted sum is divided by the total at the end.
// Scores are soft-capped where the model caps them (`capped`, kvformat.wgsl; Gemma 2).
// Prompt passes over f16 caches without a window or soft-capping take attention_tile.wgsl's kernel
// instead (tiles of rows sharing each key and value read).
//
// Decode (one row) splits the context instead (flash-decoding): attention_split runs one workgroup
// per head and SPLIT (64) positions, writing its maximum score m, its sum of exp(score - m) and its
// unnormalised weighted values to `part` (7, read_write, per head and split: m, l, then head_size
// values, at (h * pad0 + split) * (head_size + 2)); attention_combine (one workgroup per head)
// rescales the splits to the global maximum and divides once (64 splits a chunk, a running maximum
// across chunks). With one workgroup per head, depth 1024 cost a 7B token
// 10.8 ms on an H200: each thread walked hundreds of positions one dependent load at a time.
// Where one split holds the whole context (n_att <= SPLIT), attention_split divides and writes the
// head's output itself (binding 5) and the host dispatches no combine: a dispatch fewer a layer.
// Dispatch: attention_split (n_heads, ceil(n_att / SPLIT)), attention_combine (n_heads, 1).

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: AttnParams;
@group(0) @binding(1) var<storage, read> q: array<act>;
@group(0) @binding(2) var<storage, read> kcache: array<u32>;
@group(0) @binding(3) var<storage, read> vcache: array<u32>;
@group(0) @binding(4) var<storage, read_write> att: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<act>;
@group(0) @binding(6) var<storage, read> steps: array<Step>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;

// The row (query token) this workgroup serves.
var<private> st: Step;

var<workgroup> red: array<f32, 256>;

// Dimension d's sum over the `parts` slices of positions that threads d, d + hs, .. left in red.
fn red_sum(d: u32, hs: u32, parts: u32) -> f32 {
    var t = 0.0;
    for (var k = 0u; k < parts; k++) {
        t += red[k * hs + d];
    }
    return t;
}

// Element i of the key at position t (kivi4 keys, k_kind 5): a sink row, a complete group of the ring,
// or the f16 residual of the group being filled.
fn kivi_key_at(t: u32, i: u32) -> f32 {
    let n = p.kv_dim;
    if (t < p.sinks) {
        return unpack2x16float(kcache[t * (n / 2u) + i / 2u])[i & 1u];
    }
    let q = t - p.sinks;
    let g = q / p.group;
    let j = q % p.group;
    // Groups complete so far: those whose last position is at most the current one.
    let done = (st.pos + 1u - p.sinks) / p.group;
    if (g < done) {
        let base = kivi_ring_base(n) + (g % p.ring) * kivi_group_stride(n) + i * (p.group / 8u + 1u);
        let code = f32((kcache[base + j / 8u] >> (4u * (j % 8u))) & 15u);
        let dm = unpack2x16float(kcache[base + p.group / 8u]);
        return code * dm.x + dm.y;
    }
    return unpack2x16float(kcache[kivi_residual_base(n) + j * (n / 2u) + i / 2u])[i & 1u];
}

// Element i of the key (value) row in `slot`, decoded from its kind.
fn key_at(slot: u32, i: u32) -> f32 {
    let k = p.k_kind;
    let b = slot * row_stride(k, p.kv_dim);
    return decode(k, kcache[b + code_index(k, i)], kcache[b + scale_index(k, p.kv_dim, i)],
        kcache[b + min_index(k, p.kv_dim, i)], i);
}

fn value_at(slot: u32, i: u32) -> f32 {
    let k = p.v_kind;
    let b = slot * row_stride(k, p.kv_dim);
    return decode(k, vcache[b + code_index(k, i)], vcache[b + scale_index(k, p.kv_dim, i)],
        vcache[b + min_index(k, p.kv_dim, i)], i);
}
// The staged query's values d..d+4.
fn q4(d: u32) -> vec4<f32> {
    return vec4<f32>(qs[d], qs[d + 1u], qs[d + 2u], qs[d + 3u]);
}

// The query-key dot of attended position i (the query staged in qs), before scaling. f32 and f16
// rows (head_size a multiple of 8) load eight values a step, all loads before their arithmetic: one
// load per value in a loop made each thread wait out one memory latency after another.
fn score(i: u32, kvh: u32, hs: u32) -> f32 {
    let t = attended(st, i);
    let slot = slot_of(st, t);
    var s = 0.0;
    if (p.k_kind == KIND_KIVI_KEYS) {
        for (var d = 0u; d < hs; d++) {
            s += qs[d] * kivi_key_at(t, kvh + d);
        }
    } else if (p.k_kind == KIND_F32 && hs % 8u == 0u) {
        let ko = slot * p.kv_dim + kvh;
        for (var d = 0u; d < hs; d += 8u) {
            let a = vec4<f32>(bitcast<f32>(kcache[ko + d]), bitcast<f32>(kcache[ko + d + 1u]),
                bitcast<f32>(kcache[ko + d + 2u]), bitcast<f32>(kcache[ko + d + 3u]));
            let b = vec4<f32>(bitcast<f32>(kcache[ko + d + 4u]), bitcast<f32>(kcache[ko + d + 5u]),
                bitcast<f32>(kcache[ko + d + 6u]), bitcast<f32>(kcache[ko + d + 7u]));
            s += dot(a, q4(d)) + dot(b, q4(d + 4u));
        }
    } else if (p.k_kind == KIND_F16 && hs % 8u == 0u) {
        let ko = (slot * p.kv_dim + kvh) / 2u;
        for (var d = 0u; d < hs; d += 8u) {
            let o = ko + d / 2u;
            let w0 = kcache[o]; let w1 = kcache[o + 1u]; let w2 = kcache[o + 2u]; let w3 = kcache[o + 3u];
            let a = vec4<f32>(unpack2x16float(w0), unpack2x16float(w1));
            let b = vec4<f32>(unpack2x16float(w2), unpack2x16float(w3));
            s += dot(a, q4(d)) + dot(b, q4(d + 4u));
        }
    } else {
        for (var d = 0u; d < hs; d++) {
            s += qs[d] * key_at(slot, kvh + d);
        }
    }
    return s;
}

// Word index and half of value element e of attended position j, for f32 (half 2: the whole word)
// and f16 rows.
fn value_word(j: u32, e: u32) -> u32 {
    let at = slot_of(st, attended(st, j)) * p.kv_dim + e;
    return select(at / 2u, at, p.v_kind == KIND_F32);
}

fn value_in(w: u32, e: u32) -> f32 {
    if (p.v_kind == KIND_F32) {
        return bitcast<f32>(w);
    }
    return unpack2x16float(w)[e & 1u];
}

// Sum over positions j = j0, j0 + step, .. < j1 of att[ao + j] * value element e. f32 and f16 rows
// go four positions per step of the loop, their loads issued before any arithmetic; other kinds
// decode one at a time. weighted_split is the same with the split's weights in `ws` (from i0); the
// two are apart so that each kernel binds only the scratch it uses.
fn weighted(j0: u32, j1: u32, step: u32, e: u32, ao: u32) -> f32 {
    var acc = 0.0;
    var j = j0;
    if (p.v_kind == KIND_F32 || p.v_kind == KIND_F16) {
        for (; j + 3u * step < j1; j += 4u * step) {
            let w0 = vcache[value_word(j, e)];
            let w1 = vcache[value_word(j + step, e)];
            let w2 = vcache[value_word(j + 2u * step, e)];
            let w3 = vcache[value_word(j + 3u * step, e)];
            acc += (att[ao + j] * value_in(w0, e) + att[ao + j + step] * value_in(w1, e))
                + (att[ao + j + 2u * step] * value_in(w2, e) + att[ao + j + 3u * step] * value_in(w3, e));
        }
    }
    for (; j < j1; j += step) {
        acc += att[ao + j] * value_at(slot_of(st, attended(st, j)), e);
    }
    return acc;
}

// The same as `weighted` over a split's positions from i0, the weight of position j being
// exp(ws[j - i0] - split_max) (ws holds the split's scaled scores).
fn weighted_split(j0: u32, j1: u32, step: u32, e: u32, i0: u32) -> f32 {
    var acc = 0.0;
    var j = j0;
    if (p.v_kind == KIND_F32 || p.v_kind == KIND_F16) {
        for (; j + 3u * step < j1; j += 4u * step) {
            let w0 = vcache[value_word(j, e)];
            let w1 = vcache[value_word(j + step, e)];
            let w2 = vcache[value_word(j + 2u * step, e)];
            let w3 = vcache[value_word(j + 3u * step, e)];
            let k = j - i0;
            acc += (weight(k) * value_in(w0, e) + weight(k + step) * value_in(w1, e))
                + (weight(k + 2u * step) * value_in(w2, e) + weight(k + 3u * step) * value_in(w3, e));
        }
    }
    for (; j < j1; j += step) {
        acc += weight(j - i0) * value_at(slot_of(st, attended(st, j)), e);
    }
    return acc;
}

var<workgroup> qs: array<f32, 256>;

@compute @workgroup_size(256)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    st = steps[wid.y];
    let hs = p.head_size;
    let kvh = (h / (p.n_heads / p.n_kv_heads)) * hs;
    let qo = (wid.y * p.n_heads + h) * hs;
    let ao = (wid.y * p.n_heads + h) * p.cap;
    let n = st.n_att;
    let denom = sqrt(f32(hs));
    // The head's query, staged once (head_size <= 256).
    if (lid.x < hs) {
        qs[lid.x] = f32(q[qo + lid.x]);
    }
    workgroupBarrier();

    // Scores and their maximum, one position per thread.
    var m = -3.402823e38;
    for (var i = lid.x; i < n; i += WG) {
        var s = score(i, kvh, hs);
        s = capped(s / denom);
        att[ao + i] = s;
        m = max(m, s);
    }
    red[lid.x] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red[lid.x] = max(red[lid.x], red[lid.x + s]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();

    // exp and the sum.
    var sum = 0.0;
    for (var i = lid.x; i < n; i += WG) {
        let e = exp(att[ao + i] - mx);
        att[ao + i] = e;
        sum += e;
    }
    red[lid.x] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red[lid.x] += red[lid.x + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    storageBarrier();
    workgroupBarrier();

    // Weighted sum of values: thread (d, part) sums every parts-th position for dimension d, then the
    // parts are added up.
    let parts = WG / hs;
    let d = lid.x % hs;
    let part = lid.x / hs;
    var acc = 0.0;
    if (part < parts) {
        acc = weighted(part, n, parts, kvh + d, ao);
    }
    red[lid.x] = acc;
    workgroupBarrier();
    if (part == 0u) {
        let t = red_sum(d, hs, parts);
        out[qo + d] = act(t / total);
    }
}

const SPLIT: u32 = 64u;
// The split's scaled scores (ws, position k at ws[k / 4][k % 4], so that every thread takes their
// maximum in 16 loads) and their maximum (split_max).
var<workgroup> ws: array<vec4<f32>, 16>;
var<private> split_max: f32;
var<workgroup> red3: array<vec3<f32>, 256>;

fn weight(k: u32) -> f32 {
    return exp(ws[k / 4u][k % 4u] - split_max);
}

// f16 keys and values with head_size 64, 128 or 256 take the path below (`split_f16`): every
// thread loads eight words at a time before any arithmetic. One thread a key walked its row one
// dependent load after another and made depth 1024 cost a 7B token 0.57 ms more than depth 0 on
// an H200.
fn f16_paths(hs: u32) -> bool {
    return p.k_kind == KIND_F16 && p.v_kind == KIND_F16 && hs % 64u == 0u && 512u % hs == 0u;
}

// Eight 32-bit words, loaded before any of them is used.
struct Words8 {
    a: vec4<u32>,
    b: vec4<u32>,
}

// Four threads a key: thread q of key k takes word pairs q, q + 4, .. of the key's head (dims
// 4q..4q+3 of every 16), so a key's four threads read 32 contiguous bytes per load and the staged
// query's banks differ between them. key_words: its eight words of dims d..d+63, from word ko.
fn key_words(ko: u32, d: u32) -> Words8 {
    let o = ko + d / 2u;
    return Words8(vec4<u32>(kcache[o], kcache[o + 1u], kcache[o + 8u], kcache[o + 9u]),
        vec4<u32>(kcache[o + 16u], kcache[o + 17u], kcache[o + 24u], kcache[o + 25u]));
}

// Those words' part of the query-key dot (the query staged in qs).
fn key_dot(k: Words8, q: u32, d: u32) -> f32 {
    let dq = d + 4u * q;
    return dot(vec4<f32>(unpack2x16float(k.a.x), unpack2x16float(k.a.y)), q4(dq))
        + dot(vec4<f32>(unpack2x16float(k.a.z), unpack2x16float(k.a.w)), q4(dq + 16u))
        + dot(vec4<f32>(unpack2x16float(k.b.x), unpack2x16float(k.b.y)), q4(dq + 32u))
        + dot(vec4<f32>(unpack2x16float(k.b.z), unpack2x16float(k.b.w)), q4(dq + 48u));
}

// Value word vo of positions j, j + step, .. (eight) of a split ending at i1, clamped to its last
// position (value_sum weighs those past it 0).
fn value_words(j: u32, step: u32, i1: u32, vo: u32) -> Words8 {
    let row = p.kv_dim / 2u;
    var v: array<u32, 8>;
    for (var m = 0u; m < 8u; m++) {
        v[m] = vcache[slot_of(st, attended(st, min(j + m * step, i1 - 1u))) * row + vo];
    }
    return Words8(vec4<u32>(v[0], v[1], v[2], v[3]), vec4<u32>(v[4], v[5], v[6], v[7]));
}

// Those eight positions' weighted values (x, y) and weights (z): position j is the split's k-th;
// positions from `n` on (past the split or its context) weigh 0.
fn value_sum(v: Words8, k: u32, step: u32, n: u32) -> vec3<f32> {
    let w = array<u32, 8>(v.a.x, v.a.y, v.a.z, v.a.w, v.b.x, v.b.y, v.b.z, v.b.w);
    var acc = vec3<f32>(0.0);
    for (var m = 0u; m < 8u; m++) {
        let km = k + m * step;
        if (km < n) {
            acc += weighted_pair(km, w[m]);
        }
    }
    return acc;
}

// Word w of the head (dims 2w, 2w + 1) summed over positions j0, j0 + step, .. < j1 of the split
// (x, y), with the sum of their weights (z): eight positions' loads in flight per step.
fn weighted_f16(j0: u32, j1: u32, step: u32, w: u32, i0: u32, kvh: u32) -> vec3<f32> {
    var acc = vec3<f32>(0.0);
    for (var j = j0; j < j1; j += 8u * step) {
        acc += value_sum(value_words(j, step, j1, kvh / 2u + w), j - i0, step, j1 - i0);
    }
    return acc;
}

// attention_split's f16 path up to the split's weighted values: a thread's key words (dims up to
// 128) and its first sixteen positions' value words are loaded before the query is staged, so the
// three loads wait out one memory latency together (they went out one after another, each behind a
// barrier). Leaves the scores in ws and their maximum in split_max; returns this thread's weighted
// values (word lid % (hs / 2), positions lid / (hs / 2) + step * m).
fn split_f16(h: u32, t: u32, kvh: u32, hs: u32, i0: u32, i1: u32) -> vec3<f32> {
    let quarter = t % 4u;
    let key = slot_of(st, attended(st, min(i0 + t / 4u, i1 - 1u)));
    let ko = (key * p.kv_dim + kvh) / 2u + 2u * quarter;
    let k0 = key_words(ko, 0u);
    let k1 = key_words(ko, min(64u, hs - 64u));
    let words = hs / 2u;
    let w = t % words;
    let step = WG / words;
    let j = i0 + t / words;
    let v0 = value_words(j, step, i1, kvh / 2u + w);
    let v1 = value_words(j + 8u * step, step, i1, kvh / 2u + w);
    if (t < hs) {
        qs[t] = f32(q[h * hs + t]);
    }
    workgroupBarrier();
    var s = key_dot(k0, quarter, 0u);
    if (hs >= 128u) {
        s += key_dot(k1, quarter, 64u);
    }
    for (var d = 128u; d < hs; d += 64u) {
        s += key_dot(key_words(ko, d), quarter, d);
    }
    red[t] = select(0.0, s, i0 + t / 4u < i1);
    workgroupBarrier();
    if (t < SPLIT) {
        let b = 4u * t;
        let sum = (red[b] + red[b + 1u]) + (red[b + 2u] + red[b + 3u]);
        ws[t / 4u][t % 4u] = select(-3.402823e38, capped(sum * (1.0 / sqrt(f32(hs)))), i0 + t < i1);
    }
    workgroupBarrier();
    split_max = split_maximum();
    let n = i1 - i0;
    var acc = value_sum(v0, j - i0, step, n) + value_sum(v1, j - i0 + 8u * step, step, n);
    let rest = j + 16u * step;
    if (rest < i1) {
        acc += weighted_f16(rest, i1, step, w, i0, kvh);
    }
    return acc;
}

// The split's maximum score: every thread reads ws (no barriers for a tree over 64 values);
// positions past the split hold the lowest float.
fn split_maximum() -> f32 {
    var m = ws[0];
    for (var k = 1u; k < 16u; k++) {
        m = max(m, ws[k]);
    }
    return max(max(m.x, m.y), max(m.z, m.w));
}

// Split position k's weight times the two f16 values in `v`, and the weight.
fn weighted_pair(k: u32, v: u32) -> vec3<f32> {
    let e = weight(k);
    return vec3<f32>(e * unpack2x16float(v), e);
}

@compute @workgroup_size(256)
fn attention_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    st = steps[0];
    let hs = p.head_size;
    let kvh = (h / (p.n_heads / p.n_kv_heads)) * hs;
    let n = st.n_att;
    let i0 = wid.y * SPLIT;
    let i1 = min(n, i0 + SPLIT);
    let base = (h * p.pad0 + wid.y) * (hs + 2u);
    if (f16_paths(hs)) {
        // Weighted values, summed over the WG / words slices of the split's positions.
        let words = hs / 2u;
        let w = lid.x % words;
        let pt = lid.x / words;
        red3[lid.x] = split_f16(h, lid.x, kvh, hs, i0, i1);
        workgroupBarrier();
        if (pt == 0u) {
            var t = vec3<f32>(0.0);
            for (var k = 0u; k < WG / words; k++) {
                t += red3[k * words + w];
            }
            if (n <= SPLIT) {
                out[h * hs + 2u * w] = act(t.x / t.z);
                out[h * hs + 2u * w + 1u] = act(t.y / t.z);
            } else {
                part[base + 2u + 2u * w] = t.x;
                part[base + 3u + 2u * w] = t.y;
                if (w == 0u) {
                    part[base] = split_max;
                    part[base + 1u] = t.z;
                }
            }
        }
        // No return inside the branches above: Tint then takes the barriers below as non-uniform.
        return;
    }
    if (lid.x < hs) {
        qs[lid.x] = f32(q[h * hs + lid.x]);
    }
    workgroupBarrier();

    // Scaled scores into ws (positions past the context: the lowest float, weight 0).
    if (lid.x < SPLIT) {
        var s = -3.402823e38;
        if (i0 + lid.x < i1) {
            s = capped(score(i0 + lid.x, kvh, hs) * (1.0 / sqrt(f32(hs))));
        }
        ws[lid.x / 4u][lid.x % 4u] = s;
    }
    workgroupBarrier();
    split_max = split_maximum();

    // Weighted values, summed over `parts` slices of the split's positions.
    let parts = WG / hs;
    let d = lid.x % hs;
    let pt = lid.x / hs;
    var acc = 0.0;
    if (pt < parts) {
        acc = weighted_split(i0 + pt, i1, parts, kvh + d, i0);
    }
    red[lid.x] = acc;
    workgroupBarrier();
    if (pt == 0u) {
        let t = red_sum(d, hs, parts);
        if (n <= SPLIT) {
            var l = 0.0;
            for (var k = 0u; k < n; k++) {
                l += weight(k);
            }
            out[h * hs + d] = act(t / l);
        } else {
            part[base + 2u + d] = t;
        }
    }
    if (lid.x == 0u && n > SPLIT) {
        var l = 0.0;
        for (var k = 0u; k < i1 - i0; k++) {
            l += weight(k);
        }
        part[base] = split_max;
        part[base + 1u] = l;
    }
}

// attention_combine's splits, CHUNK at a time (one chunk up to depth 4096): split k's rescale
// exp(m_k - m) (cf) and its rescaled sum of weights (cl), and the chunk's maxima (cm).
const CHUNK: u32 = 64u;
var<workgroup> cm: array<vec4<f32>, 16>;
var<workgroup> cf: array<f32, 64>;
var<workgroup> cl: array<f32, 64>;

// The largest of the chunk's first n maxima (cm, n at least 1).
fn chunk_max(n: u32) -> f32 {
    var m = cm[0];
    for (var k = 1u; k < (n + 3u) / 4u; k++) {
        m = max(m, cm[k]);
    }
    return max(max(m.x, m.y), max(m.z, m.w));
}

// Thread (dimension d, slice pt of `parts`)'s sum over the chunk's splits pt, pt + parts, .. < n of
// split values times their rescale, four splits' loads at a time: one at a time, each thread waited
// out a memory latency per split (17 of them at depth 1024).
fn chunk_values(h: u32, c: u32, n: u32, pt: u32, parts: u32, d: u32) -> f32 {
    let hs = p.head_size;
    var o = 0.0;
    var i = pt;
    for (; i + 3u * parts < n; i += 4u * parts) {
        let b = (h * p.pad0 + c + i) * (hs + 2u) + 2u + d;
        let bs = parts * (hs + 2u);
        let v = vec4<f32>(part[b], part[b + bs], part[b + 2u * bs], part[b + 3u * bs]);
        o += dot(v, vec4<f32>(cf[i], cf[i + parts], cf[i + 2u * parts], cf[i + 3u * parts]));
    }
    for (; i < n; i += parts) {
        o += part[(h * p.pad0 + c + i) * (hs + 2u) + 2u + d] * cf[i];
    }
    return o;
}

// One workgroup per head: the splits' maxima, sums and values, rescaled to the largest maximum,
// CHUNK splits at a time (a running maximum across chunks); each chunk's maxima and sums are loaded
// by a thread a split, its values by every thread, WG / head_size slices of the splits apart.
@compute @workgroup_size(256)
fn attention_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let hs = p.head_size;
    let ns = (steps[0].n_att + SPLIT - 1u) / SPLIT;
    let t = lid.x;
    let parts = WG / hs;
    let d = t % hs;
    let pt = t / hs;
    var m = -3.402823e38;
    var l = 0.0;
    var o = 0.0;
    // The last chunk first: the order is free, and this one has a short last chunk's sums rescaled by
    // a later, larger maximum in a context of two chunks (the test's).
    for (var ci = (ns + CHUNK - 1u) / CHUNK; ci > 0u; ci--) {
        let c = (ci - 1u) * CHUNK;
        let n = min(CHUNK, ns - c);
        var mk = -3.402823e38;
        var lk = 0.0;
        if (t < n) {
            let b = (h * p.pad0 + c + t) * (hs + 2u);
            mk = part[b];
            lk = part[b + 1u];
        }
        if (t < CHUNK) {
            cm[t / 4u][t % 4u] = mk;
        }
        workgroupBarrier();
        let m_new = max(m, chunk_max(n));
        let r = exp(m - m_new);
        m = m_new;
        if (t < CHUNK) {
            let f = select(0.0, exp(mk - m), t < n);
            cf[t] = f;
            cl[t] = lk * f;
        }
        workgroupBarrier();
        o = o * r + chunk_values(h, c, n, pt, parts, d);
        var lc = 0.0;
        for (var k = 0u; k < n; k++) {
            lc += cl[k];
        }
        l = l * r + lc;
        // The chunk's cm, cf and cl are read before the next chunk writes them.
        workgroupBarrier();
    }
    red[t] = o;
    workgroupBarrier();
    if (pt == 0u && d < hs) {
        out[h * hs + d] = act(red_sum(d, hs, parts) / l);
    }
}
