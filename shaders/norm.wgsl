// RMSNorm: out = w * (x / sqrt(mean(x^2) + eps)), row by row. One workgroup of 256 threads per row
// (dispatch: rows workgroups; row r is values r*n .. r*n+n of x and out).
// head_norm: the same over each head of `out` in place (Qwen3's Q and K norms), n = head_size, w of
// head_size weights; one workgroup per head of every row (heads are consecutive runs of n values).
// It binds no x.
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

// Each thread issues eight loads before it uses any: a decode step normalises one row in one
// workgroup, and a loop of one load per iteration made each thread wait out 16 memory latencies
// in turn (11 us of an H200's time, ~0.7 ms of a 7B token; benchmarks/2026-12-03-h200-profile.md).
// Indices past the row are clamped and their values dropped.
fn x8(o: u32, i: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    let last = p.n - 1u;
    for (var k = 0u; k < 8u; k++) {
        let j = i + 256u * k;
        v[k] = select(0.0, f32(x[o + min(j, last)]), j < p.n);
    }
    return v;
}

@compute @workgroup_size(256)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = wid.x * p.n;
    var ss = 0.0;
    for (var i = lid.x; i < p.n; i += 2048u) {
        let v = x8(o, i);
        ss += ((v[0] * v[0] + v[1] * v[1]) + (v[2] * v[2] + v[3] * v[3]))
            + ((v[4] * v[4] + v[5] * v[5]) + (v[6] * v[6] + v[7] * v[7]));
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
    for (var i = lid.x; i < p.n; i += 2048u) {
        let v = x8(o, i);
        for (var k = 0u; k < 8u; k++) {
            let j = i + 256u * k;
            if (j < p.n) {
                out[o + j] = act(w[j] * (scale * v[k]));
            }
        }
    }
}

@compute @workgroup_size(256)
fn head_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = wid.x * p.n;
    var ss = 0.0;
    for (var i = lid.x; i < p.n; i += 256u) {
        let v = f32(out[o + i]);
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
    // Each thread rewrites only the values it read.
    for (var i = lid.x; i < p.n; i += 256u) {
        out[o + i] = act(w[i] * (scale * f32(out[o + i])));
    }
}
