// KV cache store: quantizes each row's K and V into the slot of that row's position. Prepended with step.wgsl
// and kvformat.wgsl.
//
// Cache layout: per layer one buffer for keys and one for values, `cap` slots. A slot row holds kv_dim
// values in the row format of its kind, all in u32 words, `stride` words per slot:
//   f32 (0):  kv_dim words.
//   f16 (1):  kv_dim / 2 words, element 2k in the low half.
//   q8_0 (2): kv_dim / 4 code words (i8, element i at byte i % 4 of word i / 4), then the f16 scales of
//             the kv_dim / 32 blocks, two per word.
//   q4_0 (3), q4_1 (4): kv_dim / 8 code words (element i at bits 4 * (i % 8) of word i / 8), then the
//             scales two per word, then (q4_1 only) the mins two per word.
// These are the engine's planar weight layouts for one row, so the CPU and GPU caches agree. Position t
// lives in slot slot_of(step, t) (sinks at 0..sinks, the rest in a ring of `span`); keys are stored after
// RoPE at their true position. Quantization follows the CPU arithmetic (ggml's reference quantizers).
//
// Bindings (group 0): 0 params, 1 k (read, kv_dim act per row), 2 v (read, kv_dim act per row),
//   3 kcache (read_write), 4 vcache (read_write), 5 steps (read array<Step>). Dispatch:
//   (ceil(kv_dim / 64), rows) workgroups of 64; thread t of row r stores element t (f32), elements 2t
//   and 2t+1 (f16), or blocks 2t and 2t+1 (quantized kinds). Rows of one pass never share a slot and
//   complete at most one kivi4 group, at the last row (the decoder sizes batches so).

@group(0) @binding(0) var<uniform> p: AttnParams;
@group(0) @binding(1) var<storage, read> k_in: array<act>;
@group(0) @binding(2) var<storage, read> v_in: array<act>;
@group(0) @binding(3) var<storage, read_write> kcache: array<u32>;
@group(0) @binding(4) var<storage, read_write> vcache: array<u32>;
@group(0) @binding(5) var<storage, read> steps: array<Step>;

// The row being stored and where its K and V start.
var<private> st: Step;
var<private> row_off: u32;

fn src(is_k: bool, i: u32) -> f32 {
    if (is_k) {
        return f32(k_in[row_off + i]);
    }
    return f32(v_in[row_off + i]);
}

fn put(is_k: bool, i: u32, w: u32) {
    if (is_k) {
        kcache[i] = w;
    } else {
        vcache[i] = w;
    }
}

// Quantizes block b of the row into its code words; returns (scale, min).
fn quant_block(is_k: bool, kind: u32, base: u32, b: u32) -> vec2<f32> {
    let x0 = b * 32u;
    if (kind == KIND_Q8_0) {
        var amax = 0.0;
        for (var i = 0u; i < 32u; i++) {
            amax = max(amax, abs(src(is_k, x0 + i)));
        }
        let d = amax / 127.0;
        var id = 0.0;
        if (d != 0.0) {
            id = 1.0 / d;
        }
        for (var w = 0u; w < 8u; w++) {
            var word = 0u;
            for (var j = 0u; j < 4u; j++) {
                let v = src(is_k, x0 + 4u * w + j) * id;
                // Half away from zero, like roundf.
                let q = i32(sign(v) * floor(abs(v) + 0.5));
                word |= (u32(q) & 0xffu) << (8u * j);
            }
            put(is_k, base + b * 8u + w, word);
        }
        return vec2<f32>(d, 0.0);
    }
    var d = 0.0;
    var mn = 0.0;
    var id = 0.0;
    if (kind == KIND_Q4_0) {
        // The signed value of largest magnitude, first on ties.
        var mx = 0.0;
        for (var i = 0u; i < 32u; i++) {
            let v = src(is_k, x0 + i);
            if (abs(v) > abs(mx)) {
                mx = v;
            }
        }
        d = mx / -8.0;
    } else {
        var hi = src(is_k, x0);
        mn = hi;
        for (var i = 1u; i < 32u; i++) {
            hi = max(hi, src(is_k, x0 + i));
            mn = min(mn, src(is_k, x0 + i));
        }
        d = (hi - mn) / 15.0;
    }
    if (d != 0.0) {
        id = 1.0 / d;
    }
    for (var w = 0u; w < 4u; w++) {
        var word = 0u;
        for (var j = 0u; j < 8u; j++) {
            let v = src(is_k, x0 + 8u * w + j);
            var q = 0u;
            if (kind == KIND_Q4_0) {
                q = min(15u, u32(trunc(v * id + 8.5)));
            } else {
                q = min(15u, u32(trunc((v - mn) * id + 0.5)));
            }
            word |= q << (4u * j);
        }
        put(is_k, base + b * 4u + w, word);
    }
    return vec2<f32>(d, mn);
}

fn store_row(is_k: bool, kind: u32, t: u32) {
    let n = p.kv_dim;
    let base = st.slot * row_stride(kind, n);
    switch kind {
        case KIND_F32: {
            if (t < n) {
                put(is_k, base + t, bitcast<u32>(src(is_k, t)));
            }
        }
        case KIND_F16: {
            if (2u * t < n) {
                put(is_k, base + t, pack2x16float(vec2<f32>(src(is_k, 2u * t), src(is_k, 2u * t + 1u))));
            }
        }
        default: {
            let nb = n / 32u;
            let b0 = 2u * t;
            if (b0 >= nb) {
                return;
            }
            let a = quant_block(is_k, kind, base, b0);
            var b = vec2<f32>(0.0);
            if (b0 + 1u < nb) {
                b = quant_block(is_k, kind, base, b0 + 1u);
            }
            let codes = code_words(kind, n);
            let sw = (nb + 1u) / 2u;
            put(is_k, base + codes + t, pack2x16float(vec2<f32>(a.x, b.x)));
            if (kind == KIND_Q4_1) {
                put(is_k, base + codes + sw + t, pack2x16float(vec2<f32>(a.y, b.y)));
            }
        }
    }
}

// kivi4 keys: the row goes to its sink row or to its residual row, in f16.
fn store_kivi_key(t: u32) {
    let n = p.kv_dim;
    if (2u * t >= n) {
        return;
    }
    var row = 0u;
    if (st.pos < p.sinks) {
        row = st.pos * (n / 2u);
    } else {
        row = kivi_residual_base(n) + ((st.pos - p.sinks) % p.group) * (n / 2u);
    }
    kcache[row + t] = pack2x16float(vec2<f32>(src(true, 2u * t), src(true, 2u * t + 1u)));
}

@compute @workgroup_size(64)
fn kv_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    st = steps[gid.y];
    row_off = gid.y * p.kv_dim;
    if (p.k_kind == KIND_KIVI_KEYS) {
        store_kivi_key(gid.x);
    } else {
        store_row(true, p.k_kind, gid.x);
    }
    store_row(false, p.v_kind, gid.x);
}

// kivi4 keys: once a group's G residual rows are stored (a separate dispatch, so every row is visible),
// quantize each channel's G values into the group's ring slot. One thread per channel; the group is the
// one the pass's last row completes.
@compute @workgroup_size(64)
fn kivi_flush(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.kv_dim;
    let c = gid.x;
    if (c >= n) {
        return;
    }
    st = steps[steps[0].rows - 1u];
    let g = (st.pos - p.sinks) / p.group;
    let res = kivi_residual_base(n);
    var hi = -3.402823e38;
    var lo = 3.402823e38;
    for (var i = 0u; i < p.group; i++) {
        let v = unpack2x16float(kcache[res + i * (n / 2u) + c / 2u])[c & 1u];
        hi = max(hi, v);
        lo = min(lo, v);
    }
    let d = (hi - lo) / 15.0;
    var id = 0.0;
    if (d != 0.0) {
        id = 1.0 / d;
    }
    let base = kivi_ring_base(n) + (g % p.ring) * kivi_group_stride(n) + c * (p.group / 8u + 1u);
    for (var w = 0u; w < p.group / 8u; w++) {
        var word = 0u;
        for (var j = 0u; j < 8u; j++) {
            let i = w * 8u + j;
            let v = unpack2x16float(kcache[res + i * (n / 2u) + c / 2u])[c & 1u];
            word |= min(15u, u32(trunc((v - lo) * id + 0.5))) << (4u * j);
        }
        kcache[base + w] = word;
    }
    kcache[base + p.group / 8u] = pack2x16float(vec2<f32>(d, lo));
}
