//! Both ways the matrix kernels sum a row's 32 lanes, forced in turn on lavapipe (whose subgroups are
//! 8 lanes wide, so a row is four subgroups): `subgroupAdd` per subgroup (reduce_subgroup.wgsl) and the
//! workgroup-memory sum (reduce_shared.wgsl), each against the CPU oracle for every kind of decode
//! kernel that sums rows (matvec4's f32, f16, q8_0, q4_0/q4_1 and K-quant kernels and the fused
//! gate/up kernel), with the tiled kernels forced (lavapipe would pick the row kernels, which sum
//! nothing). Tolerance as tests/gpu.rs derives it (f32 activations; max |Δlogit| <= 2e-4 * (1 + max
//! |logit|), top-1 agreeing): the two paths add the same values in another order.

use nibble_engine::block_on;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions, MatvecKernel};
use nibble_engine::kv::KvConfig;
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::{eval, Decoder, Model};

fn check(gpu: &Gpu, m: &Model, what: &str) {
    let toks: Vec<u32> = (0..10).map(|i| 3 + (i * 41 % 250) as u32).collect();
    let mut cpu = CpuDecoder::with_kv(m, KvConfig::default()).unwrap();
    let mut g = GpuDecoder::new(gpu, m, KvConfig::default()).unwrap();
    for (p, &t) in toks.iter().enumerate() {
        let a = block_on(cpu.step(t, p)).unwrap().to_vec();
        let b = block_on(g.step(t, p)).unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            d <= 2e-4 * (1.0 + scale),
            "{what} pos {p}: max |Δlogit| {d}"
        );
        assert_eq!(eval::argmax(&a), eval::argmax(b), "{what} pos {p}");
    }
}

#[test]
fn subgroup_and_workgroup_memory_row_sums_match_cpu() {
    let builtin = Model::builtin();
    for subgroups in [true, false] {
        let gpu = Gpu::open_blocking(GpuOptions {
            act: Some(Activations::F32),
            matvec: Some(MatvecKernel::Tiled),
            subgroups: Some(subgroups),
            ..Default::default()
        })
        .expect("a WebGPU adapter with subgroups (lavapipe: apt-get install mesa-vulkan-drivers)");
        assert_eq!(gpu.subgroups, subgroups);
        let choice = gpu.matvec_choice.borrow().clone();
        let named = if subgroups {
            "subgroupAdd"
        } else {
            "workgroup memory"
        };
        assert!(choice.contains(named), "{choice}");
        for ty in ["f32", "f16", "q8_0", "q4_0", "q4_1", "q4_k"] {
            let cfg = RunConfig::parse(&format!("weights={ty}")).unwrap();
            let (m, _) = measure::prepare(&builtin, &cfg).unwrap();
            check(&gpu, &m, &format!("{choice}: {ty}"));
        }
    }
}
