//! Pipelines without wgpu's shader safety code (`ShaderChecks::OFF`, the native default) against
//! pipelines with all of it (`ON`, what browsers run), on lavapipe.
//!
//! Tolerance: none. Bounds clamps, loop counters and division guards change no value of an index
//! that is in range, and zeroing workgroup memory changes nothing a kernel writes before reading, so
//! both must give the same logits bit for bit. A kernel that read outside a binding or an array, or
//! read workgroup memory it had not written, would differ (the clamped or zeroed value against
//! whatever memory held). tests/gpu.rs holds the default (`OFF`) to the CPU oracle.

mod common;
use common::*;
use nibble_engine::block_on;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions, MatvecKernel, ShaderChecks};
use nibble_engine::kv::{KvConfig, KvType};
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::{Decoder, Model};

fn open(checks: ShaderChecks, act: Activations) -> Gpu {
    let g = Gpu::open_blocking(GpuOptions {
        act: Some(act),
        shader_checks: Some(checks),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    assert_eq!(g.shader_checks, checks, "natively every choice is honoured");
    g
}

/// Logits of a batched prefill, then of decoded steps, then a greedy run's ids.
fn run(gpu: &Gpu, m: &Model, kv: KvConfig, prompt: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut d = GpuDecoder::new(gpu, m, kv).unwrap();
    let (head, tail) = prompt.split_at(prompt.len() - 4);
    let mut logits = vec![block_on(d.prefill(head, 0)).unwrap().to_vec()];
    for (i, &t) in tail.iter().enumerate() {
        logits.push(block_on(d.step(t, head.len() + i)).unwrap().to_vec());
    }
    let ids = block_on(d.decode_greedy(prompt[0], prompt.len(), 12)).unwrap();
    (logits, ids)
}

#[test]
fn pipelines_without_safety_code_give_the_same_bits() {
    let stories = stories();
    let tok = stories.tokenizer.as_ref().unwrap();
    let st =
        &nibble_engine::eval::story_tokens(tok, &text("tinystories_sample.txt"), 70).unwrap()[0];
    let builtin = Model::builtin();
    let bt: Vec<u32> = (0..70).map(|i| 3 + (i * 29 % 250) as u32).collect();
    for act in [Activations::F32, Activations::F16] {
        let (on, off) = (open(ShaderChecks::ON, act), open(ShaderChecks::OFF, act));
        if act == Activations::F16 && !on.report.shader_f16 {
            println!("no shader-f16 on {}: f16 skipped", on.report.name);
            continue;
        }
        // TiledInt8: the integer-dot kernels (q4_0's and the K-quants') index workgroup memory by
        // the row's width, which the kernel choice bounds.
        for k in [
            MatvecKernel::Tiled,
            MatvecKernel::Row,
            MatvecKernel::TiledInt8,
        ] {
            on.set_matvec_kernel(k);
            off.set_matvec_kernel(k);
            for (base, prompt, name, spec, kv) in [
                (&stories, st, "stories260K", "weights=q4_0", KvType::F32),
                (&stories, st, "stories260K", "weights=f16", KvType::Q8_0),
                (&builtin, &bt, "builtin", "weights=q4_k", KvType::Kivi4),
                (&builtin, &bt, "builtin", "weights=q6_k", KvType::Q4_0),
            ] {
                let cfg = RunConfig::parse(spec).unwrap();
                let (m, _) = measure::prepare(base, &cfg).unwrap();
                let kv = KvConfig {
                    k: kv,
                    v: kv,
                    window: Some(48),
                    sinks: 4,
                    ..KvConfig::default()
                };
                let what = format!("{act:?} {k:?} {name} {spec} kv {}", kv.label());
                let a = run(&on, &m, kv.clone(), prompt);
                let b = run(&off, &m, kv, prompt);
                assert!(a == b, "{what}: checks on and off differ");
                println!("{what}: identical");
            }
        }
    }
}

/// Every shader module of the kernel table compiles on the adapter in each configuration it can be
/// opened in (f32 and f16 activations, subgroup and workgroup-memory row sums), though most kernels
/// compile only when a model first needs them: the integer-dot modules where the adapter has packed
/// dot products (the long ones where 32 KB of workgroup memory are allowed, as here), the
/// K-quant one for K-quant files, the f16-math GEMM's with f16 activations. Browsers run the same check when they open
/// (`Capabilities::shader_modules`).
#[test]
fn every_shader_module_compiles_in_each_configuration() {
    for act in [Activations::F32, Activations::F16] {
        for subgroups in [false, true] {
            let g = Gpu::open_blocking(GpuOptions {
                act: Some(act),
                subgroups: Some(subgroups),
                ..Default::default()
            })
            .expect("lavapipe has shader-f16 and subgroups");
            assert!(g.packed_dot, "lavapipe has packed integer dot products");
            assert!(g.int8_long, "lavapipe allows 32 KB of workgroup memory");
            let note = block_on(g.check_modules()).unwrap_or_else(|e| panic!("{e}"));
            // The f16-math GEMM's module is only for f16 activations.
            let n = if act == Activations::F16 { 17 } else { 16 };
            let want = format!("all {n} shader modules compile");
            assert!(note.starts_with(&want), "{note}");
        }
    }
}
