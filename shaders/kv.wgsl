// KV cache store: writes the current token's K and V rows into their slot. Prepended with step.wgsl.
//
// Cache layout: per layer one buffer for keys and one for values, `cap` slots of kv_dim f32 values;
// position t lives in slot slot_of(step, t) (sinks at 0..sinks, the rest in a ring of `span`).
// Keys are stored after RoPE at their true position.
//
// kv_store bindings (group 0): 0 params, 1 k (read, kv_dim), 2 v (read, kv_dim),
//   3 kcache (read_write), 4 vcache (read_write), 5 step. Dispatch: ceil(kv_dim / 64).

struct AttnParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_size: u32,
    kv_dim: u32,
    cap: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: AttnParams;

@group(0) @binding(1) var<storage, read> k_in: array<f32>;
@group(0) @binding(2) var<storage, read> v_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> kcache_w: array<f32>;
@group(0) @binding(4) var<storage, read_write> vcache_w: array<f32>;
@group(0) @binding(5) var<uniform> step_s: Step;

@compute @workgroup_size(64)
fn kv_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.kv_dim) {
        return;
    }
    let at = step_s.slot * p.kv_dim + i;
    kcache_w[at] = k_in[i];
    vcache_w[at] = v_in[i];
}
