// matvec4_kquant_x: where the K-quant kernels' x comes from in the module without a folded norm: x4
// (binding 4), read as matvec4.wgsl's xq reads it. Placed before matvec4_kquant.wgsl; the
// norm-folding module takes matvec4_kquant_norm.wgsl's x8 instead, which can read the staged w x.
// Binds nothing of its own.

// x vectors j and j + 1 (values 4j..4j+8, j even); `staged` is never true in this module.
fn x8(j: u32, staged: bool) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(xq(j), xq(j + 1u));
}
