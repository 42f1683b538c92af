// row_sum, the workgroup-memory path: the sum of v over each 32-lane row of a workgroup (lanes t
// with the same t / 32), returned to the row's lane 0 (other lanes get their own v back): every
// lane stores its value, one barrier, and the row's lane 0 adds the row's 32 values as eight vec4
// loads. (A tree took six barriers a row sum; the integer-dot kernels sum a row group per pass of
// their loop, so the barriers were paid per group.) row_sum2 does the same for two values a lane
// (gate and up). Every thread of the workgroup calls them; a second call needs a barrier before it
// (the first's reads of rowsum).
// reduce_subgroup.wgsl is the other path; kernels.rs prepends one of the two to the matvec4 module
// as the adapter allows (Gpu::subgroups).

// Lane t's value at rowsum[t / 4][t % 4], row_sum2's second values 64 vec4 on.
var<workgroup> rowsum: array<vec4<f32>, 128>;

// The sum of row t / 32's eight vec4 from vec4 o on.
fn add_row(o: u32, t: u32) -> f32 {
    let b = o + t / 4u;
    let s = ((rowsum[b] + rowsum[b + 1u]) + (rowsum[b + 2u] + rowsum[b + 3u]))
        + ((rowsum[b + 4u] + rowsum[b + 5u]) + (rowsum[b + 6u] + rowsum[b + 7u]));
    return (s.x + s.y) + (s.z + s.w);
}

fn row_sum(v: f32, t: u32) -> f32 {
    rowsum[t / 4u][t % 4u] = v;
    workgroupBarrier();
    var total = v;
    if (t % 32u == 0u) {
        total = add_row(0u, t);
    }
    return total;
}

fn row_sum2(v: vec2<f32>, t: u32) -> vec2<f32> {
    rowsum[t / 4u][t % 4u] = v.x;
    rowsum[64u + t / 4u][t % 4u] = v.y;
    workgroupBarrier();
    var total = v;
    if (t % 32u == 0u) {
        total = vec2<f32>(add_row(0u, t), add_row(64u, t));
    }
    return total;
}
