//! Prompt products of f16 weights multiplied in f16 (`matmul_h`, `GpuOptions::half_math`, f16
//! activations) against the oracle, and which products take it.
//!
//! The tolerance, derived: with f16 activations every stored value rounds to 11 bits (rms u/sqrt(3),
//! u = 2^-11), ~15 stores a layer, and the f16-activation tests allow 5e-3 (1 + max |logit|).
//! `matmul_h` adds, on each output of a product over n columns of terms of rms t (output ~sqrt(n) t),
//! the rounding of every product (sqrt(n) u t / sqrt(3)) and of every partial sum within a run of
//! 16 columns summed in f16 (partial j ~ sqrt(j) t: sqrt(n / 16) sqrt(16 * 17 / 2) u t / sqrt(3)
//! over the row): about 3 u / sqrt(3) relative, whatever n, i.e. three stores' worth on each of a
//! layer's 7 products. (15 + 3 * 7) / 15 < 3 stores' worth: 1.5e-2 (1 + max |logit|).
//! `matmul_h128` sums runs of 32: sqrt(33 / 2) ~ 4.1 u / sqrt(3), and (15 + 4.1 * 7) / 15 < 3
//! still, so it is held to the same bound.

mod common;
use common::*;
use nibble_engine::block_on;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
use nibble_engine::kv::KvConfig;
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::{Decoder, Model};

const TOL: f32 = 1.5e-2;

fn open(half_math: bool) -> Gpu {
    open_tiles(half_math, None)
}

fn open_tiles(half_math: bool, tall_tiles: Option<bool>) -> Gpu {
    Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F16),
        half_math: Some(half_math),
        tall_tiles,
        profile: true,
        ..Default::default()
    })
    .expect("lavapipe has shader-f16")
}

/// Dispatches of `entry` in a prompt pass's profile, by the matrix's role.
fn roles(k: &[nibble_engine::gpu::KernelTime], entry: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = k
        .iter()
        .filter_map(|k| {
            let role = k.kernel.strip_prefix(entry)?.strip_prefix(' ')?;
            Some((role.to_string(), k.dispatches))
        })
        .collect();
    out.sort();
    out
}

/// A 100-token prompt (a whole 64-token tile and a partial one) in f16 math against the oracle fed
/// token by token, then decoding on from the cache it filled; the built-in model's rows are 256 and
/// 512 values (8 and 16 steps), stories260K's 64 (2 steps) with 172-wide ffn_down rows left to the
/// float `matmul` (not whole steps) and 172-row gate and up (a partial tile of rows).
#[test]
fn f16_math_prompt_products_stay_near_the_oracle() {
    let (half, float) = (open(true), open(false));
    assert!(half.half_math && !float.half_math);
    let prompt: Vec<u32> = (0..100).map(|i| 3 + (i * 53 % 250) as u32).collect();
    let f16 = RunConfig::parse("weights=f16").unwrap();
    for (name, base) in [("builtin", Model::builtin()), ("stories260K", stories())] {
        let (m, _) = measure::prepare(&base, &f16).unwrap();
        let layers = m.config.n_layers;
        let mut cpu = CpuDecoder::with_kv(&m, KvConfig::default()).unwrap();
        let mut want = Vec::new();
        for (p, &t) in prompt.iter().enumerate() {
            want = block_on(cpu.step(t, p)).unwrap().to_vec();
        }
        let mut g = GpuDecoder::new(&half, &m, KvConfig::default()).unwrap();
        assert!(g.prefill_method().starts_with("batched"), "{name}");
        let got = block_on(g.prefill(&prompt, 0)).unwrap().to_vec();
        let d = compare(&want, &got, TOL, &format!("{name} f16 math prompt pass"));
        let a = block_on(cpu.step(7, prompt.len())).unwrap().to_vec();
        let b = block_on(g.step(7, prompt.len())).unwrap();
        compare(&a, b, TOL, &format!("{name} f16 math, decode after"));
        let mut f = GpuDecoder::new(&float, &m, KvConfig::default()).unwrap();
        let floats = block_on(f.prefill(&prompt, 0)).unwrap().to_vec();
        let d0 = compare(&want, &floats, TOL, &format!("{name} f32 math prompt pass"));
        println!("{name}: max |dlogit| f16 math {d:.3e}, f32 math {d0:.3e}");

        // Which products took it: every layer's seven where rows are whole steps.
        let mut p = GpuDecoder::new(&half, &m, KvConfig::default()).unwrap();
        let k = block_on(p.profile(&prompt[..70], 0)).unwrap().unwrap();
        let mut all = vec![
            "attn_k",
            "attn_output",
            "attn_q",
            "attn_v",
            "ffn_down",
            "ffn_gate",
            "ffn_up",
        ];
        if m.config.hidden_dim % 32 != 0 {
            all.retain(|r| *r != "ffn_down");
            let floats = roles(&k, "matmul");
            assert_eq!(floats, [("ffn_down".to_string(), layers)], "{name}");
        }
        let want: Vec<(String, usize)> = all.iter().map(|r| (r.to_string(), layers)).collect();
        assert_eq!(roles(&k, "matmul_h"), want, "{name}");
        let k = block_on(f.profile(&prompt[..70], 0)).unwrap().unwrap();
        assert!(roles(&k, "matmul_h").is_empty(), "{name}");
    }
}

/// `matmul_h128` (128 x 128 tiles), which only grids of 256 workgroups take unasked (none of these
/// models'), forced on: a 150-token prompt (a whole 128-token tile and a partial one) against the
/// oracle with `matmul_h`'s tolerance (the header derives it for 32-column runs too), and
/// every product that `matmul_h` takes in a 100-token pass taking it; a 64-token pass keeps
/// `matmul_h` (one 64-token tile covers it).
#[test]
fn tall_tiles_stay_near_the_oracle() {
    let (tall, short) = (open_tiles(true, Some(true)), open_tiles(true, Some(false)));
    let prompt: Vec<u32> = (0..150).map(|i| 3 + (i * 53 % 250) as u32).collect();
    let f16 = RunConfig::parse("weights=f16").unwrap();
    for (name, base) in [("builtin", Model::builtin()), ("stories260K", stories())] {
        let (m, _) = measure::prepare(&base, &f16).unwrap();
        let mut cpu = CpuDecoder::with_kv(&m, KvConfig::default()).unwrap();
        let mut want = Vec::new();
        for (p, &t) in prompt.iter().enumerate() {
            want = block_on(cpu.step(t, p)).unwrap().to_vec();
        }
        let mut g = GpuDecoder::new(&tall, &m, KvConfig::default()).unwrap();
        let got = block_on(g.prefill(&prompt, 0)).unwrap().to_vec();
        let d = compare(&want, &got, TOL, &format!("{name} 128 x 128 tiles"));
        let mut s = GpuDecoder::new(&short, &m, KvConfig::default()).unwrap();
        let got = block_on(s.prefill(&prompt, 0)).unwrap().to_vec();
        let d0 = compare(&want, &got, TOL, &format!("{name} 128 x 64 tiles"));
        println!("{name}: max |dlogit| 128 x 128 tiles {d:.3e}, 128 x 64 {d0:.3e}");

        let mut p = GpuDecoder::new(&tall, &m, KvConfig::default()).unwrap();
        let k = block_on(p.profile(&prompt[..100], 0)).unwrap().unwrap();
        let mut q = GpuDecoder::new(&short, &m, KvConfig::default()).unwrap();
        let k0 = block_on(q.profile(&prompt[..100], 0)).unwrap().unwrap();
        let h = roles(&k0, "matmul_h");
        assert!(
            !h.is_empty() && roles(&k0, "matmul_h128").is_empty(),
            "{name}"
        );
        assert_eq!(roles(&k, "matmul_h128"), h, "{name}");
        assert!(roles(&k, "matmul_h").is_empty(), "{name}");
        let mut p = GpuDecoder::new(&tall, &m, KvConfig::default()).unwrap();
        let k = block_on(p.profile(&prompt[..64], 0)).unwrap().unwrap();
        assert_eq!(roles(&k, "matmul_h"), h, "{name}: 64 rows");
    }
}

/// Unasked, f16 math follows the activations: on with f16 ones (lavapipe has shader-f16), off with
/// f32 ones; asked off, off; the adapter note says which.
#[test]
fn f16_math_is_the_default_with_f16_activations() {
    for (act, half, want) in [
        (Activations::F16, None, true),
        (Activations::F32, None, false),
        (Activations::F16, Some(false), false),
    ] {
        let g = Gpu::open_blocking(GpuOptions {
            act: Some(act),
            half_math: half,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(g.half_math, want, "{act:?} {half:?}");
        let note = g.kernel_note();
        assert_eq!(
            note.contains("in f16 math (matmul_h"),
            want,
            "{act:?}: {note}"
        );
    }
}

/// f16 math needs f16 activations: asked for with f32 ones, the device does not open.
#[test]
fn f16_math_is_refused_with_f32_activations() {
    let e = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        half_math: Some(true),
        ..Default::default()
    })
    .err()
    .expect("refused");
    assert!(
        e.to_string().contains("f16 math needs f16 activations"),
        "{e}"
    );
}

/// What an accuracy run judges (`scenario::accuracy`): f16 weights scored in f16 math against the
/// oracle on the same weights stay within the f16-activation verdict's tolerance
/// (`Tolerance::for_backend`, 2 L 2^-11 (1 + max |logit|)), as do the same in f32 math; both
/// figures printed with the bound.
#[test]
fn f16_math_passes_the_f16_accuracy_verdict() {
    use nibble_engine::measure::Reference;
    use nibble_engine::tolerance::Tolerance;
    let f16 = RunConfig::parse("weights=f16").unwrap();
    let base = stories();
    let tok = base.tokenizer.as_ref().unwrap();
    let seqs = nibble_engine::eval::story_tokens(tok, &text("tinystories_sample.txt"), 96).unwrap();
    for (name, base) in [("builtin", Model::builtin()), ("stories260K", stories())] {
        let (m, _) = measure::prepare(&base, &f16).unwrap();
        let seqs: Vec<Vec<u32>> = seqs[..2]
            .iter()
            .map(|s| s.iter().map(|&t| t % m.config.vocab_size as u32).collect())
            .collect();
        let reference = block_on(Reference::run(&mut CpuDecoder::new(&m), &seqs)).unwrap();
        // 96-token sequences: matmul_h128 where forced (over 64 rows).
        for (half_math, tall) in [(true, None), (true, Some(true)), (false, None)] {
            let g = open_tiles(half_math, tall);
            let mut d = GpuDecoder::new(&g, &m, KvConfig::default()).unwrap();
            let div = block_on(measure::compare(&reference, &mut d, &seqs)).unwrap();
            let act = g.products_activations();
            let tol =
                Tolerance::for_backend("gpu", Some(act), &m.config, reference.max_abs_logit());
            println!(
                "{name} f16 math {half_math} tall {tall:?}: max |dlogit| {:.3e} of {:.3e}, top-1 {:.3}",
                div.max_abs_dlogit, tol.max_abs_dlogit, div.top1_agreement
            );
            let verdict = tol.check(&div);
            assert!(
                verdict.is_ok(),
                "{name} f16 math {half_math} {tall:?}: {verdict:?}"
            );
        }
    }
}
