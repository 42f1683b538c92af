//! Gemma 3 and Gemma 2 as llama.cpp's converter writes them (norms stored as 1 + w, sliding-window
//! layers; Gemma 3's own local RoPE base and linear scaling of the global layers, Gemma 2's
//! soft-capped scores and logits) against Hugging Face transformers' logits on the same weights
//! (`testdata/gemma3-tiny.*`, `testdata/gemma2-tiny.*`, written by `scripts/gemma-tiny.py`), then
//! every backend against the oracle, and the files written back.

mod common;

use common::tiny::{self, fixture, prompt};
use nibble_engine::config::{Arch, Swa};
use nibble_engine::kv::KvConfig;

/// The oracle runs the file as transformers runs the model in float32: the embedding scaled by
/// sqrt(64) = 8, Q/K head norms, NeoX RoPE at base 1e6 / 8 on the global layers and 1e4 on the
/// local ones, which attend the last 8 positions of the 32-token prompt, post-attention and
/// post-feed-forward norms, GELU (tanh) gating, a tied classifier. Tolerance: the harness's f32
/// rule (`tiny::oracle_matches_transformers`), L 4, n 128.
#[test]
fn the_oracle_matches_transformers_on_gemma3() {
    let (m, r) = fixture("gemma3-tiny");
    let c = &m.config;
    assert_eq!(c.arch, Arch::Gemma3);
    let swa = Swa {
        window: 8,
        period: 2,
        rope_theta: 10000.0,
    };
    assert_eq!((c.swa, c.rope_scale, c.head_size()), (Some(swa), 8.0, 32));
    assert!(m.tied());
    tiny::oracle_matches_transformers("gemma3-tiny", &m, &r);
}

/// Gemma 3 adds kernels (the embedding's scale, GELU gating) and binds the attention and RoPE
/// kernels to the local layers' own steps and table; the GPU runs them as the oracle does, step
/// by step (split attention over a window) and in a prompt batch.
#[test]
fn every_backend_runs_gemma3_as_the_oracle_does() {
    let (m, r) = fixture("gemma3-tiny");
    tiny::every_backend_matches_the_oracle("gemma3-tiny", &m, prompt(&r));
}

/// nibble writes the keys llama.cpp reads for the windows, their period and base, and the
/// scaling; read back, the model computes the same logits bit for bit.
#[test]
fn a_written_gemma3_reads_back_the_same() {
    let (m, r) = fixture("gemma3-tiny");
    let bytes = tiny::written_reads_back_the_same(&m, &prompt(&r));
    let g = nibble_engine::gguf::Gguf::parse(&bytes, "written.gguf").unwrap();
    for key in [
        "gemma3.attention.sliding_window",
        "gemma3.attention.sliding_window_pattern",
        "gemma3.rope.freq_base_swa",
        "gemma3.rope.scaling.factor",
    ] {
        assert!(g.get(key).is_some(), "{key} written");
    }
}

/// A KV window ring on a model whose layers already attend windows is refused, by every backend's
/// check, with the reason.
#[test]
fn a_kv_window_on_gemma3_is_refused_with_the_reason() {
    let (m, _) = fixture("gemma3-tiny");
    let kv = KvConfig {
        window: Some(16),
        ..Default::default()
    };
    let e = kv.validate(&m.config).unwrap_err().to_string();
    assert!(
        e.contains("--window 16") && e.contains("sliding windows of 8"),
        "{e}"
    );
    assert!(nibble_engine::cpu::CpuDecoder::with_kv(&m, kv).is_err());
}

/// Gemma 2: no Q/K norms, every other layer local at the global base, scores soft-capped at 2
/// and logits at 5 (the fixture's caps, so that tanh bends them). Tolerance as Gemma 3's.
#[test]
fn the_oracle_matches_transformers_on_gemma2() {
    let (m, r) = fixture("gemma2-tiny");
    let c = &m.config;
    assert_eq!(c.arch, Arch::Gemma2);
    let swa = Swa {
        window: 8,
        period: 2,
        rope_theta: 10000.0,
    };
    assert_eq!(c.swa, Some(swa));
    assert_eq!((c.attn_softcap, c.final_softcap), (Some(2.0), Some(5.0)));
    assert!(!c.qk_norm());
    tiny::oracle_matches_transformers("gemma2-tiny", &m, &r);
}

/// The GPU caps scores in every attention kernel it chooses (the prompt's tiled kernel, which
/// does not, is left for the row kernel) and caps the logits.
#[test]
fn every_backend_runs_gemma2_as_the_oracle_does() {
    let (m, r) = fixture("gemma2-tiny");
    tiny::every_backend_matches_the_oracle("gemma2-tiny", &m, prompt(&r));
}

#[test]
fn a_written_gemma2_reads_back_the_same() {
    let (m, r) = fixture("gemma2-tiny");
    let bytes = tiny::written_reads_back_the_same(&m, &prompt(&r));
    let g = nibble_engine::gguf::Gguf::parse(&bytes, "written.gguf").unwrap();
    for key in [
        "gemma2.attn_logit_softcapping",
        "gemma2.final_logit_softcapping",
    ] {
        assert!(g.get(key).is_some(), "{key} written");
    }
}

/// Soft-capping in the decode kernel's path over quantized caches too (q8_0 keys and values): the
/// GPU against the oracle with the same cache, by the harness's f32 rule.
#[test]
fn gemma2_caps_scores_over_quantized_caches_on_the_gpu() {
    use nibble_engine::cpu::CpuDecoder;
    use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
    use nibble_engine::kv::KvType;
    use nibble_engine::measure::{self, Reference};
    use nibble_engine::scenario::Tolerance;
    let (m, r) = fixture("gemma2-tiny");
    let seqs = vec![prompt(&r)];
    let kv = KvConfig {
        k: KvType::Q8_0,
        v: KvType::Q8_0,
        ..Default::default()
    };
    let mut cpu = CpuDecoder::with_kv(&m, kv.clone()).unwrap();
    let reference = nibble_engine::block_on(Reference::run(&mut cpu, &seqs)).unwrap();
    let gpu = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe)");
    let mut g = GpuDecoder::new(&gpu, &m, kv).unwrap();
    let d = nibble_engine::block_on(measure::compare(&reference, &mut g, &seqs)).unwrap();
    let tol = Tolerance::for_backend("gpu", None, &m.config, reference.max_abs_logit());
    eprintln!(
        "gemma2-tiny q8_0 KV gpu: max |dlogit| {:.2e} (bound {:.2e})",
        d.max_abs_dlogit, tol.max_abs_dlogit
    );
    if let Err(e) = tol.check(&d) {
        panic!("{e} ({})", tol.why);
    }
}

/// Local layers keep a ring of their window and a pass's rows less one (`layout::local_slots`), not
/// every position: passes of 3 rows take 10 slots for the fixtures' windows of 8, 1 row 8, and the
/// 32-token prompt goes round them three or four times, over f32 and q8_0 caches. Every position's
/// logits stay within the f32 rule of the oracle's (with the same cache), the cache is the global
/// layers' context and the local layers' slots, the bytes held count a full ring at most, and such
/// a decoder does not claim to rewind. kivi4 keys keep every position.
#[test]
fn local_layers_keep_a_ring_of_their_window() {
    use nibble_engine::cpu::CpuDecoder;
    use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
    use nibble_engine::kv::KvType;
    use nibble_engine::measure::{self, Reference};
    use nibble_engine::scenario::Tolerance;
    use nibble_engine::{block_on, Decoder};
    for name in ["gemma3-tiny", "gemma2-tiny"] {
        let (m, r) = fixture(name);
        let c = &m.config;
        let seqs = vec![prompt(&r)];
        // f32 and q8_0 caches, whose values the oracle's match (an f16 cache's rounding of the
        // GPU's K and V can fall the other way of the oracle's, ring or not).
        for (rows, t) in [(3, KvType::F32), (1, KvType::Q8_0), (3, KvType::Q8_0)] {
            let kv = KvConfig {
                k: t,
                v: t,
                ..Default::default()
            };
            let gpu = Gpu::open_blocking(GpuOptions {
                act: Some(Activations::F32),
                prefill_rows: Some(rows),
                ..Default::default()
            })
            .expect("a WebGPU adapter (lavapipe)");
            let mut g = GpuDecoder::new(&gpu, &m, kv.clone()).unwrap();
            let what = format!("{name}, passes of {rows}, {t:?} cache");
            let slots = c.swa.unwrap().window + rows - 1;
            let local = (0..c.n_layers).filter(|&l| c.is_local(l)).count();
            let per_slot = kv.bytes_after(c, 1) / c.n_layers;
            let cap = kv.capacity(c);
            assert!(slots * 3 < seqs[0].len() && slots < cap, "{what}");
            let want = per_slot * ((c.n_layers - local) * cap + local * slots);
            assert_eq!(g.memory().kv_cache, want as u64, "{what}");
            assert!(!g.rewinds(), "{what}");
            let mut cpu = CpuDecoder::with_kv(&m, kv.clone()).unwrap();
            let reference = block_on(Reference::run(&mut cpu, &seqs)).unwrap();
            let d = block_on(measure::compare(&reference, &mut g, &seqs)).unwrap();
            let tol = Tolerance::for_backend("gpu", None, c, reference.max_abs_logit());
            eprintln!("{what}: max |dlogit| {:.2e}", d.max_abs_dlogit);
            if let Err(e) = tol.check(&d) {
                panic!("{what}: {e} ({})", tol.why);
            }
            // The whole prompt held again, from position 0.
            let n = seqs[0].len();
            block_on(g.prefill(&seqs[0], 0)).unwrap();
            let held = per_slot * ((c.n_layers - local) * n + local * slots);
            assert_eq!(g.kv_bytes(), held, "{what}");
        }
        // kivi4 keys keep every position (their groups have a ring of their own): the same
        // allocation in passes of 3 rows as in whole-prompt passes, which no ring could take.
        let kv = KvConfig {
            k: KvType::Kivi4,
            v: KvType::Q8_0,
            ..Default::default()
        };
        let alloc = |rows| {
            let gpu = Gpu::open_blocking(GpuOptions {
                prefill_rows: Some(rows),
                ..Default::default()
            })
            .unwrap();
            let g = GpuDecoder::new(&gpu, &m, kv.clone()).unwrap();
            g.memory().kv_cache
        };
        assert_eq!(alloc(3), alloc(512), "{name}, kivi4 keys");
    }
}

/// What the harness runs on a model with local layers: the sweep's grid leaves its KV-window row
/// out (every row one the model takes), and the context scenario measures its KV types and says
/// why it made no window run instead of failing the run.
#[test]
fn the_harness_runs_gemma_without_kv_windows_and_says_why() {
    use nibble_engine::measure::{self, Reference};
    use nibble_engine::scenario;
    let (m, r) = fixture("gemma3-tiny");
    let grid = measure::default_grid(16, &m.config);
    assert!(grid.iter().all(|g| g.kv.validate(&m.config).is_ok()));
    let llama = nibble_engine::Model::builtin();
    let full = measure::default_grid(16, &llama.config);
    assert_eq!(full.len(), grid.len() + 1);
    assert!(full.iter().any(|g| g.kv.window.is_some()));
    let seqs = vec![prompt(&r)];
    let reference = nibble_engine::block_on(Reference::run(
        &mut nibble_engine::cpu::CpuDecoder::new(&m),
        &seqs,
    ))
    .unwrap();
    let p = scenario::default_params(&m, seqs, 1);
    let ctx = scenario::context(&m, nibble_engine::Backend::Cpu, &p, &reference, |_| {});
    let ctx = nibble_engine::block_on(ctx).unwrap();
    assert_eq!(ctx.rows.len(), p.kv_types.len());
    assert!(ctx.window.is_none());
    let why = ctx.window_not_run.unwrap();
    assert!(why.contains("sliding windows of 8 positions"), "{why}");
}

/// What a file leaves out is filled in as llama.cpp does: Gemma 2's window 4096, period 2 and
/// caps 50 and 30; Gemma 3's period 6 and local base 10000; and each generation's 27B (62 and 46
/// layers) scales scores by 1 / sqrt(dim / n_heads), here 1/4 where the head size (32) would give
/// 1 / sqrt(32), as the square of the factor on RoPE's cos and sin over sqrt(head size).
#[test]
fn missing_gemma_keys_take_llama_cpp_defaults() {
    use nibble_engine::dtype::GgmlType;
    use nibble_engine::gguf::{self, Gguf, TensorOut, Value};
    let file = |arch: &str, layers: u32, extra: &[(String, Value)]| {
        let u = |k: &str, v: u32| (format!("{arch}.{k}"), Value::U32(v));
        let mut md = vec![
            (
                "general.architecture".to_string(),
                Value::String(arch.into()),
            ),
            u("context_length", 256),
            u("embedding_length", 64),
            u("block_count", layers),
            u("feed_forward_length", 128),
            u("attention.head_count", 4),
            u("attention.head_count_kv", 2),
            u("attention.key_length", 32),
            u("attention.value_length", 32),
            u("vocab_size", 8),
        ];
        md.extend_from_slice(extra);
        let data = vec![0u8; 64 * 8 * 4];
        let t = TensorOut {
            name: "token_embd.weight".into(),
            dims: vec![64, 8],
            ty: GgmlType::F32,
            data: &data,
        };
        gguf::write(&md, &[t]).unwrap()
    };
    let config_with = |arch: &str, layers: u32, extra: &[(String, Value)]| {
        let b = file(arch, layers, extra);
        let g = Gguf::parse(&b, "f.gguf").unwrap();
        (nibble_engine::arch::from_gguf(&g, "f.gguf")
            .unwrap()
            .read_config)(&g, "f.gguf")
        .unwrap()
    };
    let config = |arch: &str, layers: u32| config_with(arch, layers, &[]);
    let g2 = config("gemma2", 4);
    let swa = |window, period, rope_theta| {
        Some(Swa {
            window,
            period,
            rope_theta,
        })
    };
    assert_eq!(g2.swa, swa(4096, 2, 10000.0));
    assert_eq!(
        (g2.attn_softcap, g2.final_softcap),
        (Some(50.0), Some(30.0))
    );
    assert_eq!(g2.rope_attn_factor, 1.0);
    let g3 = config("gemma3", 4);
    assert_eq!(
        (g3.swa, g3.final_softcap, g3.rope_attn_factor),
        (None, None, 1.0)
    );
    // A window of 0 is none, a scaling factor of 0 is 1, as llama.cpp reads them.
    let zeros = [
        ("gemma3.attention.sliding_window".to_string(), Value::U32(0)),
        ("gemma3.rope.scaling.factor".to_string(), Value::F32(0.0)),
    ];
    let z = config_with("gemma3", 4, &zeros);
    assert_eq!((z.swa, z.rope_scale), (None, 1.0));
    // A per-layer pattern array that follows a period is that period; one that does not is
    // refused by its key.
    let flags = |f: &[bool]| {
        let v = f.iter().map(|&b| Value::Bool(b)).collect();
        let key = "gemma3.attention.sliding_window_pattern".to_string();
        let window = ("gemma3.attention.sliding_window".to_string(), Value::U32(8));
        vec![window, (key, Value::Array(gguf::ValueType::Bool, v))]
    };
    let p = config_with("gemma3", 4, &flags(&[true, false, true, false]));
    assert_eq!(p.swa.map(|s| s.period), Some(2));
    let b = file("gemma3", 4, &flags(&[true, false, false, true]));
    let g = Gguf::parse(&b, "f.gguf").unwrap();
    let e = (nibble_engine::arch::gemma3::FAMILY.read_config)(&g, "f.gguf").unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("f.gguf") && e.contains("sliding_window_pattern") && e.contains("not a period"),
        "{e}"
    );
    for (arch, layers) in [("gemma3", 62), ("gemma2", 46)] {
        let c = config(arch, layers);
        let scale = c.rope_attn_factor.powi(2) / (c.head_size() as f32).sqrt();
        assert!(
            (scale - 0.25).abs() < 1e-6,
            "{arch} {layers} layers: {scale}"
        );
    }
}

/// Gemma's GELU gate in the fused gate-and-up decode kernels (`glu_finish`'s `p.gelu`), which
/// run where the tiled kernels are chosen (forced here: lavapipe picks the row kernels, which fuse
/// nothing): against the oracle by the f32 rule on F16 and Q4_0 weights, two dispatches a layer
/// fewer than the row kernels' products and `geglu` apart (Q, K and V apart on both).
#[test]
fn gelu_gates_in_the_fused_kernel_on_the_gpu() {
    use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions, MatvecKernel};
    use nibble_engine::measure::{self, Reference, RunConfig};
    use nibble_engine::scenario::Tolerance;
    use nibble_engine::Decoder;
    let (base, r) = fixture("gemma3-tiny");
    let seqs = vec![prompt(&r)];
    let gpu = |matvec| {
        Gpu::open_blocking(GpuOptions {
            act: Some(Activations::F32),
            matvec: Some(matvec),
            fuse_qkv: Some(false),
            fold_norm: Some(false),
            ..Default::default()
        })
        .expect("a WebGPU adapter (lavapipe)")
    };
    let (tiled, row) = (gpu(MatvecKernel::Tiled), gpu(MatvecKernel::Row));
    for spec in ["weights=f16", "weights=q4_0"] {
        let (m, _) = measure::prepare(&base, &RunConfig::parse(spec).unwrap()).unwrap();
        let mut cpu = nibble_engine::cpu::CpuDecoder::new(&m);
        let reference = nibble_engine::block_on(Reference::run(&mut cpu, &seqs)).unwrap();
        let tol = Tolerance::for_backend("gpu", None, &m.config, reference.max_abs_logit());
        let mut dispatches = Vec::new();
        for (g, what) in [(&tiled, "tiled"), (&row, "row")] {
            let mut dec = GpuDecoder::new(g, &m, KvConfig::default()).unwrap();
            let d = nibble_engine::block_on(measure::compare(&reference, &mut dec, &seqs)).unwrap();
            eprintln!(
                "gemma3-tiny {spec} {what}: max |dlogit| {:.2e}",
                d.max_abs_dlogit
            );
            if let Err(e) = tol.check(&d) {
                panic!("{spec} {what}: {e} ({})", tol.why);
            }
            dispatches.push(dec.dispatches().unwrap());
        }
        assert_eq!(
            dispatches[0] + 2 * m.config.n_layers,
            dispatches[1],
            "{spec}"
        );
    }
}
