//! Forced decoding on the GPU (`Decoder::score`: passes queued, logits read back in batches) against
//! the same steps read back one by one, on lavapipe. Both run the same kernels on the same inputs, so
//! the logits must agree bit for bit: past a readback batch, through a sliding window's wrap, with
//! kivi4 keys, and in a sequence that starts again after a reset.

mod common;
use common::*;
use nibble_engine::block_on;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions, SCORE_BATCH};
use nibble_engine::kv::{KvConfig, KvType};
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::{Decoder, Model};

/// The built-in model's 259 logits in f16 are 518 bytes: rows that start and end off a word, which
/// copies must round (wgpu moves whole words). Scoring and a batched prefill's last row, at f16 and
/// f32, on rows of both parities.
#[test]
fn logits_rows_off_a_word_read_back_whole() {
    let builtin = Model::builtin();
    assert_eq!(builtin.config.vocab_size % 2, 1, "an odd vocabulary");
    let toks: Vec<u32> = (0..SCORE_BATCH + 5)
        .map(|i| 3 + (i * 41 % 250) as u32)
        .collect();
    for act in [Activations::F16, Activations::F32] {
        let gpu = Gpu::open_blocking(GpuOptions {
            act: Some(act),
            ..Default::default()
        })
        .expect("lavapipe has shader-f16");
        let mut d = GpuDecoder::new(&gpu, &builtin, KvConfig::default()).unwrap();
        let mut want = Vec::new();
        for (p, &t) in toks.iter().enumerate() {
            want.push(block_on(d.step(t, p)).unwrap().to_vec());
        }
        d.reset();
        let got = block_on(d.score(&toks, 0)).unwrap();
        assert!(got == want.concat(), "{act:?}: scored rows differ");
        // A prefill of n rows reads row n - 1: at f16, 518 (n - 1) bytes in.
        for n in [2, 3, 4, 5] {
            d.reset();
            let last = block_on(d.prefill(&toks[..n], 0)).unwrap().to_vec();
            let w = &want[n - 1];
            let worst = w
                .iter()
                .zip(&last)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // The batched kernels sum in another order; 5e-3 is tests/gpu.rs's f16 tolerance.
            assert!(
                worst <= 5e-3 * (1.0 + w.iter().fold(0f32, |m, v| m.max(v.abs()))),
                "{act:?} n {n}: {worst}"
            );
        }
    }
}

#[test]
fn queued_scoring_gives_the_step_by_step_logits() {
    let gpu = Gpu::open_blocking(GpuOptions::default())
        .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let stories = stories();
    let tok = stories.tokenizer.as_ref().unwrap();
    let n = 2 * SCORE_BATCH + 7;
    let seq =
        &nibble_engine::eval::story_tokens(tok, &text("tinystories_sample.txt"), n).unwrap()[0];
    assert!(seq.len() > 2 * SCORE_BATCH, "{} tokens", seq.len());
    let (m, _) = measure::prepare(&stories, &RunConfig::parse("weights=q4_0").unwrap()).unwrap();
    let v = m.config.vocab_size;
    for kv in [
        KvConfig::default(),
        KvConfig {
            k: KvType::Kivi4,
            v: KvType::Q4_0,
            window: Some(40),
            sinks: 4,
            ..KvConfig::default()
        },
    ] {
        let mut d = GpuDecoder::new(&gpu, &m, kv.clone()).unwrap();
        let mut want = Vec::new();
        for (p, &t) in seq.iter().enumerate() {
            want.extend_from_slice(block_on(d.step(t, p)).unwrap());
        }
        d.reset();
        // In two calls, the second starting mid-sequence, as forced decoding chunks a long text.
        let k = SCORE_BATCH + 3;
        let mut got = block_on(d.score(&seq[..k], 0)).unwrap();
        got.extend(block_on(d.score(&seq[k..], k)).unwrap());
        assert_eq!(got.len(), seq.len() * v);
        for (p, (a, b)) in want.chunks(v).zip(got.chunks(v)).enumerate() {
            assert!(a == b, "kv {}: position {p} differs", kv.label());
        }
        println!("kv {}: {} positions identical", kv.label(), seq.len());
    }
}

/// A benchmark's decode repetitions (`bench::decode_at`) run the same positions again after later
/// ones where a decoder says it may (`Decoder::rewinds`): there, decoding after a rewind must give
/// exactly what decoding after a fresh prefill gives, on every backend. A window ring or kivi4 groups
/// may not rewind.
#[test]
fn a_rewound_decoder_decodes_as_after_a_fresh_prefill() {
    use nibble_engine::cpu::CpuDecoder;
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
