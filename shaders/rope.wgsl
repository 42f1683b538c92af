// RoPE, llama's adjacent-pair rotation, in place, row by row. The cos/sin of each frequency at each
// row's position are computed on the CPU (exactly as the oracle does) and uploaded, so no GPU sin/cos
// of large angles is involved.
//
// Bindings (group 0):
//   0 params: uniform RopeParams { n (values per row), head_size }
//   1 x:      storage read_write array<act>, n values per row (all heads; act.wgsl)
//   2 table:  storage read array<f32>, head_size values per row: cos f0, sin f0, cos f1, sin f1, ...
// Dispatch: (ceil(n / 2 / 64), rows) workgroups, one thread per pair.

struct RopeParams {
    n: u32,
    head_size: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<storage, read_write> x: array<act>;
@group(0) @binding(2) var<storage, read> table: array<f32>;

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x * 2u >= p.n) {
        return;
    }
    let i = gid.y * p.n + gid.x * 2u;
    let f = (gid.x * 2u % p.head_size) / 2u;
    let c = table[gid.y * p.head_size + 2u * f];
    let s = table[gid.y * p.head_size + 2u * f + 1u];
    let a = f32(x[i]);
    let b = f32(x[i + 1u]);
    x[i] = act(a * c - b * s);
    x[i + 1u] = act(a * s + b * c);
}
