// matvec4_kquant_norm: the K-quant products with the RMSNorm folded in (matvec4_kquant.wgsl's
// kernels, `staged` true): each workgroup stages w x as f16 (matvec4_norm.wgsl's stage_x_f16, f16
// activations only) and scales its sums by the norm's factor at the end. Placed after
// matvec4_norm.wgsl and before matvec4_kquant.wgsl; bindings as the plain kernels' and 12 (the
// norm's weights).

// x vectors j and j + 1 (values 4j..4j+8, j even): from x4, or from the staged w x (xh[k] holds
// values 8k..8k+7).
fn x8(j: u32, staged: bool) -> array<vec4<f32>, 2> {
    if (staged) {
        let h = xh[j >> 1u];
        return array<vec4<f32>, 2>(vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y)),
            vec4<f32>(unpack2x16float(h.z), unpack2x16float(h.w)));
    }
    return array<vec4<f32>, 2>(xq(j), xq(j + 1u));
}

@compute @workgroup_size(256)
fn matvec4_glu_q6kn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = stage_x_f16(lid.x, p.cols, p.eps);
    glu_q6k(wid, lid, true, scale);
}

@compute @workgroup_size(256)
fn matvec4_glu_kn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = stage_x_f16(lid.x, p.cols, p.eps);
    glu_k(wid, lid, true, scale);
}

@compute @workgroup_size(256)
fn matvec4_qkv_kn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let scale = stage_x_f16(lid.x, qp.cols, qp.eps);
    qkv_k(wid, lid, true, scale);
}
