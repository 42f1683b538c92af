//! Decode attention's f16 path (`split_f16` in attention.wgsl) against the CPU oracle: f16 keys and
//! values with heads of 64, 128 and 256 (256: the positions past the first sixteen a thread loads up
//! front go through `weighted_f16`; stories260K's heads of 8 take the
//! general path, which `tests/gpu.rs` covers), grouped-query heads, past two 64-position splits, and
//! a window whose ring wraps across splits; one split writing the output without the combine (up to
//! 64 positions); and the prompt pass's tiled attention (`attention_staged`) over the
//! same heads.
//!
//! Tolerances as `tests/gpu_fused.rs` derives them: f32 activations 2e-4 (both sides read the same f16
//! cache rows, the order of sums differs), f16 activations 5e-3 (each activation rounded to f16).

mod common;
use common::*;
use nibble_engine::block_on;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
use nibble_engine::kv::{KvConfig, KvType};
use nibble_engine::model::Config;
use nibble_engine::{Decoder, Model};

fn f16_kv() -> KvConfig {
    KvConfig {
        k: KvType::F16,
        v: KvType::F16,
        ..KvConfig::default()
    }
}

/// `layers` layers 256 wide with `heads` query heads over `kv_heads` key/value heads.
fn model(heads: usize, kv_heads: usize, layers: usize) -> Model {
    model_of(heads, kv_heads, layers, 512)
}

fn model_of(heads: usize, kv_heads: usize, layers: usize, seq_len: usize) -> Model {
    let base = stories().config;
    Model::synthetic_config(
        Config {
            dim: 256,
            hidden_dim: 256,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv_heads,
            seq_len,
            ..base
        },
        5,
    )
}

#[test]
fn f16_decode_attention_matches_cpu_across_splits() {
    // 450 positions: seven whole splits and one of 2, so a thread's sixteen positions loaded up front,
    // the eight-position loop past them (heads of 256) and the combine's four splits a load (eight
    // splits, two slices of them with heads of 128) all run.
    let toks: Vec<u32> = (0..450).map(|i| 3 + (i * 53 % 400) as u32).collect();
    let f16 = f16_kv();
    let ring = KvConfig {
        window: Some(100),
        sinks: 4,
        ..f16.clone()
    };
    for (act, tol) in [(Activations::F32, 2e-4), (Activations::F16, 5e-3)] {
        let gpu = Gpu::open_blocking(GpuOptions {
            act: Some(act),
            ..Default::default()
        })
        .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
        for (heads, kv_heads) in [(1, 1), (2, 1), (4, 2)] {
            let m = model(heads, kv_heads, 1);
            assert!(m.config.head_size().is_multiple_of(64));
            for kv in [f16.clone(), ring.clone()] {
                let what = format!("{act:?}, {heads} heads of {}, {}", 256 / heads, kv.label());
                let mut cpu = CpuDecoder::with_kv(&m, kv.clone()).unwrap();
                let window = kv.window;
                let mut g = GpuDecoder::new(&gpu, &m, kv).unwrap();
                let mut counts = Vec::new();
                for (p, &t) in toks.iter().enumerate() {
                    let a = block_on(cpu.step(t, p)).unwrap().to_vec();
                    let b = block_on(g.step(t, p)).unwrap();
                    compare(&a, b, tol, &format!("{what} pos {p}"));
                    counts.push(g.dispatches().unwrap());
                }
                // Up to 64 positions one split writes the output: the combine's dispatch (one a
                // layer) comes only past them. The window (100 + 4 sinks) keeps two splits.
                assert_eq!(counts[63], counts[0], "{what}");
                assert_eq!(counts[64], counts[0] + 1, "{what}");
                assert_eq!(counts[449], counts[64], "{what} (window {window:?})");
            }
        }
    }
}

/// The prompt pass in passes of 64 rows (so later passes start past position 0 and the last is a
/// partial tile: 150 = 64 + 64 + 22 rows, in tiles of 8) against the oracle fed token by token; the
/// first pass's 64 positions are two chunks of 32.
/// Two layers, so every row's attention reaches the last row's logits through the second layer's
/// keys and values; decoding then goes on from the cache. A window takes the per-row kernel (also
/// checked here).
#[test]
fn tiled_prompt_attention_matches_cpu() {
    let prompt: Vec<u32> = (0..150).map(|i| 3 + (i * 53 % 400) as u32).collect();
    let ring = KvConfig {
        window: Some(100),
        sinks: 4,
        ..f16_kv()
    };
    let runs = [(Activations::F32, 2e-4), (Activations::F16, 5e-3)];
    for (act, tol) in runs {
        let gpu = Gpu::open_blocking(GpuOptions {
            act: Some(act),
            prefill_rows: Some(64),
            ..Default::default()
        })
        .unwrap();
        for (heads, kv_heads) in [(2, 1), (4, 2)] {
            let m = model(heads, kv_heads, 2);
            for kv in [f16_kv(), ring.clone()] {
                let hs = 256 / heads;
                let what = format!("{act:?}, {heads} heads of {hs}, {}", kv.label());
                let mut cpu = CpuDecoder::with_kv(&m, kv.clone()).unwrap();
                let mut want = Vec::new();
                for (p, &t) in prompt.iter().enumerate() {
                    want = block_on(cpu.step(t, p)).unwrap().to_vec();
                }
                let mut g = GpuDecoder::new(&gpu, &m, kv).unwrap();
                let got = block_on(g.prefill(&prompt, 0)).unwrap().to_vec();
                compare(&want, &got, tol, &format!("{what}: prompt pass"));
                let n = prompt.len();
                let a = block_on(cpu.step(7, n)).unwrap().to_vec();
                let b = block_on(g.step(7, n)).unwrap();
                compare(&a, b, tol, &format!("{what}: decode after it"));
            }
        }
    }
}

/// Past 64 splits (4096 positions) the combine takes its splits a chunk of 64 at a time with a running
/// maximum: a decode step at position 4169 (66 splits) after a prompt pass, against the oracle.
#[test]
fn the_combine_rescales_across_chunks_of_splits() {
    let n = 4169;
    let prompt: Vec<u32> = (0..n).map(|i| 3 + (i * 53 % 400) as u32).collect();
    let m = model_of(2, 1, 1, 4200);
    let gpu = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .unwrap();
    let mut cpu = CpuDecoder::with_kv(&m, f16_kv()).unwrap();
    block_on(cpu.prefill(&prompt, 0)).unwrap();
    let mut g = GpuDecoder::new(&gpu, &m, f16_kv()).unwrap();
    block_on(g.prefill(&prompt, 0)).unwrap();
    let a = block_on(cpu.step(7, n as usize)).unwrap().to_vec();
    let b = block_on(g.step(7, n as usize)).unwrap();
    compare(&a, b, 2e-4, "decode at position 4169");
}
