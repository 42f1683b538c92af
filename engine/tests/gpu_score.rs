//! Scoring on the GPU (`Decoder::score`: prompt passes whose every row's logits are copied out and
//! read back in batches), on lavapipe.
//!
//! Tolerances: passes of one row run the decode kernels, so they must give the step-by-step logits
//! bit for bit. Batched passes run the matrix-matrix kernel and batched attention, which sum in
//! another order: against the CPU oracle they carry tests/gpu.rs's tolerances (derived there): 2e-4
//! x (1 + max |logit|) with f32 activations, 5e-3 with f16.

mod common;
use common::*;
use nibble_engine::block_on;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions, SCORE_BATCH};
use nibble_engine::kv::{KvConfig, KvType};
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::{Decoder, Model};

fn open(act: Activations, prefill_rows: usize) -> Gpu {
    Gpu::open_blocking(GpuOptions {
        act: Some(act),
        prefill_rows: Some(prefill_rows),
        ..Default::default()
    })
    .expect("a WebGPU adapter with shader-f16 (lavapipe: apt-get install mesa-vulkan-drivers)")
}

fn worst(a: &[f32], b: &[f32]) -> (f32, f32) {
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (d, a.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// Rows that start off a word: the built-in model's 259 logits in f16 are 518 bytes.
#[test]
fn single_row_scoring_gives_the_step_by_step_logits() {
    let stories = stories();
    let tok = stories.tokenizer.as_ref().unwrap();
    let n = 2 * SCORE_BATCH + 7;
    let seq =
        &nibble_engine::eval::story_tokens(tok, &text("tinystories_sample.txt"), n).unwrap()[0];
    assert!(seq.len() > 2 * SCORE_BATCH, "{} tokens", seq.len());
    let (q4, _) = measure::prepare(&stories, &RunConfig::parse("weights=q4_0").unwrap()).unwrap();
    let builtin = Model::builtin();
    assert_eq!(builtin.config.vocab_size % 2, 1, "an odd vocabulary");
    let bt: Vec<u32> = (0..SCORE_BATCH + 5)
        .map(|i| 3 + (i * 41 % 250) as u32)
        .collect();
    let windowed = KvConfig {
        k: KvType::Kivi4,
        v: KvType::Q4_0,
        window: Some(40),
        sinks: 4,
        ..KvConfig::default()
    };
    for act in [Activations::F16, Activations::F32] {
        let gpu = open(act, 1);
        for (m, toks, kv) in [
            (&q4, seq.as_slice(), KvConfig::default()),
            (&q4, seq.as_slice(), windowed.clone()),
            (&builtin, bt.as_slice(), KvConfig::default()),
        ] {
            let v = m.config.vocab_size;
            let mut d = GpuDecoder::new(&gpu, m, kv.clone()).unwrap();
            let mut want = Vec::new();
            for (p, &t) in toks.iter().enumerate() {
                want.extend_from_slice(block_on(d.step(t, p)).unwrap());
            }
            d.reset();
            // In two calls, the second mid-sequence, as forced decoding chunks a long text.
            let k = SCORE_BATCH + 3;
            let mut got = block_on(d.score(&toks[..k], 0)).unwrap();
            got.extend(block_on(d.score(&toks[k..], k)).unwrap());
            assert_eq!(got.len(), toks.len() * v);
            for (p, (a, b)) in want.chunks(v).zip(got.chunks(v)).enumerate() {
                assert!(
                    a == b,
                    "{act:?} vocab {v} kv {}: position {p} differs",
                    kv.label()
                );
            }
        }
    }
}

/// Batched scoring (passes of up to 64 rows, several per readback) against the oracle stepping.
#[test]
fn batched_scoring_matches_the_oracle() {
    let stories = stories();
    let tok = stories.tokenizer.as_ref().unwrap();
    let st =
        &nibble_engine::eval::story_tokens(tok, &text("tinystories_sample.txt"), 150).unwrap()[0];
    let (q4, _) = measure::prepare(&stories, &RunConfig::parse("weights=q4_0").unwrap()).unwrap();
    let builtin = Model::builtin();
    let bt: Vec<u32> = (0..90).map(|i| 3 + (i * 29 % 250) as u32).collect();
    for (act, tol) in [(Activations::F32, 2e-4), (Activations::F16, 5e-3)] {
        let gpu = open(act, 64);
        for (m, toks) in [(&q4, st.as_slice()), (&builtin, bt.as_slice())] {
            let v = m.config.vocab_size;
            let mut cpu = CpuDecoder::new(m);
            let mut g = GpuDecoder::new(&gpu, m, KvConfig::default()).unwrap();
            assert!(g.prefill_method().starts_with("batched"));
            let got = block_on(g.score(toks, 0)).unwrap();
            assert_eq!(got.len(), toks.len() * v);
            for (p, (&t, row)) in toks.iter().zip(got.chunks(v)).enumerate() {
                let want = block_on(cpu.step(t, p)).unwrap();
                let (d, scale) = worst(want, row);
                assert!(
                    d <= tol * (1.0 + scale),
                    "{act:?} vocab {v} position {p}: {d}"
                );
            }
            // A prefill of n rows reads back row n - 1: at f16, 518 (n - 1) bytes in.
            for n in [2, 3, 4, 5] {
                g.reset();
                let last = block_on(g.prefill(&toks[..n], 0)).unwrap().to_vec();
                let (d, scale) = worst(&got[(n - 1) * v..n * v], &last);
                assert!(d <= tol * (1.0 + scale), "{act:?} prefill of {n}: {d}");
            }
        }
    }
}

/// A benchmark's decode repetitions (`bench::decode_at`) run the same positions again after later
/// ones where a decoder says it may (`Decoder::rewinds`): there, decoding after a rewind must give
/// exactly what decoding after a fresh prefill gives, on every backend. A window ring or kivi4 groups
/// may not rewind.
#[test]
fn a_rewound_decoder_decodes_as_after_a_fresh_prefill() {
    use nibble_engine::fast::{FastDecoder, FastOptions};
    let gpu = Gpu::open_blocking(GpuOptions::default())
        .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let stories = stories();
    let (m, _) = measure::prepare(&stories, &RunConfig::parse("weights=q4_0").unwrap()).unwrap();
    let ctx: Vec<u32> = (0..40).map(|i| 3 + (i * 37 % 500) as u32).collect();
    for kv in [
        KvConfig::default(),
        KvConfig {
            k: KvType::Q8_0,
            v: KvType::Q4_0,
            ..KvConfig::default()
        },
    ] {
        let fast = FastOptions {
            threads: 2,
            isa: nibble_engine::fast::dot::Isa::best(),
        };
        let decs: Vec<Box<dyn Decoder + '_>> = vec![
            Box::new(CpuDecoder::with_kv(&m, kv.clone()).unwrap()),
            Box::new(FastDecoder::new(&m, kv.clone(), fast).unwrap()),
            Box::new(GpuDecoder::new(&gpu, &m, kv.clone()).unwrap()),
        ];
        for mut d in decs {
            assert!(d.rewinds(), "{}", d.backend());
            let next = block_on(d.prefill_argmax(&ctx, 0)).unwrap();
            let fresh = block_on(d.decode_greedy(next, ctx.len(), 12)).unwrap();
            // Again from the same depth, twice: the cache past it holds the last run's positions.
            for _ in 0..2 {
                let again = block_on(d.decode_greedy(next, ctx.len(), 12)).unwrap();
                assert_eq!(again, fresh, "{} kv {}", d.backend(), kv.label());
            }
        }
    }
    for kv in [
        KvConfig {
            window: Some(32),
            ..KvConfig::default()
        },
        KvConfig {
            k: KvType::Kivi4,
            ..KvConfig::default()
        },
    ] {
        assert!(!kv.rewinds(), "{}", kv.label());
        let d = GpuDecoder::new(&gpu, &m, kv.clone()).unwrap();
        assert!(!d.rewinds(), "{}", kv.label());
    }
}
