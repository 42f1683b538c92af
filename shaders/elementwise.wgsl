// Element-wise kernels on activations.
//
// Bindings (group 0):
//   0 params: uniform EwParams { n (values per row), s (scale's factor) }
//   1 a:      storage read_write array<act>, n values per row (the output, updated in place; act.wgsl)
//   2 b:      storage read array<act>, n values per row (add, swiglu)
//   3 bias:   storage read array<f32>, n values, one vector for every row (add_bias)
// Dispatch: (ceil(n / 64), rows) workgroups.
//   add:      a += b               (residual connection)
//   swiglu:   a = silu(a) * b      (a = gate, b = up)
//   geglu:    a = gelu(a) * b      (GELU's tanh form, as PyTorch's and forward::gelu_tanh)
//   add_bias: a += bias            (a projection's bias)
//   scale:    a *= s               (Gemma's embedding scale)
//   softcap:  a = s tanh(a / s)    (Gemma 2's logits)

struct EwParams {
    n: u32,
    s: f32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: EwParams;
@group(0) @binding(1) var<storage, read_write> a: array<act>;
@group(0) @binding(2) var<storage, read> b: array<act>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.n + gid.x;
    if (gid.x < p.n) {
        a[i] = act(f32(a[i]) + f32(b[i]));
    }
}

@compute @workgroup_size(64)
fn add_bias(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.n + gid.x;
    if (gid.x < p.n) {
        a[i] = act(f32(a[i]) + bias[gid.x]);
    }
}

@compute @workgroup_size(64)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.n + gid.x;
    if (gid.x < p.n) {
        let g = f32(a[i]);
        a[i] = act(g / (1.0 + exp(-g)) * f32(b[i]));
    }
}

@compute @workgroup_size(64)
fn geglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.n + gid.x;
    if (gid.x < p.n) {
        let g = f32(a[i]);
        let t = tanh(0.7978846 * (g + 0.044715 * g * g * g));
        a[i] = act(0.5 * g * (1.0 + t) * f32(b[i]));
    }
}

@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.n + gid.x;
    if (gid.x < p.n) {
        a[i] = act(f32(a[i]) * p.s);
    }
}

@compute @workgroup_size(64)
fn softcap(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.n + gid.x;
    if (gid.x < p.n) {
        a[i] = act(p.s * tanh(f32(a[i]) / p.s));
    }
}
