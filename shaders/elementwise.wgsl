// Element-wise kernels on activations.
//
// Bindings (group 0), for both entry points:
//   0 params: uniform EwParams { n }
//   1 a:      storage read_write array<f32>, n values (the output, updated in place)
//   2 b:      storage read array<f32>, n values
// Dispatch: ceil(n / 64) workgroups.
//   add:    a += b                 (residual connection)
//   swiglu: a = silu(a) * b        (a = gate, b = up)

struct EwParams {
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: EwParams;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) {
        a[i] = a[i] + b[i];
    }
}

@compute @workgroup_size(64)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) {
        let g = a[i];
        a[i] = g / (1.0 + exp(-g)) * b[i];
    }
}
