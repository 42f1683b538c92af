//! `--ctx` (`KvConfig::ctx`, `ctx=` in a run configuration): the KV cache holds that many positions
//! rather than the model's whole context, on the CPU and on the GPU, computing the same logits
//! within it and refusing past it with the reason.

mod common;

use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
use nibble_engine::kv::KvConfig;
use nibble_engine::measure::RunConfig;
use nibble_engine::{block_on, Decoder, Model};

fn ctx(n: usize) -> KvConfig {
    KvConfig {
        ctx: Some(n),
        ..Default::default()
    }
}

fn forced(dec: &mut dyn Decoder, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|p| {
            block_on(dec.step((p * 7 + 3) as u32 % 259, p))
                .unwrap()
                .to_vec()
        })
        .collect()
}

#[test]
fn a_run_configuration_takes_ctx_and_says_it() {
    let c = RunConfig::parse("weights=q4_0,ctx=48").unwrap();
    assert_eq!(c.kv.ctx, Some(48));
    assert!(c.kv.label().contains("ctx=48"), "{}", c.kv.label());
    let m = Model::builtin();
    let both = KvConfig {
        window: Some(64),
        ..ctx(32)
    };
    let e = both.validate(&m.config).unwrap_err().to_string();
    assert!(e.contains("--ctx 32 with --window 64"), "{e}");
    assert!(ctx(0).validate(&m.config).is_err());
}

/// The oracle with a context of 16: the same logits as without, and position 16 refused naming
/// the option and the model's own context.
#[test]
fn the_cpu_stops_at_ctx_and_says_which_limit() {
    let m = Model::builtin();
    let mut small = CpuDecoder::with_kv(&m, ctx(16)).unwrap();
    let want = forced(&mut CpuDecoder::new(&m), 16);
    assert_eq!(forced(&mut small, 16), want);
    assert_eq!(small.context_limit(), 16);
    let e = block_on(small.step(1, 16)).unwrap_err().to_string();
    assert!(
        e.contains("position 16 is past the context of 16 that --ctx sets")
            && e.contains(&format!("the model's is {}", m.config.seq_len)),
        "{e}"
    );
}

/// The GPU allocates the cache for `ctx` positions (a sixteenth of the built-in model's 512 here,
/// every layer's keys and values), computes the logits an uncapped decoder computes, bit for bit,
/// and refuses past `ctx`.
#[test]
fn the_gpu_allocates_ctx_positions_and_computes_the_same() {
    let m = Model::builtin();
    let gpu = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe)");
    let mut full = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
    let mut small = GpuDecoder::new(&gpu, &m, ctx(32)).unwrap();
    let (a, b) = (full.memory().kv_cache, small.memory().kv_cache);
    assert_eq!(a, b * (m.config.seq_len as u64 / 32), "{a} vs {b} bytes");
    assert_eq!(forced(&mut small, 32), forced(&mut full, 32));
    assert!(block_on(small.step(1, 32)).is_err());
}

/// A run's decoders hold `Params::ctx` positions: 4096 by default (llama.cpp's default context)
/// where the model declares more, so the memory scenario's GPU cache for a model of 8192 positions
/// is half what the whole context takes; the model's own where it is shorter.
#[test]
fn a_run_holds_its_context_not_the_models_whole() {
    use nibble_engine::scenario::{self, DEFAULT_CTX};
    let mut m = Model::builtin();
    assert_eq!(
        scenario::default_params(&m, vec![vec![1, 2]], 1).ctx,
        Some(m.config.seq_len)
    );
    m.config.seq_len = 2 * DEFAULT_CTX;
    let mut p = scenario::default_params(&m, vec![vec![1, 5, 9, 12]], 1);
    p.latency_configs = vec!["weights=q4_0".into()];
    assert_eq!(p.ctx, Some(DEFAULT_CTX));
    let gpu = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe)");
    let kv_cache = |p: &scenario::Params| {
        let backend = nibble_engine::Backend::Gpu(&gpu);
        let rows = block_on(scenario::memory(&m, backend, p, |_| {})).unwrap();
        rows[0].gpu.as_ref().unwrap().kv_cache
    };
    let held = kv_cache(&p);
    p.ctx = None;
    assert_eq!(kv_cache(&p), 2 * held);
}
