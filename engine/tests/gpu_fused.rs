//! The decode kernels that run a layer's Q, K and V products as one dispatch over weights laid out
//! together at upload, RoPE applied in them (`matvec4_qkv_q4c` for q4_0, `matvec4_qkv_f16`,
//! `matvec4_qkv_q8`), against the CPU oracle on lavapipe with the Tiled kernels forced (lavapipe would
//! pick the row kernels, which fuse nothing): with f32 and f16 activations, fused and apart
//! (`GpuOptions::fuse_qkv`), and the dispatches it saves; into f16, q8_0 and kivi4 KV caches; greedy
//! decoding with the loop on the GPU gives the tokens the step-by-step loop gives. SwiGLU's gate and
//! up products in one kernel (q4_0, f16, q8_0, Q4_K, Q5_K and Q6_K), against the oracle and the
//! dispatches they save; the same for the K-quants' Q/K/V, V the same or Q6_K as llama-quantize's
//! _M mixes them.
//!
//! Tolerances as tests/gpu.rs derives them: f32 activations 2e-4 * (1 + max |logit|) (the same values
//! summed in another order; RoPE rotates the f32 sums where the separate kernel rotated stored values,
//! which in f32 is the same rounding); f16 activations 5e-3 * (1 + max |logit|) (every activation
//! rounded to 11 bits; the fused kernel rounds Q and K once, after RoPE, where apart they are rounded
//! twice). Top-1 agrees unless the oracle's own margin is within the error allowed.

mod common;
use common::*;
use nibble_engine::block_on;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions, MatvecKernel};
use nibble_engine::kv::KvConfig;
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::{Decoder, Model};

fn open(act: Activations, fuse: bool, matvec: MatvecKernel) -> Gpu {
    Gpu::open_blocking(GpuOptions {
        act: Some(act),
        matvec: Some(matvec),
        fuse_qkv: Some(fuse),
        // The norms apart, so that each fusion's dispatches are counted alone
        // (`norms_fold_into_the_f16_q8_and_k_quant_kernels_with_f16_activations` counts the norms').
        fold_norm: Some(false),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
}

/// Decodes `tokens` on both sides, comparing each step's logits; the dispatches of the last step.
fn run(gpu: &Gpu, m: &Model, tokens: &[u32], tol: f32, what: &str) -> usize {
    run_kv(gpu, m, KvConfig::default(), tokens, tol, what)
}

fn run_kv(gpu: &Gpu, m: &Model, kv: KvConfig, tokens: &[u32], tol: f32, what: &str) -> usize {
    let mut cpu = CpuDecoder::with_kv(m, kv.clone()).unwrap();
    let mut g = GpuDecoder::new(gpu, m, kv).unwrap();
    for (p, &t) in tokens.iter().enumerate() {
        let a = block_on(cpu.step(t, p)).unwrap().to_vec();
        let b = block_on(g.step(t, p)).unwrap();
        compare(&a, b, tol, &format!("{what} pos {p}"));
    }
    g.dispatches().expect("the GPU counts its dispatches")
}

/// Each step's logits decoding `toks` from position 0, the last step's dispatches and the
/// workgroups of every step.
fn decode_work(gpu: &Gpu, m: &Model, toks: &[u32]) -> (Vec<Vec<f32>>, usize, u64) {
    let mut d = GpuDecoder::new(gpu, m, KvConfig::default()).unwrap();
    let logits: Vec<Vec<f32>> = (toks.iter().enumerate())
        .map(|(p, &t)| block_on(d.step(t, p)).unwrap().to_vec())
        .collect();
    (logits, d.dispatches().unwrap(), d.workgroups())
}

/// One layer of stories260K's configuration at the given widths and heads, seeded.
fn one_layer(dim: usize, hidden_dim: usize, heads: (usize, usize), seed: u64) -> Model {
    let base = stories().config;
    let (n_heads, n_kv_heads) = heads;
    let c = nibble_engine::model::Config {
        dim,
        hidden_dim,
        n_layers: 1,
        n_heads,
        n_kv_heads,
        ..base
    };
    Model::synthetic_config(c, seed)
}

fn with_weights(m: &Model, ty: &str) -> Model {
    let cfg = RunConfig::parse(&format!("weights={ty}")).unwrap();
    measure::prepare(m, &cfg).unwrap().0
}

/// A one-layer q4_0 model whose rows take the integer kernels' lanes past one round of four blocks
/// (32 lanes a row, a block each, so 128 blocks a round): 4160 wide (130 blocks: a second round in
/// two lanes, one live block each), hidden 4192 (131 blocks: three lanes); 65 heads of 64, 5 K/V heads.
fn long_q4_0() -> Model {
    with_weights(&one_layer(4160, 4192, (65, 5), 5), "q4_0")
}

/// One-layer K-quant models whose rows are 4 super-blocks (one pass of a Q4_K row's 32 lanes, two of
/// a Q6_K row's) and 8 (two, four); some with V as Q6_K, as llama-quantize's _M mixes store attn_v
/// in some layers (Q4_K_S some as Q5_K), and a Q6_K model (its gate/up and Q/K/V read a word at a
/// time).
fn k_models() -> Vec<(String, Model)> {
    [
        (1024, 16, 11, "weights=q4_k"),
        (2048, 32, 12, "weights=q4_k,attn_v=q6_k,ffn_down=q6_k"),
        (1024, 16, 13, "weights=q5_k,attn_v=q6_k"),
        (2048, 32, 14, "weights=q5_k"),
        (1024, 16, 15, "weights=q6_k"),
        (1024, 16, 16, "weights=q4_k,attn_v=q5_k"),
    ]
    .into_iter()
    .map(|(dim, heads, seed, spec)| {
        let m = one_layer(dim, 512, (heads, 4), seed);
        let cfg = RunConfig::parse(spec).unwrap();
        (
            format!("{dim} wide {spec}"),
            measure::prepare(&m, &cfg).unwrap().0,
        )
    })
    .collect()
}

/// stories260K (64-wide rows: each kernel's tail loop only) and a one-layer model 1024 wide, whose rows
/// reach the unrolled loops (four q4 words or vec4s of f16 per lane, two vec4s of q8_0), as q4_0, f16
/// and q8_0 weights.
fn models() -> Vec<(String, Model)> {
    let s = stories();
    let heads = (s.config.n_heads, s.config.n_kv_heads);
    let wide = one_layer(1024, 1024, heads, 3);
    let mut out = Vec::new();
    for (m, name) in [(&s, "stories260K"), (&wide, "wide")] {
        for ty in ["q4_0", "f16", "q8_0"] {
            out.push((format!("{name} {ty}"), with_weights(m, ty)));
        }
    }
    out
}

#[test]
fn qkv_in_one_kernel_matches_cpu_and_saves_three_dispatches_a_layer() {
    let toks: Vec<u32> = (0..12).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let models = models();
    for (act, tol) in [(Activations::F32, 2e-4), (Activations::F16, 5e-3)] {
        let fused = open(act, true, MatvecKernel::Tiled);
        let apart = open(act, false, MatvecKernel::Tiled);
        for (name, m) in &models {
            let what = |how: &str| format!("{act:?} activations, {name}, Q/K/V {how}");
            let n_fused = run(&fused, m, &toks, tol, &what("fused"));
            let n_apart = run(&apart, m, &toks, tol, &what("apart"));
            // Two matrix products and the RoPE kernel fewer per layer (no biases here).
            assert_eq!(n_fused + 3 * m.config.n_layers, n_apart, "{act:?} {name}");
        }
        // The same kernels either way, so the same tokens exactly.
        let q4_0 = &models[0].1;
        let mut resident = GpuDecoder::new(&fused, q4_0, KvConfig::default()).unwrap();
        let mut stepped = GpuDecoder::new(&fused, q4_0, KvConfig::default()).unwrap();
        let on_gpu = block_on(resident.decode_greedy(toks[0], 0, 40)).unwrap();
        let mut by_step = Vec::new();
        let mut t = toks[0];
        for pos in 0..40 {
            t = block_on(stepped.step_argmax(t, pos)).unwrap();
            by_step.push(t);
        }
        assert_eq!(on_gpu, by_step, "{act:?}");
    }
    // The fused kernel's K and V go through each KV cache format: f16 and q8_0 keys and values,
    // kivi4 keys. Quantized caches as tests/gpu.rs allows them (1e-2: an f32 value on a rounding
    // boundary lands on the neighbouring code).
    let fused = open(Activations::F32, true, MatvecKernel::Tiled);
    for spec in ["kv=f16", "kv=q8_0", "kv=kivi4"] {
        let kv = RunConfig::parse(spec).unwrap().kv;
        for (name, m) in &models {
            run_kv(
                &fused,
                m,
                kv.clone(),
                &toks,
                1e-2,
                &format!("{name} {spec}"),
            );
        }
    }
    // SwiGLU's gate and up products in one kernel (`matvec4_glu_q4c`, `matvec4_glu_f16`): two
    // dispatches fewer per layer than the 32-bit kernels' gate, up and SwiGLU.
    for (name, m) in &models {
        let glu = |k| run(&open(Activations::F32, false, k), m, &toks, 2e-4, name);
        let layers = m.config.n_layers;
        assert_eq!(
            glu(MatvecKernel::Tiled) + 2 * layers,
            glu(MatvecKernel::Tiled32),
            "{name}"
        );
    }
    // K-quants: gate and up (`matvec4_glu_k`), Q/K/V (`matvec4_qkv_k`, V the same or Q6_K), and
    // under the integer kernel choice `matvec4_glu_ki`, `matvec4_qkv_ki` in as many dispatches
    // (their tolerance: `k_quant_int8_products_stay_near_the_oracle`); apart, the 32-bit kernels'
    // gate, up and SwiGLU are two dispatches more.
    for (name, m) in &k_models() {
        let layers = m.config.n_layers;
        for (act, tol) in [(Activations::F32, 2e-4), (Activations::F16, 5e-3)] {
            let n = |fuse, k| {
                let what = format!("{name}, {act:?} activations, {k:?}, Q/K/V fused {fuse}");
                let tol = if k == MatvecKernel::TiledInt8 {
                    2e-2
                } else {
                    tol
                };
                run(&open(act, fuse, k), m, &toks, tol, &what)
            };
            let fused = n(true, MatvecKernel::Tiled);
            assert_eq!(fused, n(true, MatvecKernel::TiledInt8), "{name}");
            let apart = n(false, MatvecKernel::Tiled);
            assert_eq!(fused + 3 * layers, apart, "{name}");
            assert_eq!(
                apart + 2 * layers,
                n(false, MatvecKernel::Tiled32),
                "{name}"
            );
        }
        // K and V from the fused kernel through a quantized cache.
        let kv = RunConfig::parse("kv=q8_0").unwrap().kv;
        let g = open(Activations::F32, true, MatvecKernel::Tiled);
        run_kv(&g, m, kv, &toks, 1e-2, &format!("{name} kv=q8_0"));
    }
    let m = stories();
    let q4_0 = &models[0].1;
    // Where the fused kernel does not apply, the weights are laid out as before and nothing changes:
    // q4_1, and q4_0 under the kernel that takes whole blocks per lane.
    let (q4_1, _) = measure::prepare(&m, &RunConfig::parse("weights=q4_1").unwrap()).unwrap();
    let cases = [
        (&q4_1, MatvecKernel::Tiled, "q4_1"),
        (q4_0, MatvecKernel::TiledBlocks, "q4_0 tiled-blocks"),
    ];
    for (model, kernel, what) in cases {
        let on = run(
            &open(Activations::F32, true, kernel),
            model,
            &toks,
            2e-4,
            what,
        );
        let off = run(
            &open(Activations::F32, false, kernel),
            model,
            &toks,
            2e-4,
            what,
        );
        assert_eq!(on, off, "{what}");
    }
}

/// RMSNorm folded into the f16, q8_0 and K-quant kernels (`matvec4_qkv_f16n`, `matvec4_glu_f16n`,
/// `_q8n`, `matvec4_qkv_kn`, `matvec4_glu_kn`; Q4_K and Q5_K, V the same or Q6_K) with f16 activations: w x is staged as f16, as the normalised x was stored apart, and the scale applied in
/// f32 to the sums, so the f16 tolerance (5e-3) holds; a lost weight or scale moves logits by ~1.
/// Two dispatches fewer a layer, one where Q/K/V run apart (their first product runs the norm), in
/// both row-sum paths; with f32 activations nothing folds (f16 staging would round what f32 keeps).
#[test]
fn norms_fold_into_the_f16_q8_and_k_quant_kernels_with_f16_activations() {
    let toks: Vec<u32> = (0..12).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let with = |act, fuse_qkv, fold_norm| {
        Gpu::open_blocking(GpuOptions {
            act: Some(act),
            matvec: Some(MatvecKernel::Tiled),
            fuse_qkv: Some(fuse_qkv),
            fold_norm: Some(fold_norm),
            ..Default::default()
        })
        .unwrap()
    };
    let f16 = Activations::F16;
    let staged = (models().into_iter()).filter(|(n, _)| n.ends_with("f16") || n.ends_with("q8_0"));
    for (name, m) in staged.chain(k_models()) {
        let (name, m) = (&name, &m);
        let layers = m.config.n_layers;
        let n = |g: &Gpu, what: &str| run(g, m, &toks, 5e-3, &format!("{name} {what}"));
        let off = n(&with(f16, true, false), "norms apart");
        assert_eq!(n(&with(f16, true, true), "norms folded") + 2 * layers, off);
        let qkv_apart = n(&with(f16, false, false), "Q/K/V apart");
        let folded = n(&with(f16, false, true), "Q/K/V apart, norms folded");
        assert_eq!(folded + layers, qkv_apart, "{name}");
        // The norm's sum of squares in the other row-sum path.
        let subgroups = Gpu::open_blocking(GpuOptions {
            act: Some(f16),
            matvec: Some(MatvecKernel::Tiled),
            subgroups: Some(true),
            fold_norm: Some(true),
            ..Default::default()
        })
        .expect("lavapipe has subgroups");
        assert_eq!(n(&subgroups, "norms folded, subgroups") + 2 * layers, off);
        let f32 = Activations::F32;
        let on32 = run(&with(f32, true, true), m, &toks, 2e-4, name);
        assert_eq!(on32, run(&with(f32, true, false), m, &toks, 2e-4, name));
    }
}

/// The integer-dot products (`MatvecKernel::TiledInt8`: attn_output and ffn_down in `matvec4_q4i`,
/// gate/up in `matvec4_glu_q4i`, Q/K/V in `matvec4_qkv_q4i`, x quantized to 8 bits per block of 32,
/// the RMSNorm before gate/up and Q/K/V folded in) against the oracle. The kernel's integer sums are
/// exact, so what differs is x's quantization: each value moves by up to half a step, max |x| / 254 of
/// its block, so a dot product moves by about d / sqrt(12) * |w| sqrt(n) against its size
/// |x|_rms |w| sqrt(n), a relative 1 / (127 sqrt(12)) * max |x| / |x|_rms ~ 6e-3 for blocks whose max
/// is ~2.6 times their rms. Measured on these models: 4e-3 to 8.7e-3 of (1 + max |logit|). Allowed:
/// 2e-2, with top-1 agreeing unless the oracle's own margin is within the error. A wrong code or scale
/// moves logits by ~1; so does a norm's scale or weight lost (x^2's mean here is far from 1).
/// The float kernels' logits must differ from these by more than float rounding (2e-4), which shows
/// the integer kernels ran; folding the norms must save its two dispatches a layer.
#[test]
fn int8_products_stay_near_the_oracle() {
    let toks: Vec<u32> = (0..12).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let with = |act, subgroups, fold_norm| {
        Gpu::open_blocking(GpuOptions {
            act: Some(act),
            matvec: Some(MatvecKernel::TiledInt8),
            subgroups: Some(subgroups),
            fold_norm: Some(fold_norm),
            ..Default::default()
        })
        .expect("lavapipe has subgroups")
    };
    let int8 = with(Activations::F32, false, true);
    let float = open(Activations::F32, true, MatvecKernel::Tiled);
    let mut q4 = models();
    q4.retain(|(n, _)| n.ends_with("q4_0"));
    q4.push(("long q4_0".into(), long_q4_0()));
    for (name, m) in &q4 {
        let folded = run(&int8, m, &toks, 2e-2, &format!("{name} int8"));
        // Both row sums (the kernel borrows their workgroup memory while it quantizes x), f16
        // activations, and the norms apart.
        for (act, subgroups, fold) in [
            (Activations::F32, true, true),
            (Activations::F16, false, true),
            (Activations::F16, true, true),
        ] {
            let what = format!("{name} int8, {act:?}, subgroups {subgroups}");
            let n = run(&with(act, subgroups, fold), m, &toks, 2e-2, &what);
            assert_eq!(n, folded, "{what}");
        }
        let apart = run(
            &with(Activations::F32, false, false),
            m,
            &toks,
            2e-2,
            &format!("{name} int8, norms apart"),
        );
        assert_eq!(folded + 2 * m.config.n_layers, apart, "{name}");
        let mut a = GpuDecoder::new(&float, m, KvConfig::default()).unwrap();
        let mut b = GpuDecoder::new(&int8, m, KvConfig::default()).unwrap();
        let (x, y) = (
            block_on(a.step(toks[0], 0)).unwrap().to_vec(),
            block_on(b.step(toks[0], 0)).unwrap(),
        );
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            d > 2e-4 * (1.0 + scale),
            "{name}: the integer kernel did not run ({d})"
        );
    }
    // The float kernels fold nothing: the option changes no dispatch.
    let q4_0 = &models()[0].1;
    let float_apart = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        matvec: Some(MatvecKernel::Tiled),
        fold_norm: Some(false),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        run(&float, q4_0, &toks, 2e-4, "float"),
        run(&float_apart, q4_0, &toks, 2e-4, "float, norms apart")
    );
}

/// The K-quant integer-dot products (`MatvecKernel::TiledInt8`: `matvec4_ki` and `matvec4_q6ki` for
/// attn_output, ffn_down and the classifier, `matvec4_glu_ki`, `matvec4_qkv_ki` with V Q4_K, Q5_K
/// or Q6_K, a Q6_K file's Q/K/V)
/// against the oracle, the RMSNorm folded and apart, in both row-sum paths, f32 and f16
/// activations. x is quantized per block of 32 (a K-quant sub-block) as for q4_0, and the mins
/// multiply the quantized x's sums, so the q4_0 derivation holds (about 6e-3 of (1 + max |logit|)):
/// measured against the float kernels over four steps, 6.2e-3 to 7.5e-3 on these models (q4_0's
/// 6.5e-3 to 7.4e-3; with x's exact sums for the mins, 1.2e-2 to 2.1e-2). Allowed 2e-2. A sub-block's
/// scale or min, a fifth bit or a Q6_K half misplaced moves logits by ~1. The float kernels' logits
/// differ from these by more than float rounding, which shows the integer kernels ran; folding saves
/// two dispatches a layer (one for a Q6_K file with f32 activations, whose gate/up stays in
/// floats and folds only an f16 norm); fewer workgroups than row groups give the same logits to
/// the last bit.
#[test]
fn k_quant_int8_products_stay_near_the_oracle() {
    let toks: Vec<u32> = (0..8).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let with = |act, subgroups, fold_norm, groups| {
        Gpu::open_blocking(GpuOptions {
            act: Some(act),
            matvec: Some(MatvecKernel::TiledInt8),
            subgroups: Some(subgroups),
            fold_norm: Some(fold_norm),
            int8_groups: groups,
            ..Default::default()
        })
        .expect("lavapipe has subgroups")
    };
    let (f32, f16) = (Activations::F32, Activations::F16);
    let float = open(f32, true, MatvecKernel::Tiled);
    // And a classifier of 517 rows, whose last group of eight is partial (Q4_K and Q6_K).
    let mut models = k_models();
    for (spec, seed) in [("weights=q4_k", 17), ("weights=q4_k,output=q6_k", 18)] {
        let mut m = one_layer(1024, 512, (16, 4), seed);
        m.config.vocab_size = 517;
        let m = Model::synthetic_config(m.config, seed);
        let cfg = RunConfig::parse(spec).unwrap();
        let name = format!("1024 wide, 517 tokens, {spec}");
        models.push((name, measure::prepare(&m, &cfg).unwrap().0));
    }
    for (name, m) in &models {
        let layers = m.config.n_layers;
        let q6k = name.ends_with("weights=q6_k");
        for (act, subgroups) in [(f32, false), (f32, true), (f16, false), (f16, true)] {
            let what = format!("{name} int8, {act:?}, subgroups {subgroups}");
            let folded = run(&with(act, subgroups, true, None), m, &toks, 2e-2, &what);
            let apart = run(&with(act, subgroups, false, None), m, &toks, 2e-2, &what);
            let saved = if q6k && act == f32 { 1 } else { 2 };
            assert_eq!(folded + saved * layers, apart, "{what}");
        }
        let mut a = GpuDecoder::new(&float, m, KvConfig::default()).unwrap();
        let int8 = with(f32, false, true, None);
        let mut b = GpuDecoder::new(&int8, m, KvConfig::default()).unwrap();
        let (x, y) = (
            block_on(a.step(toks[0], 0)).unwrap().to_vec(),
            block_on(b.step(toks[0], 0)).unwrap(),
        );
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            d > 2e-4 * (1.0 + scale),
            "{name}: the integer kernel did not run ({d})"
        );
        let want = decode_work(&with(f16, true, true, None), m, &toks);
        for n in [1, 3] {
            let got = decode_work(&with(f16, true, true, Some(n)), m, &toks);
            assert!(got.0 == want.0, "{name}, {n} groups: the logits differ");
            assert!(got.2 < want.2, "{name}, {n} groups: not fewer workgroups");
        }
    }
}

/// Rows longer than the integer kernels' 16 KB modules hold (q4_0 12288 values, K-quants 11264)
/// take the long modules where the adapter allows 32 KB of workgroup memory (lavapipe, as Chrome
/// and Firefox): a 14336-wide ffn_down (Llama 3's and Mistral's), q4_0, Q4_K and Q6_K, against the
/// oracle within the integer kernels' 2e-2 (derived above), in both row-sum paths and with f16
/// activations. With the long modules off (`Gpu::int8_long`) those products run in floats, whose
/// logits differ by more than float rounding, which shows the long module ran; 3 workgroups
/// looping over the row groups give the same bits.
#[test]
fn long_rows_take_the_long_integer_modules() {
    let toks: Vec<u32> = (0..4).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let with = |act, subgroups, long, groups| {
        let mut g = Gpu::open_blocking(GpuOptions {
            act: Some(act),
            matvec: Some(MatvecKernel::TiledInt8),
            subgroups: Some(subgroups),
            int8_groups: groups,
            ..Default::default()
        })
        .expect("lavapipe has subgroups");
        assert!(g.int8_long, "lavapipe allows 32 KB of workgroup memory");
        g.int8_long = long;
        g
    };
    let (f32, f16) = (Activations::F32, Activations::F16);
    let specs = [
        ("weights=q4_0", 20),
        ("weights=q4_k", 21),
        ("weights=q4_k,ffn_down=q6_k", 22),
    ];
    for (spec, seed) in specs {
        let cfg = RunConfig::parse(spec).unwrap();
        let m = measure::prepare(&one_layer(1024, 14336, (16, 4), seed), &cfg)
            .unwrap()
            .0;
        for (act, subgroups) in [(f32, false), (f32, true), (f16, false)] {
            let what = format!("14336-wide ffn_down {spec}, {act:?}, subgroups {subgroups}");
            run(&with(act, subgroups, true, None), &m, &toks, 2e-2, &what);
        }
        let long = decode_work(&with(f32, false, true, None), &m, &toks);
        let float = decode_work(&with(f32, false, false, None), &m, &toks);
        let scale = float.0[0].iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = (float.0[0].iter().zip(&long.0[0])).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            d > 2e-4 * (1.0 + scale),
            "{spec}: the long module did not run ({d})"
        );
        let three = decode_work(&with(f32, false, true, Some(3)), &m, &toks);
        assert!(three.0 == long.0, "{spec}, 3 groups: the logits differ");
    }
}

/// The integer-dot decode kernels on fewer workgroups than row groups (`GpuOptions::int8_groups`):
/// each workgroup quantizes x once and loops over groups a grid apart, which changes which
/// workgroup sums a row, not how: the logits of every step equal the default's (a workgroup per
/// group) to the last bit, and the dispatches are the same (their workgroups fewer), in both
/// reduction paths, f32 and f16 activations, norms folded and apart. One workgroup takes every
/// group; 3 and 7 leave the grid's last round of groups partial. Once against the oracle too
/// (tolerance as above).
#[test]
fn int8_products_loop_over_row_groups() {
    let toks: Vec<u32> = (0..5).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let with = |act, subgroups, fold_norm, groups| {
        Gpu::open_blocking(GpuOptions {
            act: Some(act),
            matvec: Some(MatvecKernel::TiledInt8),
            subgroups: Some(subgroups),
            fold_norm: Some(fold_norm),
            int8_groups: groups,
            ..Default::default()
        })
        .expect("lavapipe has subgroups")
    };
    let steps = |gpu: &Gpu, m: &Model| decode_work(gpu, m, &toks);
    let mut q4 = models();
    q4.retain(|(n, _)| n.ends_with("q4_0"));
    q4.push(("long q4_0".into(), long_q4_0()));
    let (f32, f16) = (Activations::F32, Activations::F16);
    for (act, subgroups, fold) in [(f32, false, true), (f16, true, true), (f32, true, false)] {
        let base = with(act, subgroups, fold, None);
        let looped: Vec<_> = [1, 3, 7]
            .map(|n| (n, with(act, subgroups, fold, Some(n))))
            .into();
        for (name, m) in &q4 {
            let want = steps(&base, m);
            for (n, gpu) in &looped {
                let what =
                    format!("{name}, {act:?}, subgroups {subgroups}, fold {fold}, {n} groups");
                let got = steps(gpu, m);
                assert!(got.0 == want.0, "{what}: the logits differ");
                assert_eq!(got.1, want.1, "{what}: dispatches");
                assert!(got.2 < want.2, "{what}: {} workgroups, not fewer", got.2);
            }
        }
    }
    let m = long_q4_0();
    run(
        &with(f32, false, true, Some(3)),
        &m,
        &toks,
        2e-2,
        "long q4_0 int8, 3 groups",
    );
}

/// The prompt pass's q4_0, q8_0 and K-quant products in integers (`matmul_q4i`, `matmul_q8i`,
/// `matmul_ki`: Q4_K, Q5_K, Q6_K; `MatvecKernel::TiledInt8`): a 100-token prompt (a full tile of
/// 64 tokens and a partial one; stories260K's 172-row gate and up a partial tile of rows, its
/// 172-wide ffn_down left to the float matmul; the K models' 512-row gate/up and 4-head K and V)
/// against the oracle fed token by token, within the integer kernels' derived 2e-2 (x quantized
/// per block of 32, as at decode); its logits must differ from the float matmul's by more than f32
/// rounding (2e-4), which shows it ran, and decoding goes on from the cache it filled. x is
/// quantized once per input (`quant_x8`): the pass dispatches that many more than the float
/// matmul's.
#[test]
fn int8_prompt_pass_stays_near_the_oracle() {
    let prompt: Vec<u32> = (0..100).map(|i| 3 + (i * 53 % 250) as u32).collect();
    let with = |matvec| {
        Gpu::open_blocking(GpuOptions {
            act: Some(Activations::F32),
            matvec: Some(matvec),
            ..Default::default()
        })
        .unwrap()
    };
    let (int8, float) = (with(MatvecKernel::TiledInt8), with(MatvecKernel::Tiled));
    let mut cases = models();
    cases.retain(|(n, _)| n.ends_with("q4_0") || n.ends_with("q8_0"));
    cases.extend(k_models());
    for (name, m) in &cases {
        let mut cpu = CpuDecoder::with_kv(m, KvConfig::default()).unwrap();
        let mut want = Vec::new();
        for (p, &t) in prompt.iter().enumerate() {
            want = block_on(cpu.step(t, p)).unwrap().to_vec();
        }
        let mut g = GpuDecoder::new(&int8, m, KvConfig::default()).unwrap();
        assert!(g.prefill_method().starts_with("batched"), "{name}");
        let got = block_on(g.prefill(&prompt, 0)).unwrap().to_vec();
        compare(&want, &got, 2e-2, &format!("{name} int8 prompt pass"));
        let int8_dispatches = g.dispatches().unwrap();
        let next = prompt.len();
        let a = block_on(cpu.step(7, next)).unwrap().to_vec();
        let b = block_on(g.step(7, next)).unwrap();
        compare(
            &a,
            b,
            2e-2,
            &format!("{name} int8, decode after the prompt"),
        );
        let mut f = GpuDecoder::new(&float, m, KvConfig::default()).unwrap();
        let floats = block_on(f.prefill(&prompt, 0)).unwrap().to_vec();
        let scale = floats.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = floats
            .iter()
            .zip(&got)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            d > 2e-4 * (1.0 + scale),
            "{name}: the integer GEMM did not run ({d})"
        );
        // x quantized once per input of the integer GEMMs (`quant_x8`): Q/K/V's, attn_output's,
        // gate/up's, ffn_down's, but for stories260K's 172-wide ffn_down (the float matmul).
        let inputs = if name.starts_with("stories") { 3 } else { 4 };
        assert_eq!(
            int8_dispatches,
            f.dispatches().unwrap() + inputs * m.config.n_layers,
            "{name}: one quant_x8 per input"
        );
    }
}

/// K and V stored in the f16 KV cache by the fused Q/K/V kernel itself (`GpuOptions::kv_direct`,
/// f16 activations, RoPE in the kernel), at the slot the RoPE table carries: the same values
/// `kv_store` would write (an f16 cache row is an f16 activation row), so the f16 tolerance holds and
/// the logits equal the kernel-apart run's; one dispatch fewer a layer; a window's ring of slots
/// (12 tokens through 8 slots, 2 of them sinks); the GPU-resident greedy loop, whose passes each
/// take their slot from the table. f32 activations and other caches keep `kv_store`.
#[test]
fn k_and_v_go_straight_into_an_f16_cache() {
    let toks: Vec<u32> = (0..12).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let with = |act, kv_direct| {
        Gpu::open_blocking(GpuOptions {
            act: Some(act),
            matvec: Some(MatvecKernel::Tiled),
            kv_direct: Some(kv_direct),
            ..Default::default()
        })
        .unwrap()
    };
    let (direct, apart) = (with(Activations::F16, true), with(Activations::F16, false));
    let ring = RunConfig::parse("kv=f16,window=8,sinks=2").unwrap().kv;
    let f16 = RunConfig::parse("kv=f16").unwrap().kv;
    for (name, m) in &models() {
        let layers = m.config.n_layers;
        for kv in [f16.clone(), ring.clone()] {
            let what = format!("{name} window {:?}", kv.window);
            let n = run_kv(&direct, m, kv.clone(), &toks, 5e-3, &what);
            assert_eq!(n + layers, run_kv(&apart, m, kv, &toks, 5e-3, &what));
        }
        let mut resident = GpuDecoder::new(&direct, m, ring.clone()).unwrap();
        let mut stepped = GpuDecoder::new(&apart, m, ring.clone()).unwrap();
        let on_gpu = block_on(resident.decode_greedy(toks[0], 0, 24)).unwrap();
        let mut by_step = Vec::new();
        let mut t = toks[0];
        for pos in 0..24 {
            t = block_on(stepped.step_argmax(t, pos)).unwrap();
            by_step.push(t);
        }
        assert_eq!(on_gpu, by_step, "{name}");
        let q8 = RunConfig::parse("kv=q8_0").unwrap().kv;
        let n = run_kv(&direct, m, q8.clone(), &toks, 1e-2, name);
        assert_eq!(n, run_kv(&apart, m, q8, &toks, 1e-2, name), "{name} q8_0");
        let f32 = |d| run(&with(Activations::F32, d), m, &toks, 2e-4, name);
        assert_eq!(f32(true), f32(false), "{name} f32");
    }
}

/// The grid tuner (`GpuDecoder::tune_grid`) on the 1024-wide q4_0 model with the integer-dot
/// kernels: it times every group first, then caps down a ladder from the most row groups a dispatch
/// covers (each timed lowering a pass's workgroups; grids are balanced, so caps that give each
/// workgroup as many turns run one grid, timed once) until 8 or a cap 1.5x slower than the
/// fastest, keeps the fastest it timed, and the decoder then runs with it: a pass dispatches the
/// workgroups timed with that cap, and the logits equal an untuned decoder's to the last bit (the
/// grid changes which workgroup sums a row, not how). Nothing is tuned where the caller set the
/// grid (a cap, or 0 for a workgroup per group), or where no kernel loops (the Tiled kernels).
#[test]
fn the_grid_tuner_keeps_the_fastest_grid_it_timed() {
    let toks: Vec<u32> = (0..5).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let s = stories();
    let m = with_weights(
        &one_layer(1024, 1024, (s.config.n_heads, s.config.n_kv_heads), 3),
        "q4_0",
    );
    let with = |matvec, groups| {
        Gpu::open_blocking(GpuOptions {
            act: Some(Activations::F16),
            matvec: Some(matvec),
            int8_groups: groups,
            ..Default::default()
        })
        .unwrap()
    };
    let steps = |d: &mut GpuDecoder| -> Vec<Vec<f32>> {
        d.reset();
        (toks.iter().enumerate())
            .map(|(p, &t)| block_on(d.step(t, p)).unwrap().to_vec())
            .collect()
    };
    let gpu = with(MatvecKernel::TiledInt8, None);
    let want = steps(&mut GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap());
    let mut d = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
    let g = block_on(d.tune_grid())
        .unwrap()
        .expect("the q4_0 kernels loop")
        .clone();
    let (all_cap, _, all_wg) = g.timings[0];
    assert_eq!(all_cap, None, "every group is timed first");
    // The ladder: caps falling by x1.25 from the most row groups a dispatch covers, down to 8 or
    // a cap 1.5x slower than the fastest, each timed unless an earlier trial ran its grid (each
    // pass's workgroups then fall with every trial); then the refinement's caps between the
    // fastest's neighbours. No grid is timed twice.
    let caps: Vec<u32> = g.timings[1..].iter().map(|t| t.0.unwrap()).collect();
    let falling = caps.windows(2).take_while(|w| w[1] < w[0]).count() + 1;
    let ladder = &g.timings[1..=falling];
    let chain: Vec<u32> = std::iter::successors(Some(g.groups() as u32), |&c| {
        Some((c as f64 / 1.25) as u32).filter(|&n| n >= 8)
    })
    .collect();
    assert_eq!(ladder[0].0, Some(chain[1]), "{:?}", g.timings);
    assert!(
        ladder.len() > 4,
        "the ladder stopped early: {:?}",
        g.timings
    );
    for w in ladder.windows(2) {
        assert!(chain.contains(&w[1].0.unwrap()), "{:?}", g.timings);
        assert!(w[1].2 < w[0].2, "{:?}", g.timings);
    }
    let layouts: Vec<Vec<usize>> = g.timings.iter().map(|t| g.layout(t.0)).collect();
    for (i, l) in layouts.iter().enumerate() {
        assert!(!layouts[..i].contains(l), "timed twice: {:?}", g.timings);
    }
    let lowest = ladder.last().unwrap().0.unwrap();
    for &c in chain[1..].iter().take_while(|&&c| c >= lowest) {
        assert!(
            layouts.contains(&g.layout(Some(c))),
            "cap {c} passed over, its grid untimed: {:?}",
            g.timings
        );
    }
    let last = ladder.last().unwrap();
    let fastest = (g.timings.iter().filter_map(|t| t.1)).fold(f64::INFINITY, f64::min);
    // The descent ended at the floor where every cap below the last it timed runs a timed grid.
    let floor =
        (chain.iter().filter(|&&c| c < lowest)).all(|&c| layouts.contains(&g.layout(Some(c))));
    assert!(
        floor || last.1.is_none_or(|ms| ms > 1.5 * fastest),
        "{:?}",
        g.timings
    );
    assert!(
        g.timings.iter().skip(1).all(|t| t.2 < all_wg),
        "{:?}",
        g.timings
    );
    let fastest = (g.timings.iter())
        .filter_map(|t| t.1.map(|ms| (t.0, ms)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(g.cap, fastest.0, "not the fastest: {:?}", g.timings);
    let chosen_wg = g.timings.iter().find(|t| t.0 == g.cap).unwrap().2;
    assert!(
        steps(&mut d) == want,
        "the logits differ after tuning ({:?})",
        g.cap
    );
    // Timed passes are greedy ones (their embedding covers every chunk): the same kind here.
    d.reset();
    block_on(d.decode_greedy(1, 0, 2)).unwrap();
    assert_eq!(
        d.workgroups(),
        chosen_wg,
        "the chosen grid is not the one running"
    );
    assert!(d.decode_method().contains(g.note.as_deref().unwrap()));
    for (kernel, groups) in [
        (MatvecKernel::TiledInt8, Some(5)),
        (MatvecKernel::TiledInt8, Some(0)),
        (MatvecKernel::Tiled, None),
    ] {
        let gpu = with(kernel, groups);
        let mut d = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
        let tuned = block_on(d.tune_grid()).unwrap().map(|g| g.cap);
        assert_eq!(tuned, None, "{kernel:?}, {groups:?}: tuned");
        assert!(steps(&mut d) == want || kernel == MatvecKernel::Tiled);
    }
}
