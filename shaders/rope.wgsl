// RoPE of Q and K, in place, row by row, in one dispatch: pair f of a head is elements (2f, 2f + 1)
// (llama's adjacent pairs) or (f, f + head_size / 2) where neox is 1 (Qwen). The cos/sin of each
// frequency at each row's position are computed on the CPU (exactly as the oracle does) and
// uploaded, so no GPU sin/cos of large angles is involved.
//
// Bindings (group 0):
//   0 params: uniform RopeParams { n (Q's values per row), head_size, neox (0 or 1), n_k (K's) }
//   1 x:      storage read_write array<act>, Q, n values per row (all heads; act.wgsl)
//   2 table:  storage read array<f32>, head_size values per row: cos f0, sin f0, cos f1, sin f1, ...
//   3 k:      storage read_write array<act>, K, n_k values per row
// Dispatch: (ceil((n + n_k) / 2 / 64), rows) workgroups, one thread per pair, Q's pairs first (one
// dispatch fewer per layer than rotating each apart).

struct RopeParams {
    n: u32,
    head_size: u32,
    neox: u32,
    n_k: u32,
}

@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<storage, read_write> x: array<act>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> k: array<act>;

// The pair (a, b) rotated by the angle whose cos and sin are at `t` in the table.
fn rotate(a: f32, b: f32, t: u32) -> vec2<f32> {
    let c = table[t];
    let s = table[t + 1u];
    return vec2<f32>(a * c - b * s, a * s + b * c);
}

// The indices of pair `pair`'s two elements (x, y) in a row `row` of n values, and of its cos (z).
fn pair_at(row: u32, n: u32, pair: u32) -> vec4<u32> {
    let half = p.head_size / 2u;
    let head = pair / half;
    let f = pair % half;
    var i = row * n + head * p.head_size + 2u * f;
    var j = i + 1u;
    if (p.neox == 1u) {
        i = row * n + head * p.head_size + f;
        j = i + half;
    }
    return vec4<u32>(i, j, row * p.head_size + 2u * f, 0u);
}

@compute @workgroup_size(64)
fn rope_qk(@builtin(global_invocation_id) gid: vec3<u32>) {
    let nq = p.n / 2u;
    if (gid.x < nq) {
        let at = pair_at(gid.y, p.n, gid.x);
        let r = rotate(f32(x[at.x]), f32(x[at.y]), at.z);
        x[at.x] = act(r.x);
        x[at.y] = act(r.y);
    } else if (gid.x < nq + p.n_k / 2u) {
        let at = pair_at(gid.y, p.n_k, gid.x - nq);
        let r = rotate(f32(k[at.x]), f32(k[at.y]), at.z);
        k[at.x] = act(r.x);
        k[at.y] = act(r.y);
    }
}

