// RoPE, llama's adjacent-pair rotation, in place. The cos/sin of each frequency at the current position
// are computed once per token on the CPU (exactly as the oracle does) and uploaded, so no GPU sin/cos of
// large angles is involved.
//
// Bindings (group 0):
//   0 params: uniform RopeParams { n (values in x), head_size }
//   1 x:      storage read_write array<act>, n values (all heads; act.wgsl)
//   2 table:  storage read array<f32>, head_size values: cos f0, sin f0, cos f1, sin f1, ...
// Dispatch: ceil(n / 2 / 64) workgroups, one thread per pair.

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
    let i = gid.x * 2u;
    if (i >= p.n) {
        return;
    }
    let f = (i % p.head_size) / 2u;
    let c = table[2u * f];
    let s = table[2u * f + 1u];
    let a = f32(x[i]);
    let b = f32(x[i + 1u]);
    x[i] = act(a * c - b * s);
    x[i + 1u] = act(a * s + b * c);
}
