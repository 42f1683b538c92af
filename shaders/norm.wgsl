// RMSNorm: out = w * (x / sqrt(mean(x^2) + eps)), row by row. One workgroup of 256 threads per row
// (dispatch: rows workgroups; row r is values r*n .. r*n+n of x and out).
//
// Bindings (group 0):
//   0 params: uniform NormParams { n, eps }
//   1 x:      storage read array<act>, n values (act.wgsl: f16 or f32; the sum is f32)
//   2 w:      storage read array<f32>, n values (norm weights are always f32)
//   3 out:    storage read_write array<act>, n values (never aliases x)

struct NormParams {
    n: u32,
    eps: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<act>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = wid.x * p.n;
    var ss = 0.0;
    for (var i = lid.x; i < p.n; i += 256u) {
        let v = f32(x[o + i]);
        ss += v * v;
    }
    partial[lid.x] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            partial[lid.x] += partial[lid.x + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(p.n) + p.eps);
    for (var i = lid.x; i < p.n; i += 256u) {
        out[o + i] = act(w[i] * (scale * f32(x[o + i])));
    }
}
