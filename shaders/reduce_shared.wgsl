// row_sum, the workgroup-memory path: the sum of v over each 32-lane row of a workgroup (lanes t
// with the same t / 32), returned to the row's lane 0 (other lanes get partial sums): a tree in
// workgroup memory, six barriers (one after the stores, one per step). Every thread of the workgroup
// calls it; a second call needs a barrier before it (the first's reads of rowsum).
// reduce_subgroup.wgsl is the other path; kernels.rs prepends one of the two to the matvec4 module
// as the adapter allows (Gpu::subgroups).

var<workgroup> rowsum: array<f32, 256>;

fn row_sum(v: f32, t: u32) -> f32 {
    rowsum[t] = v;
    workgroupBarrier();
    let lane = t % 32u;
    for (var s = 16u; s > 0u; s >>= 1u) {
        if (lane < s) {
            rowsum[t] += rowsum[t + s];
        }
        workgroupBarrier();
    }
    return rowsum[t];
}
