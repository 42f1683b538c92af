// row_sum, the subgroup path (adapters whose subgroups are at most 32 wide): each subgroup adds its
// lanes with subgroupAdd, its first lane stores the sum in workgroup memory, and the row's lane 0
// adds its row's 32 / n subgroup sums: one barrier, as reduce_shared.wgsl takes. Lanes
// of a one-dimensional workgroup fill its subgroups in order, n at a time (n a power of two, at most
// 32), so a row's 32 lanes are whole subgroups and lane t is a subgroup's first where t % n == 0.
// Every thread of the workgroup calls it (subgroupAdd(1u) counts the subgroup's lanes, all active);
// a second call needs a barrier before it. row_sum2 does the same for two values a lane (gate and
// up); row_sum is row_sum2 with a zero beside it (one subgroupAdd of a vec2, this path not the default).

var<workgroup> rowsum: array<vec2<f32>, 256>;

fn row_sum2(v: vec2<f32>, t: u32) -> vec2<f32> {
    let s = subgroupAdd(v);
    let n = subgroupAdd(1u);
    if (t % n == 0u) {
        rowsum[t] = s;
    }
    workgroupBarrier();
    var total = s;
    if (t % 32u == 0u) {
        for (var k = n; k < 32u; k += n) {
            total += rowsum[t + k];
        }
    }
    return total;
}

fn row_sum(v: f32, t: u32) -> f32 {
    return row_sum2(vec2<f32>(v, 0.0), t).x;
}
