// KV cache row formats, shared by kv.wgsl (store) and attention.wgsl (read); prepended to both.
// Kinds are the KIND_* codes generated from engine/src/dtype.rs. Layouts are described in kv.wgsl.

struct AttnParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_size: u32,
    kv_dim: u32,
    cap: u32,
    k_kind: u32,
    v_kind: u32,
    // kivi4 keys (k_kind KIND_KIVI_KEYS): group length G, groups in the ring, attention sinks.
    group: u32,
    ring: u32,
    sinks: u32,
    pad0: u32,
    // Soft-capping of every scaled score, cap * tanh(s / cap) (Gemma 2); 0: none.
    softcap: f32,
}

// A scaled score soft-capped where the model caps them.
fn capped(s: f32) -> f32 {
    if (p.softcap > 0.0) {
        return p.softcap * tanh(s / p.softcap);
    }
    return s;
}

// kivi4 keys (k_kind KIND_KIVI_KEYS), per layer one buffer, in words:
//   [sinks rows: `sinks` f16 rows][residual: G f16 rows, row i = position sinks + g*G + i of the group
//   being filled][ring of complete groups: `ring` groups of kv_dim channels, each channel G/8 code words
//   (token i at bits 4*(i%8) of word i/8) then one word pack2x16float(scale, min)].
// A channel's G values form one asymmetric 4-bit block (KIVI's per-channel key quantization).
fn kivi_residual_base(n: u32) -> u32 {
    return p.sinks * (n / 2u);
}

fn kivi_ring_base(n: u32) -> u32 {
    return (p.sinks + p.group) * (n / 2u);
}

fn kivi_group_stride(n: u32) -> u32 {
    return n * (p.group / 8u + 1u);
}

// Words per slot row of n values.
fn row_stride(kind: u32, n: u32) -> u32 {
    switch kind {
        case KIND_F32: { return n; }
        case KIND_F16: { return n / 2u; }
        case KIND_Q8_0: { return n / 4u + (n / 32u + 1u) / 2u; }
        case KIND_Q4_0: { return n / 8u + (n / 32u + 1u) / 2u; }
        default: { return n / 8u + 2u * ((n / 32u + 1u) / 2u); }
    }
}

fn code_words(kind: u32, n: u32) -> u32 {
    if (kind == KIND_Q8_0) {
        return n / 4u;
    }
    return n / 8u;
}

// Index, within a row, of the word holding element i's code (or value).
fn code_index(kind: u32, i: u32) -> u32 {
    switch kind {
        case KIND_F32: { return i; }
        case KIND_F16: { return i / 2u; }
        case KIND_Q8_0: { return i / 4u; }
        default: { return i / 8u; }
    }
}

fn scale_index(kind: u32, n: u32, i: u32) -> u32 {
    return code_words(kind, n) + (i / 32u) / 2u;
}

fn min_index(kind: u32, n: u32, i: u32) -> u32 {
    return code_words(kind, n) + (n / 32u + 1u) / 2u + (i / 32u) / 2u;
}

// Element i's value from the words that hold it (scale and min words are ignored by kinds without them).
fn decode(kind: u32, code: u32, scale: u32, mn: u32, i: u32) -> f32 {
    switch kind {
        case KIND_F32: { return bitcast<f32>(code); }
        case KIND_F16: { return unpack2x16float(code)[i & 1u]; }
        case KIND_Q8_0: {
            let q = f32(i32(code << (24u - 8u * (i & 3u))) >> 24u);
            return q * unpack2x16float(scale)[(i / 32u) & 1u];
        }
        case KIND_Q4_0: {
            let q = f32((code >> (4u * (i & 7u))) & 15u);
            return (q - 8.0) * unpack2x16float(scale)[(i / 32u) & 1u];
        }
        default: {
            let q = f32((code >> (4u * (i & 7u))) & 15u);
            let h = (i / 32u) & 1u;
            return q * unpack2x16float(scale)[h] + unpack2x16float(mn)[h];
        }
    }
}
