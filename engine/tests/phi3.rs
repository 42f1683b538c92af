//! Phi-3 as llama.cpp's converter writes it (Q, K and V in one `attn_qkv`, gate and up in one
//! `ffn_up`, LongRoPE's short factors and attention factor) against Hugging Face transformers'
//! logits on the same weights (`testdata/phi3-tiny.*`, written by `scripts/phi3-tiny.py`), then
//! every backend against the oracle as the harness judges them, and the file nibble writes back.

mod common;

use common::models_dir;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gguf::Gguf;
use nibble_engine::kv::KvConfig;
use nibble_engine::measure::{self, Reference, RunConfig};
use nibble_engine::scenario::Tolerance;
use nibble_engine::{block_on, Decoder, Model};
use serde_json::Value;

fn fixture() -> (Model, Value) {
    let d = models_dir();
    let m = Model::load(&d.join("phi3-tiny.gguf"), None).unwrap();
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("phi3-tiny.json")).unwrap()).unwrap();
    (m, r)
}

fn prompt(r: &Value) -> Vec<u32> {
    r["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn forced(dec: &mut dyn Decoder, tokens: &[u32]) -> Vec<Vec<f32>> {
    tokens
        .iter()
        .enumerate()
        .map(|(pos, &t)| block_on(dec.step(t, pos)).unwrap().to_vec())
        .collect()
}

/// The largest |difference| over every logit of every position, the largest |reference logit|,
/// and the positions whose top-1 differs.
fn against(logits: &[Vec<f32>], want: &Value) -> (f64, f64, usize) {
    let (mut worst, mut scale, mut top1_off) = (0.0f64, 0.0f64, 0);
    for (p, l) in logits.iter().enumerate() {
        let w: Vec<f64> = want[p]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(w.len(), l.len(), "position {p}: vocabulary");
        for (a, b) in l.iter().zip(&w) {
            worst = worst.max((*a as f64 - b).abs());
            scale = scale.max(b.abs());
        }
        let top = |i: usize, j: usize| w[i].total_cmp(&w[j]);
        let want_top = (0..w.len()).max_by(|&i, &j| top(i, j)).unwrap();
        let got_top = (0..l.len()).max_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap();
        top1_off += (want_top != got_top) as usize;
    }
    (worst, scale, top1_off)
}

/// The oracle runs the file as transformers runs the model in float32: the fused tensors' rows are
/// found where the converter put them, RoPE pairs halves (NeoX) with each frequency divided by its
/// short factor, and cos and sin carry the attention factor (sqrt(1 + ln 8 / ln 32) = 1.26 here).
///
/// Tolerance: both sides compute in f32 from the same values (the matrices are f16 values on both),
/// so only summation order and transcendental functions differ; the harness's f32 rule
/// (`Tolerance::for_backend`, 8 L sqrt(n) 2^-24 relative to 1 + max |logit|, L 2, n 128: 1.1e-5)
/// bounds it. Every top-1 must agree.
#[test]
fn the_oracle_matches_transformers_on_phi3() {
    let (m, r) = fixture();
    assert_eq!(m.config.arch, nibble_engine::config::Arch::Phi3);
    assert!(m.config.rope_freqs, "rope_factors_short.weight read");
    let f = r["attn_factor"].as_f64().unwrap() as f32;
    assert_eq!(m.config.rope_attn_factor, f);
    let p = prompt(&r);
    let logits = forced(&mut CpuDecoder::new(&m), &p);
    let (worst, scale, off) = against(&logits, &r["logits"]);
    let tol = Tolerance::for_backend("gpu", None, &m.config, scale);
    eprintln!(
        "phi3-tiny: oracle vs transformers max |dlogit| {worst:.2e} (bound {:.2e}, logits up to \
         {scale:.1}), top-1 differs at {off} of {} positions",
        tol.max_abs_dlogit,
        p.len()
    );
    assert!(worst <= tol.max_abs_dlogit, "max |dlogit| {worst}");
    assert_eq!(off, 0, "top-1");
}

/// Phi-3.5's files declare 128K positions, but past the original context (32 here) the long factors
/// take over and every cached key's rotation would change: nibble stops at the original context.
#[test]
fn phi3_runs_to_its_original_context() {
    let (m, r) = fixture();
    let n = prompt(&r).len();
    assert_eq!(
        m.config.seq_len, n,
        "the original context, not the declared 256"
    );
    let mut dec = CpuDecoder::new(&m);
    block_on(dec.step(1, n - 1)).unwrap();
    let e = block_on(dec.step(1, n)).expect_err("past the context");
    assert!(
        e.to_string().contains("past the model's context of 32"),
        "{e}"
    );
}

/// Every backend on Phi-3 against the oracle as the harness judges a run (`measure::compare`,
/// `Tolerance::for_backend`'s f32 rule): the fast CPU backend on the file's F16 matrices, and the GPU
/// (lavapipe, f32 activations) step by step and in prompt batches on them and on Q4_0. Phi-3 adds
/// no kernel, only where rows are read and RoPE's table, which these paths cover; the 8-bit and
/// f16 activation paths are the kernels tests/fast.rs and tests/gpu.rs hold to their rules.
#[test]
fn every_backend_runs_phi3_as_the_oracle_does() {
    use nibble_engine::fast::{FastDecoder, FastOptions};
    use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
    let (base, r) = fixture();
    let seqs = vec![prompt(&r)];
    let gpu = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe)");
    for spec in ["weights=f16", "weights=q4_0"] {
        let (m, _) = measure::prepare(&base, &RunConfig::parse(spec).unwrap()).unwrap();
        let reference = block_on(Reference::run(&mut CpuDecoder::new(&m), &seqs)).unwrap();
        let tol = Tolerance::for_backend("gpu", None, &m.config, reference.max_abs_logit());
        let judge = |dec: &mut dyn Decoder, backend: &str| {
            let d = block_on(measure::compare(&reference, dec, &seqs)).unwrap();
            eprintln!(
                "phi3-tiny {spec} {backend}: max |dlogit| {:.2e} (bound {:.2e}), top-1 {}",
                d.max_abs_dlogit, tol.max_abs_dlogit, d.top1_agreement
            );
            if let Err(e) = tol.check(&d) {
                panic!("{spec} {backend}: {e} ({})", tol.why);
            }
        };
        if spec == "weights=f16" {
            let o = FastOptions::default();
            judge(
                &mut FastDecoder::new(&m, KvConfig::default(), o).unwrap(),
                "cpu",
            );
        }
        let mut g = GpuDecoder::new(&gpu, &m, KvConfig::default()).unwrap();
        judge(&mut g, "gpu");
        // The whole prompt in one batch (the prefill kernels): its last row against the oracle's.
        let last = block_on(g.prefill(&seqs[0], 0)).unwrap().to_vec();
        let want = forced(&mut CpuDecoder::new(&m), &seqs[0]).pop().unwrap();
        let d = last
            .iter()
            .zip(&want)
            .fold(0.0f64, |a, (x, y)| a.max((x - y).abs() as f64));
        eprintln!("phi3-tiny {spec} gpu prefill: last row max |dlogit| {d:.2e}");
        assert!(d <= tol.max_abs_dlogit, "{spec} prefill: {d}");
    }
}

/// nibble writes a Phi-3 as llama.cpp reads one: gate and up back in one `ffn_up` (gate first),
/// the short factors as `rope_factors_short`, the attention factor and the original context; Q, K
/// and V apart (llama.cpp takes either). Read back, it computes the same logits bit for bit.
#[test]
fn a_written_phi3_reads_back_the_same() {
    let (m, r) = fixture();
    let mut bytes = Vec::new();
    m.write_gguf(&mut bytes).unwrap();
    let g = Gguf::parse(&bytes, "written.gguf").unwrap();
    let dims = |n: &str| g.tensor(n).map(|t| t.dims.clone());
    let c = &m.config;
    assert_eq!(
        dims("blk.1.ffn_up.weight"),
        Some(vec![c.dim as u64, 2 * c.hidden_dim as u64])
    );
    assert_eq!(dims("blk.1.ffn_gate.weight"), None);
    assert_eq!(
        dims("blk.0.attn_q.weight"),
        Some(vec![c.dim as u64, c.dim as u64])
    );
    assert_eq!(
        dims("rope_factors_short.weight"),
        Some(vec![c.head_size() as u64 / 2])
    );
    let back = Model::from_gguf(&bytes, "written.gguf").unwrap();
    assert_eq!(back.config, m.config);
    let p = prompt(&r);
    let a = forced(&mut CpuDecoder::new(&m), &p);
    let b = forced(&mut CpuDecoder::new(&back), &p);
    assert!(a == b, "the written file's logits differ");
}

/// A fused tensor whose rows do not add up to Q, K and V is refused by its own name, before any
/// data is read.
#[test]
fn a_fused_tensor_of_the_wrong_shape_names_file_and_tensor() {
    let mut b = std::fs::read(models_dir().join("phi3-tiny.gguf")).unwrap();
    let name = b"blk.0.attn_qkv.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // n_dims (u32), then dims[0] (the row length) and dims[1] (the rows), u64 each.
    let rows = at + 4 + 8;
    assert_eq!(
        u64::from_le_bytes(b[rows..rows + 8].try_into().unwrap()),
        128
    );
    b[rows..rows + 8].copy_from_slice(&96u64.to_le_bytes());
    let e = Model::from_gguf(&b, "bad-phi3.gguf")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bad-phi3.gguf")
            && e.contains("\"blk.0.attn_qkv.weight\"")
            && e.contains("[64, 96]")
            && e.contains("[64, 128]"),
        "{e}"
    );
}
