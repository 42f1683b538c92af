//! Per-kernel GPU times (`nibble bench --profile`) on lavapipe, which writes timestamps inside passes:
//! every dispatch of a pass is counted once under its kernel (and matrix), a profiled step computes
//! what an unprofiled one does, and a device opened without asking has no profile.

use nibble_engine::bench::{self, BenchOpts};
use nibble_engine::block_on;
use nibble_engine::gpu::{Gpu, GpuDecoder, GpuOptions};
use nibble_engine::kv::KvConfig;
use nibble_engine::{Decoder, Model};

fn open(profile: bool) -> Gpu {
    Gpu::open_blocking(GpuOptions {
        profile,
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
}

#[test]
fn a_profiled_pass_counts_every_dispatch_under_its_kernel() {
    let gpu = open(true);
    assert!(gpu.timestamps, "lavapipe writes timestamps inside passes");
    let m = Model::builtin();
    let c = m.config.clone();
    let mut d = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
    let mut plain = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| 3 + i * 7).collect();
    block_on(d.prefill(&prompt, 0)).unwrap();
    let want = block_on(plain.prefill_argmax(&prompt, 0)).unwrap();
    let next = block_on(plain.step_argmax(want, prompt.len())).unwrap();

    // One decode step: the kernels of the forward pass and its argmax.
    let k = block_on(d.profile(&[want], prompt.len())).unwrap().unwrap();
    let n: usize = k.iter().map(|k| k.dispatches).sum();
    assert_eq!(Some(n), d.dispatches(), "{k:?}");
    let count = |name: &str| k.iter().find(|k| k.kernel == name).map(|k| k.dispatches);
    assert_eq!(count("argmax"), Some(1));
    assert_eq!(count("rmsnorm"), Some(2 * c.n_layers + 1));
    for role in [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ] {
        let per_layer = k
            .iter()
            .filter(|k| k.kernel.ends_with(&format!(" {role}")))
            .map(|k| k.dispatches)
            .sum::<usize>();
        assert_eq!(per_layer, c.n_layers, "{role}: {k:?}");
    }
    assert!(k.iter().all(|k| k.us.is_finite() && k.us >= 0.0), "{k:?}");
    assert!(k.iter().map(|k| k.us).sum::<f64>() > 0.0, "{k:?}");
    // The profiled step computed the step: the next token as the plain decoder's.
    assert_eq!(block_on(d.step_argmax(next, prompt.len() + 1)).unwrap(), {
        block_on(plain.step_argmax(next, prompt.len() + 1)).unwrap()
    });

    // A prompt's first pass: every matrix once per layer as a batched product.
    d.reset();
    let k = block_on(d.profile(&prompt, 0)).unwrap().unwrap();
    assert_eq!(count_of(&k, "matmul ffn_down"), c.n_layers, "{k:?}");
    assert_eq!(
        count_of(&k, "argmax"),
        0,
        "a prompt pass reads nothing back"
    );
}

/// A prompt pass whose logits are read for its last row only (or not at all) runs its classifier as
/// the decode product over that row alone (llama.cpp computes a prompt's logits so); 16 rows in,
/// the row starts on a 256-byte boundary in f16 and f32 activations (64-wide rows), meeting any
/// adapter's storage alignment. Scoring reads every row and keeps the batched product
/// (`tests/gpu_score.rs` checks those rows). The last row's logits against the oracle:
/// `tests/gpu_attention.rs` and `tests/gpu_fused.rs` (prompt passes of 150 and 100 rows).
#[test]
fn a_prompt_pass_classifies_its_last_row_alone() {
    let gpu = open(true);
    let m = Model::builtin();
    let mut d = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
    let prompt: Vec<u32> = (0..17).map(|i| 3 + i * 7).collect();
    let k = block_on(d.profile(&prompt, 0)).unwrap().unwrap();
    let output: Vec<_> = k.iter().filter(|k| k.kernel.ends_with(" output")).collect();
    assert_eq!(output.len(), 1, "{k:?}");
    assert!(!output[0].kernel.starts_with("matmul"), "{k:?}");
    assert_eq!(count_of(&k, "matmul ffn_down"), m.config.n_layers, "{k:?}");
}

fn count_of(k: &[bench::KernelTime], name: &str) -> usize {
    k.iter()
        .find(|k| k.kernel == name)
        .map_or(0, |k| k.dispatches)
}

#[test]
fn bench_profiles_each_test_only_where_asked_and_possible() {
    let m = Model::builtin();
    let o = BenchOpts {
        reps: 1,
        warmup: 0,
        prompts: vec![16],
        depths: vec![0],
        decode_tokens: 4,
        profile: 2,
        ..Default::default()
    };
    let gpu = open(true);
    let mut d = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
    let t = block_on(bench::measure(&mut d, &m, &o, |_| {})).unwrap();
    let p = t.prefill[0].profile.as_ref().expect("a prefill profile");
    assert_eq!(p.passes, 2);
    assert!(count_of(&p.kernels, "matmul attn_q") > 0, "{p:?}");
    let p = t.decode[0].profile.as_ref().expect("a decode profile");
    assert_eq!(count_of(&p.kernels, "argmax"), 1, "{p:?}");

    // Without timestamps asked for, or on the CPU, nothing is profiled.
    let gpu = open(false);
    assert!(!gpu.timestamps);
    let mut d = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
    let t = block_on(bench::measure(&mut d, &m, &o, |_| {})).unwrap();
    assert!(t.decode[0].profile.is_none() && t.prefill[0].profile.is_none());
    let mut d = nibble_engine::cpu::CpuDecoder::new(&m);
    let t = block_on(bench::measure(&mut d, &m, &o, |_| {})).unwrap();
    assert!(t.decode[0].profile.is_none());
}

/// A browser's kernel choice (`Gpu::tune_matvec`) times 32 greedy tokens on the GPU as the difference
/// of two runs with one readback each, so a readback's latency (Firefox's ~100 ms) cancels: each
/// kernel's figure is positive (the longer run took longer) and the choice is the lower one. The
/// integer kernels are timed too where WGSL has packed dot products (lavapipe has them); a kernel
/// whose 4-token run outlasts the fastest one's 36-token run is stopped there.
#[test]
fn the_tuned_kernel_is_the_one_timed_faster() {
    let gpu = open(false);
    let note = block_on(gpu.tune_matvec()).unwrap();
    let entries: Vec<&str> = note
        .rsplit_once(": ")
        .expect("the note lists each kernel's time")
        .1
        .split(", ")
        .collect();
    // Each kernel timed, or stopped where its 4-token run outlasted the fastest one's 36.
    let mut want = vec!["Tiled", "Row"];
    if gpu.packed_dot {
        want.push("TiledInt8");
    }
    let named: Vec<&str> = entries
        .iter()
        .map(|e| e.split(' ').next().unwrap())
        .collect();
    assert_eq!(named, want, "{note}");
    // A stopped kernel's 4 tokens took longer than the fastest one's 36.
    for e in entries.iter().filter(|e| e.contains(" stopped (")) {
        let ms: Vec<f64> = e
            .split([' ', '(', ')'])
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(ms.len() == 4 && ms[1] > ms[3], "{note}");
    }
    let figures: Vec<(String, f64)> = entries
        .iter()
        .filter(|e| !e.contains(" stopped ("))
        .map(|s| {
            let mut w = s.split(' ');
            let k = w.next().unwrap().to_string();
            (k, w.next().unwrap().parse().unwrap())
        })
        .collect();
    assert!(!figures.is_empty(), "{note}");
    assert!(figures.iter().all(|(_, ms)| *ms > 0.0), "{note}");
    let best = figures.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(format!("{:?}", gpu.matvec_kernel()), best.0, "{note}");
}
