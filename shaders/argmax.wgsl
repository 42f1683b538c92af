// Argmax over the logits, so greedy decoding reads back 4 bytes instead of the vocabulary.
// Ties go to the lowest index, as on the CPU.
//
// Bindings (group 0): 0 params { n }, 1 x (read, n values per row), 2 out (read_write array<u32>, 1
// value), 3 steps (read array<Step>; the last row of the pass is the one reduced). Prepended with
// step.wgsl. Dispatch: one workgroup of 256 threads.

struct ArgParams {
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: ArgParams;
@group(0) @binding(1) var<storage, read> x: array<act>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read> steps: array<Step>;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_id) lid: vec3<u32>) {
    var bv = -3.402823e38;
    var bi = 0xffffffffu;
    let o = (steps[0].rows - 1u) * p.n;
    for (var i = lid.x; i < p.n; i += 256u) {
        let v = f32(x[o + i]);
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    best_v[lid.x] = bv;
    best_i[lid.x] = bi;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            let ov = best_v[lid.x + s];
            let oi = best_i[lid.x + s];
            if (ov > best_v[lid.x] || (ov == best_v[lid.x] && oi < best_i[lid.x])) {
                best_v[lid.x] = ov;
                best_i[lid.x] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        out[0] = best_i[0];
    }
}
