//! The WebGPU backend against the CPU oracle, on lavapipe in CI (mesa-vulkan-drivers).
//!
//! Tolerance, f32 activations: both sides compute in f32 and read the same quantized weights, so the only
//! differences are summation order (GPU reductions are tree-shaped, the CPU's are sequential in chunks of 8)
//! and the softmax normalisation (GPU divides once at the end). A dot product of length n carries a
//! relative error of order sqrt(n) * 2^-24 in either order (n <= 512 here: ~1e-6), compounded over a handful
//! of layers and the classifier; measured worst cases are ~6e-5 on logits of magnitude ~10. The test allows
//! max |Δlogit| <= 2e-4 * (1 + max |logit|), about 3x the measured worst case, and requires 100% top-1
//! agreement.

mod common;
use common::*;
use nibble_engine::block_on;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::eval;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
use nibble_engine::kv::KvConfig;
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::model::TensorId;
use nibble_engine::{Decoder, Model};

/// Every weight type, and a block size other than 32. K-quants need rows of whole 256-element
/// super-blocks: the built-in model has them (stories260K's rows fall back to f16).
const WEIGHT_SPECS: [&str; 9] = [
    "weights=f32",
    "weights=f16",
    "weights=q8_0",
    "weights=q4_0",
    "weights=q4_1",
    "weights=q4_0,block=64",
    "weights=q4_k",
    "weights=q5_k",
    "weights=q6_k",
];

/// The GPU with f32 activations (the tight comparisons); f16 activations have their own test.
/// Prompt passes of 64 rows, so the tests' prompts take several.
fn gpu() -> Gpu {
    Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        prefill_rows: Some(64),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
}

fn check(gpu: &Gpu, m: &Model, kv: KvConfig, tokens: &[u32], what: &str) -> f32 {
    check_tol(gpu, m, kv, tokens, what, 2e-4)
}

fn check_tol(gpu: &Gpu, m: &Model, kv: KvConfig, tokens: &[u32], what: &str, tol: f32) -> f32 {
    let mut cpu = CpuDecoder::with_kv(m, kv.clone()).unwrap();
    let mut g = GpuDecoder::new(gpu, m, kv).unwrap();
    let mut worst = 0.0f32;
    for (p, &t) in tokens.iter().enumerate() {
        let a = block_on(cpu.step(t, p)).unwrap().to_vec();
        let b = block_on(g.step(t, p)).unwrap();
        worst = worst.max(compare(&a, b, tol, &format!("{what} pos {p}")));
    }
    println!(
        "{what}: {} positions, max |Δlogit| {worst:.3e}",
        tokens.len()
    );
    worst
}

#[test]
fn gpu_matches_cpu_for_every_weight_type() {
    let gpu = gpu();
    println!("adapter: {:?}", gpu.report);
    let stories = stories();
    let tok = stories.tokenizer.as_ref().unwrap();
    let text = text("tinystories_sample.txt");
    let st = &eval::story_tokens(tok, &text, 128).unwrap()[0];
    let builtin = Model::builtin();
    let bt = &eval::story_tokens(
        builtin.tokenizer.as_ref().unwrap(),
        include_str!("../../harness/assets/sample.txt"),
        64,
    )
    .unwrap()[0];
    for spec in WEIGHT_SPECS.iter().chain(&["precision=attn-q8"]) {
        let cfg = RunConfig::parse(spec).unwrap();
        let (m, _) = measure::prepare(&stories, &cfg).unwrap();
        check(
            &gpu,
            &m,
            KvConfig::default(),
            st,
            &format!("stories260K {spec}"),
        );
        let (m, _) = measure::prepare(&builtin, &cfg).unwrap();
        check(
            &gpu,
            &m,
            KvConfig::default(),
            bt,
            &format!("builtin {spec}"),
        );
    }
}

/// Every decode matvec kernel, whatever the adapter would choose (lavapipe picks the row kernel, GPUs
/// the tiled one), with the tolerance derived above. `Tiled` takes 128-bit loads (matvec4.wgsl) for
/// every supported block (32 to 256), q4 rows with lanes on quarters of blocks; `TiledBlocks` its
/// q4 kernel with a whole block per lane;
/// `Tiled32` forces the 32-bit kernel it falls back on.
#[test]
fn every_matvec_kernel_matches_cpu() {
    use nibble_engine::gpu::MatvecKernel;
    let gpu = gpu();
    let stories = stories();
    let toks: Vec<u32> = (0..24).map(|i| 3 + (i * 37 % 500) as u32).collect();
    for k in [
        MatvecKernel::Tiled,
        MatvecKernel::TiledBlocks,
        MatvecKernel::Tiled32,
        MatvecKernel::Row,
    ] {
        gpu.set_matvec_kernel(k);
        for spec in [
            "weights=f32",
            "weights=f16",
            "weights=q8_0",
            "weights=q4_0",
            "weights=q4_0,block=64",
            "weights=q4_1",
        ] {
            let (m, _) = measure::prepare(&stories, &RunConfig::parse(spec).unwrap()).unwrap();
            check(
                &gpu,
                &m,
                KvConfig::default(),
                &toks,
                &format!("{k:?} {spec}"),
            );
        }
        // The built-in model's 259-row classifier: a last workgroup with rows to spare; and the
        // K-quant kernels, which need its 256-wide rows.
        let builtin = Model::builtin();
        let bt: Vec<u32> = (0..12).map(|i| 3 + (i * 41 % 250) as u32).collect();
        // A 1536-wide feed-forward: rows of 6 super-blocks reach the K kernels' two-super-block
        // loop (the built-in model's rows of 1 and 2 take only its tail); 512-wide rows reach the
        // fused gate/up kernel's two-block loop.
        let wide = Model::synthetic_config(
            nibble_engine::model::Config {
                dim: 512,
                hidden_dim: 1536,
                ..builtin.config.clone()
            },
            1,
        );
        for (base, name, ty) in [
            (&builtin, "builtin", "q4_0"),
            (&builtin, "builtin", "q4_k"),
            (&builtin, "builtin", "q5_k"),
            (&builtin, "builtin", "q6_k"),
            // Rows of 48 blocks reach matvec4_q4c's four-block loop and its tail.
            (&wide, "wide", "q4_0"),
            (&wide, "wide", "q4_1"),
            (&wide, "wide", "q4_k"),
            (&wide, "wide", "q5_k"),
            (&wide, "wide", "q6_k"),
        ] {
            let cfg = RunConfig::parse(&format!("weights={ty}")).unwrap();
            let (m, fallbacks) = measure::prepare(base, &cfg).unwrap();
            assert!(fallbacks.is_empty(), "{fallbacks:?}");
            check(
                &gpu,
                &m,
                KvConfig::default(),
                &bt,
                &format!("{k:?} {name} {ty}"),
            );
        }
    }
}

/// The GPU-resident greedy loop (each pass's argmax copied into the next pass's step on the GPU, ids
/// read back in batches) gives exactly the tokens of the step-by-step loop, which reads every answer
/// back before the next step: past a readback batch, through a sliding window's wrap, and with
/// kivi4 keys (whose group flushes depend on the position).
#[test]
fn gpu_resident_greedy_loop_gives_the_step_by_step_tokens() {
    use nibble_engine::gpu::GREEDY_BATCH;
    use nibble_engine::kv::KvType;
    let gpu = gpu();
    let m = Model::builtin();
    let n = GREEDY_BATCH + 9;
    let kvs = [
        KvConfig::default(),
        KvConfig {
            window: Some(32),
            sinks: 4,
            ..KvConfig::default()
        },
        KvConfig {
            k: KvType::Kivi4,
            ..KvConfig::default()
        },
    ];
    for kv in kvs {
        let mut a = GpuDecoder::new(&gpu, &m, kv.clone()).unwrap();
        let prompt = [1u32, 45, 7, 99];
        let first = block_on(a.prefill_argmax(&prompt, 0)).unwrap();
        let fast = block_on(a.decode_greedy(first, prompt.len(), n)).unwrap();
        let mut b = GpuDecoder::new(&gpu, &m, kv.clone()).unwrap();
        let mut t = block_on(b.prefill_argmax(&prompt, 0)).unwrap();
        let mut slow = Vec::new();
        for i in 0..n {
            t = block_on(b.step_argmax(t, prompt.len() + i)).unwrap();
            slow.push(t);
        }
        assert_eq!(fast, slow, "{kv:?}");
        // Not a loop stuck on one token: the check would pass trivially there.
        let distinct: std::collections::HashSet<_> = fast.iter().collect();
        assert!(distinct.len() > 3, "{kv:?}: {fast:?}");
    }
}

#[test]
fn gpu_sliding_window_and_greedy() {
    let gpu = gpu();
    let m = Model::builtin();
    let toks: Vec<u32> = (0..80).map(|i| 3 + (i * 17 % 250) as u32).collect();
    let kv = KvConfig {
        window: Some(32),
        sinks: 4,
        ..KvConfig::default()
    };
    check(&gpu, &m, kv, &toks, "builtin window=32 sinks=4");
    let mut g = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
    let mut c = CpuDecoder::new(&m);
    for (p, &t) in toks.iter().take(20).enumerate() {
        assert_eq!(
            block_on(g.step_argmax(t, p)).unwrap(),
            eval::argmax(block_on(c.step(t, p)).unwrap())
        );
    }
}

#[test]
fn gpu_perplexity_matches_cpu() {
    let gpu = gpu();
    let m = stories();
    // The first 192 tokens of each story keep lavapipe's run short.
    let seqs = eval::story_tokens(
        m.tokenizer.as_ref().unwrap(),
        &text("tinystories_sample.txt"),
        192,
    )
    .unwrap();
    let c = block_on(eval::perplexity(&mut CpuDecoder::new(&m), &seqs)).unwrap();
    let g = block_on(eval::perplexity(
        &mut GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap(),
        &seqs,
    ))
    .unwrap();
    println!("PPL cpu {} gpu {} ({})", c.ppl, g.ppl, g.backend);
    assert!((c.ppl - g.ppl).abs() / c.ppl < 1e-3);
}

#[test]
fn oversized_tensor_is_refused_before_upload() {
    // stories260K's rows are 64 f32 values (256 bytes): a 200-byte binding cannot hold one.
    let gpu = Gpu::open_blocking(GpuOptions {
        max_binding: Some(200),
        ..Default::default()
    })
    .unwrap();
    let m = stories();
    let e = GpuDecoder::new(&gpu, &m, KvConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("token_embd.weight") && e.contains("maxStorageBufferBindingSize of 200"),
        "{e}"
    );
}

/// A forced small binding limit splits every large matrix into row chunks; logits are bit-identical to
/// the unsplit upload, since each row is computed the same way whichever binding holds it.
#[test]
fn split_bindings_give_identical_logits() {
    let whole = gpu();
    let small = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        max_binding: Some(8 * 1024),
        ..Default::default()
    })
    .unwrap();
    let toks: Vec<u32> = (0..24).map(|i| 3 + (i * 37 % 250) as u32).collect();
    for (base, spec) in [
        (stories(), "weights=f32"),
        (stories(), "weights=q4_0"),
        (stories(), "weights=f16"),
        // Rows of whole super-blocks (212 bytes of Q6_K each).
        (Model::builtin(), "weights=q6_k"),
    ] {
        let (m, _) = measure::prepare(&base, &RunConfig::parse(spec).unwrap()).unwrap();
        let mut a = GpuDecoder::new(&whole, &m, KvConfig::default()).unwrap();
        let mut b = GpuDecoder::new(&small, &m, KvConfig::default()).unwrap();
        assert_eq!(a.bindings(TensorId::TokEmbd), 1);
        assert!(
            b.bindings(TensorId::TokEmbd) > 1,
            "{spec}: the embedding was not split"
        );
        for (p, &t) in toks.iter().enumerate() {
            let x = block_on(a.step(t, p)).unwrap().to_vec();
            let y = block_on(b.step(t, p)).unwrap();
            assert!(
                x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits()),
                "{spec} pos {p}"
            );
        }
    }
}

/// Quantized KV caches on the GPU against the same cache types on the CPU. Both quantize with the same
/// formulas, but WGSL's f32 division is not correctly rounded (2.5 ulp) and `pack2x16float` need not round
/// exactly like the CPU's f16 conversion, so an element on a rounding boundary can take the neighbouring
/// code (one quantization step, up to 1/15 of its block's range for 4-bit) on one side only. Measured worst
/// cases on lavapipe: 1e-2 (f16), 2e-3 (q8_0), 5e-3 (q4_0), 7e-2 (kivi4 values) on logits of magnitude
/// ~15-20. The tolerance is 1e-2 * (1 + max |logit|), with 100% top-1 agreement.
#[test]
fn gpu_kv_cache_types_match_cpu() {
    use nibble_engine::kv::KvType;
    let gpu = gpu();
    let stories = stories();
    let tok = stories.tokenizer.as_ref().unwrap();
    let st = &eval::story_tokens(tok, &text("tinystories_valid_head.txt"), 96).unwrap()[0];
    let builtin = Model::builtin();
    let bt: Vec<u32> = (0..48).map(|i| 3 + (i * 29 % 250) as u32).collect();
    for (k, v) in [
        (KvType::F16, KvType::F16),
        (KvType::Q8_0, KvType::Q8_0),
        (KvType::Q4_0, KvType::Q4_0),
        (KvType::F16, KvType::Kivi4),
        (KvType::Kivi4, KvType::Kivi4),
    ] {
        let kv = KvConfig {
            k,
            v,
            ..KvConfig::default()
        };
        let what = kv.label();
        check_tol(
            &gpu,
            &stories,
            kv.clone(),
            st,
            &format!("stories260K kv {what}"),
            1e-2,
        );
        check_tol(
            &gpu,
            &builtin,
            kv.clone(),
            &bt,
            &format!("builtin kv {what}"),
            1e-2,
        );
        let windowed = KvConfig {
            window: Some(24),
            sinks: 2,
            ..kv
        };
        check_tol(
            &gpu,
            &builtin,
            windowed,
            &bt,
            &format!("builtin kv {what} window"),
            1e-2,
        );
    }
}

/// Decode attention splits the context into workgroups of 64 positions and combines them
/// (flash-decoding): past 64, 128 and 256 positions the splits must rescale to one softmax. f32 keys and
/// values keep the f32 tolerance derived above (the rescaling adds one exp and one multiply per split);
/// quantized caches the 1e-2 of the KV test; a window of 200 with sinks wraps its ring across splits.
#[test]
fn decode_attention_across_context_splits_matches_cpu() {
    use nibble_engine::kv::KvType;
    let gpu = gpu();
    let stories = stories();
    let tok = stories.tokenizer.as_ref().unwrap();
    let st = &eval::story_tokens(tok, &text("tinystories_sample.txt"), 300).unwrap()[0];
    assert!(st.len() >= 290, "{} tokens", st.len());
    check(
        &gpu,
        &stories,
        KvConfig::default(),
        st,
        "stories260K 300 positions",
    );
    for (k, v, window) in [
        (KvType::Q8_0, KvType::Q4_0, None),
        (KvType::Kivi4, KvType::F16, None),
        (KvType::F16, KvType::F16, Some(200)),
    ] {
        let kv = KvConfig {
            k,
            v,
            window,
            sinks: if window.is_some() { 4 } else { 0 },
            ..KvConfig::default()
        };
        let what = format!("stories260K {} 300 positions", kv.label());
        check_tol(&gpu, &stories, kv, st, &what, 1e-2);
    }
}

/// wgpu's OpenGL backend (what `WGPU_BACKEND=gl` selects) runs the same kernels: here on Mesa's llvmpipe
/// through EGL.
#[test]
fn gl_backend_matches_cpu() {
    let gl = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        backends: Some(wgpu::Backends::GL),
        ..Default::default()
    })
    .expect("an OpenGL adapter (Mesa: apt-get install libegl1 libgl1-mesa-dri)");
    assert_eq!(gl.report.backend, "Gl");
    let base = stories();
    let tok = base.tokenizer.as_ref().unwrap();
    let st = &eval::story_tokens(tok, &text("tinystories_sample.txt"), 48).unwrap()[0];
    for spec in ["weights=f32", "weights=q4_0", "weights=q8_0,kv=q8_0"] {
        let cfg = RunConfig::parse(spec).unwrap();
        let (m, _) = measure::prepare(&base, &cfg).unwrap();
        let tol = if spec.contains("kv=") { 1e-2 } else { 2e-4 };
        check_tol(
            &gl,
            &m,
            cfg.kv.clone(),
            st,
            &format!("GL stories260K {spec}"),
            tol,
        );
    }
}

/// f16 activations (where the adapter has shader-f16; lavapipe does). Every activation is rounded to 11
/// significant bits (relative error up to 2^-11 ≈ 4.9e-4) at each of the ~15 buffer writes per layer,
/// while sums stay in f32, so logits drift by a few 1e-3 relative per layer: measured worst cases are
/// ~5e-2 on logits of magnitude ~15-20 over 5 layers. With f32 KV the tolerance is 5e-3 * (1 + max |logit|)
/// with top-1 agreement wherever the oracle's top-2 margin exceeds twice the measured error.
///
/// With a quantized KV cache a logit-by-logit comparison with the CPU stops being meaningful: the
/// f16-rounded keys and values land on a different code than the CPU's f32 ones for a few percent of
/// elements, each a whole quantization step (measured max |Δlogit| 0.44 for q8_0 KV against 0.03 with f32
/// KV). What must hold is the accuracy against the f32 oracle: the GPU's perplexity within 1% of the CPU's
/// for the same configuration, and top-1 agreement with the oracle within 3 points of the CPU's.
#[test]
fn f16_activations_match_cpu() {
    use nibble_engine::measure::Reference;
    let g = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F16),
        ..Default::default()
    })
    .expect("lavapipe has shader-f16");
    assert_eq!(g.activations, Activations::F16);
    assert!(g.report.shader_f16);
    let base = stories();
    let tok = base.tokenizer.as_ref().unwrap();
    let seqs = eval::story_tokens(tok, &text("tinystories_sample.txt"), 64).unwrap();
    let st = &seqs[0];
    for spec in ["weights=f32", "weights=q4_0", "weights=q8_0", "kv=f16"] {
        let cfg = RunConfig::parse(spec).unwrap();
        let (m, _) = measure::prepare(&base, &cfg).unwrap();
        check_tol(
            &g,
            &m,
            cfg.kv.clone(),
            st,
            &format!("f16 act stories260K {spec}"),
            5e-3,
        );
    }
    // K-quant kernels with f16 activations, on the built-in model's 256-wide rows.
    let builtin = Model::builtin();
    let bt: Vec<u32> = (0..24).map(|i| 3 + (i * 41 % 250) as u32).collect();
    for spec in ["weights=q4_k", "weights=q6_k"] {
        let (m, _) = measure::prepare(&builtin, &RunConfig::parse(spec).unwrap()).unwrap();
        check_tol(
            &g,
            &m,
            KvConfig::default(),
            &bt,
            &format!("f16 act builtin {spec}"),
            5e-3,
        );
    }
    let reference = block_on(Reference::run(&mut CpuDecoder::new(&base), &seqs[..2])).unwrap();
    // (q4_0 KV is left out: it wrecks the model (PPL x3), and its noise swamps the comparison.)
    for spec in ["kv=q8_0", "weights=q4_1,kv=kivi4"] {
        let cfg = RunConfig::parse(spec).unwrap();
        let (m, _) = measure::prepare(&base, &cfg).unwrap();
        let c = block_on(measure::compare(
            &reference,
            &mut CpuDecoder::with_kv(&m, cfg.kv.clone()).unwrap(),
            &seqs[..2],
        ))
        .unwrap();
        let mut gd = GpuDecoder::new(&g, &m, cfg.kv.clone()).unwrap();
        let d = block_on(measure::compare(&reference, &mut gd, &seqs[..2])).unwrap();
        println!(
            "f16 act {spec}: PPL cpu {:.4} gpu {:.4}; top-1 vs oracle cpu {:.3} gpu {:.3}",
            c.ppl, d.ppl, c.top1_agreement, d.top1_agreement
        );
        assert!((d.ppl - c.ppl).abs() / c.ppl < 1e-2, "{spec}");
        assert!(d.top1_agreement >= c.top1_agreement - 0.03, "{spec}");
    }
}

/// A prompt run in batched passes (the tiled matrix-matrix kernel and causal batched attention) against
/// the oracle running it token by token; then decoding goes on from the cache the batch filled. The
/// matmul sums each dot product in a different order than the matvec, which changes nothing the
/// f32-activation tolerance above does not cover (same derivation), so the same tolerances apply: 2e-4
/// for f32 KV, 1e-2 for quantized KV (rounding-boundary codes, as for the KV test).
fn check_prefill(gpu: &Gpu, m: &Model, kv: KvConfig, prompt: &[u32], what: &str, tol: f32) {
    let mut cpu = CpuDecoder::with_kv(m, kv.clone()).unwrap();
    let mut g = GpuDecoder::new(gpu, m, kv).unwrap();
    assert!(g.prefill_method().starts_with("batched"), "{what}");
    let (split, tail) = prompt.split_at(prompt.len() - 6);
    let mut want = Vec::new();
    for (p, &t) in split.iter().enumerate() {
        want = block_on(cpu.step(t, p)).unwrap().to_vec();
    }
    let got = block_on(g.prefill(split, 0)).unwrap().to_vec();
    let mut worst = compare(
        &want,
        &got,
        tol,
        &format!("{what} prefill of {}", split.len()),
    );
    for (i, &t) in tail.iter().enumerate() {
        let p = split.len() + i;
        let a = block_on(cpu.step(t, p)).unwrap().to_vec();
        let b = block_on(g.step(t, p)).unwrap().to_vec();
        worst = worst.max(compare(
            &a,
            &b,
            tol,
            &format!("{what} decode pos {p} after the prefill"),
        ));
    }
    // A greedy prefill answers the oracle's argmax (or a near-tie).
    let id = block_on(g.prefill_argmax(split, 0)).unwrap();
    assert!(want[id as usize] >= want[eval::argmax(&want) as usize] - 2.0 * worst);
    println!(
        "{what}: prefill {} + {} decoded, max |Δlogit| {worst:.3e}",
        split.len(),
        tail.len()
    );
}

#[test]
fn batched_prefill_matches_cpu() {
    use nibble_engine::kv::KvType;
    let gpu = gpu();
    let stories = stories();
    let tok = stories.tokenizer.as_ref().unwrap();
    // 150 tokens: three passes of up to 64 rows (the last one short).
    let st = &eval::story_tokens(tok, &text("tinystories_sample.txt"), 150).unwrap()[0];
    let builtin = Model::builtin();
    let bt: Vec<u32> = (0..90).map(|i| 3 + (i * 29 % 250) as u32).collect();
    for spec in WEIGHT_SPECS {
        let cfg = RunConfig::parse(spec).unwrap();
        // stories260K's 172-wide ffn_down rows take the matmul's element-wise path.
        let (m, _) = measure::prepare(&stories, &cfg).unwrap();
        let what = format!("stories260K {spec}");
        check_prefill(&gpu, &m, KvConfig::default(), st, &what, 2e-4);
        let (m, _) = measure::prepare(&builtin, &cfg).unwrap();
        let what = format!("builtin {spec}");
        check_prefill(&gpu, &m, KvConfig::default(), &bt, &what, 2e-4);
    }
    // Passes of up to 160 rows: the tiled kernels' 64-token tiles, the last one short (90 = 64 + 26).
    let wide_passes = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        prefill_rows: Some(160),
        ..Default::default()
    })
    .unwrap();
    for spec in ["weights=q4_0", "weights=q8_0"] {
        let (m, _) = measure::prepare(&builtin, &RunConfig::parse(spec).unwrap()).unwrap();
        let what = format!("builtin {spec}, 90-row pass");
        check_prefill(&wide_passes, &m, KvConfig::default(), &bt, &what, 2e-4);
    }
    for (k, v) in [
        (KvType::Q8_0, KvType::Q8_0),
        (KvType::Q4_0, KvType::Q4_0),
        (KvType::Kivi4, KvType::Kivi4),
    ] {
        let kv = KvConfig {
            k,
            v,
            ..KvConfig::default()
        };
        let what = format!("builtin kv {}", kv.label());
        check_prefill(&gpu, &builtin, kv.clone(), &bt, &what, 1e-2);
        // A window shorter than the prompt: batches stop where the ring would wrap.
        let windowed = KvConfig {
            window: Some(40),
            sinks: 4,
            ..kv
        };
        let what = format!("builtin kv {} window 40", windowed.label());
        check_prefill(&gpu, &builtin, windowed, &bt, &what, 1e-2);
    }
}

/// Progressive loading: a GGUF streamed in small chunks, each tensor uploaded as it arrives (the CPU
/// keeps no model), gives the same logits bit for bit as uploading the prepared model whole; a
/// plan beyond the adapter's binding limit is refused before anything is uploaded.
#[test]
fn streamed_upload_matches_whole_upload() {
    use nibble_engine::cache::{self, Bytes, MemStore};
    use nibble_engine::gpu::GpuSink;
    let gpu = gpu();
    let mut file = Vec::new();
    Model::builtin().write_gguf(&mut file).unwrap();
    let whole = Model::from_gguf(&file, "builtin.gguf").unwrap();
    let store = MemStore::default();
    for spec in ["weights=q4_0", "weights=q8_0,precision=attn=q8_0,ffn=q4_0"] {
        let cfg = RunConfig::parse(spec).unwrap();
        let (want_m, _) = measure::prepare(&whole, &cfg).unwrap();
        let mut a = GpuDecoder::new(&gpu, &want_m, KvConfig::default()).unwrap();
        // Cold (streamed from the file), then warm (from the cache), both straight to the GPU.
        for pass in ["cold", "warm"] {
            let mut src = Bytes {
                id: "builtin.gguf (gpu test)".into(),
                name: "builtin.gguf".into(),
                model: file.clone(),
                tokenizer: None,
                chunk: 32 << 10,
                at: 0,
            };
            let mut sink = GpuSink::new(&gpu);
            let d = block_on(cache::load_into(
                &mut src,
                &cfg.weights,
                Some(&store),
                &mut sink,
                &mut |_| {},
            ))
            .unwrap();
            assert_eq!(d.report.path, pass, "{spec}");
            let (w, _, staging) = sink.finish().unwrap();
            // One staged buffer is at most one tensor, never the model.
            assert!(staging > 0 && staging < 600_000, "{spec} {pass}: {staging}");
            let mut b = GpuDecoder::with_weights(&gpu, w, KvConfig::default()).unwrap();
            for (p, t) in [1u32, 40, 7, 200].into_iter().enumerate() {
                let x = block_on(a.step(t, p)).unwrap().to_vec();
                let y = block_on(b.step(t, p)).unwrap().to_vec();
                assert_eq!(x, y, "{spec} {pass}: position {p}");
            }
            a.reset();
        }
    }
    // A binding limit below one embedding row: refused from the plan, before any upload.
    let small = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        max_binding: Some(256),
        ..Default::default()
    })
    .unwrap();
    let mut src = Bytes {
        id: "builtin.gguf (small gpu)".into(),
        name: "builtin.gguf".into(),
        model: file.clone(),
        tokenizer: None,
        chunk: 32 << 10,
        at: 0,
    };
    let mut sink = GpuSink::new(&small);
    let cfg = RunConfig::parse("weights=f32").unwrap();
    let e = block_on(cache::load_into(
        &mut src,
        &cfg.weights,
        None,
        &mut sink,
        &mut |_| {},
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("maxStorageBufferBindingSize"), "{e}");
    assert!(src.at < file.len(), "refused after reading the whole file");
}

#[test]
fn window_flat_counts_the_positions_held_on_every_backend() {
    // The metric must be able to fail: without a window the cache grows past position W, with one it
    // stays flat. The GPU allocates its cache whole, so only the positions it holds can tell.
    let g = gpu();
    let m = stories();
    let (w, sinks, total) = (32, 4, 80);
    let windowed = KvConfig {
        window: Some(w),
        sinks,
        ..KvConfig::default()
    };
    let mut none = |_: String| {};
    for (name, kv, flat) in [
        ("window", windowed, true),
        ("no window", KvConfig::default(), false),
    ] {
        let mut decs: Vec<Box<dyn Decoder + '_>> = vec![
            Box::new(CpuDecoder::with_kv(&m, kv.clone()).unwrap()),
            Box::new(GpuDecoder::new(&g, &m, kv.clone()).unwrap()),
        ];
        for d in decs.iter_mut() {
            let r = block_on(nibble_engine::scenario::window_run(
                d.as_mut(),
                w,
                sinks,
                total,
                &mut none,
            ))
            .unwrap();
            let what = format!("{name} on {}", d.backend());
            assert_eq!(r.flat, flat, "{what}: {r:?}");
            // Both backends hold the same positions in the same format.
            assert_eq!(
                r.kv_bytes_at_end,
                kv.bytes_after(&m.config, total),
                "{what}"
            );
            assert_eq!(r.kv_bytes_at_window, kv.bytes_after(&m.config, w), "{what}");
        }
    }
}

#[test]
fn a_lost_device_is_an_error_not_a_hang() {
    // The device goes away mid-sequence (a driver reset, a browser reclaiming the GPU): the next step
    // answers an error that says so, within the wait's timeout, and nothing panics.
    let g = gpu();
    let m = Model::builtin();
    let mut d = GpuDecoder::new(&g, &m, KvConfig::default()).unwrap();
    block_on(d.step_argmax(1, 0)).unwrap();
    g.device.destroy();
    let t0 = std::time::Instant::now();
    let e = block_on(d.step_argmax(2, 1)).unwrap_err().to_string();
    assert!(t0.elapsed().as_secs() < 30, "took {:?}", t0.elapsed());
    assert!(e.contains("GPU"), "{e}");
    assert!(
        e.to_lowercase().contains("lost") || e.contains("destroyed"),
        "{e}"
    );
}

/// Qwen3's layout on the GPU: per-head Q/K norms (normalised in place), heads of 128, and Q and the
/// attention output twice the residual's width. Step by step and as a batched prompt against the
/// oracle with the f32 tolerance above, in f32 and Q4_K weights and a q8_0 KV cache (its tolerance,
/// from the KV test); and with f16 activations (the tolerance of `f16_activations_match_cpu`).
#[test]
fn qwen3_layout_matches_cpu() {
    use nibble_engine::kv::KvType;
    use nibble_engine::synth::Preset;
    let gpu = gpu();
    let base = Model::synthetic(Preset::Qwen3Tiny, 0);
    assert_eq!(base.config.head_size(), 128);
    let toks: Vec<u32> = (0..90).map(|i| 3 + (i * 29 % 250) as u32).collect();
    for spec in ["weights=f32", "weights=q4_k"] {
        let (m, _) = measure::prepare(&base, &RunConfig::parse(spec).unwrap()).unwrap();
        let what = format!("qwen3-tiny {spec}");
        check(&gpu, &m, KvConfig::default(), &toks[..16], &what);
        check_prefill(&gpu, &m, KvConfig::default(), &toks, &what, 2e-4);
    }
    let q8 = KvConfig {
        k: KvType::Q8_0,
        v: KvType::Q8_0,
        ..KvConfig::default()
    };
    check_tol(&gpu, &base, q8, &toks[..16], "qwen3-tiny kv q8_0", 1e-2);
    let g16 = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F16),
        ..Default::default()
    })
    .unwrap();
    check_tol(
        &g16,
        &base,
        KvConfig::default(),
        &toks[..16],
        "qwen3-tiny f16 act",
        5e-3,
    );
}
