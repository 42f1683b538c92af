//! The tiny family fixtures (`testdata/NAME-tiny.gguf` with transformers' logits in
//! `NAME-tiny.json`, written by `scripts/NAME-tiny.py`): loading them, forced decoding, and the
//! checks every family's test runs.

use super::models_dir;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::kv::KvConfig;
use nibble_engine::measure::{self, Reference, RunConfig};
use nibble_engine::scenario::Tolerance;
use nibble_engine::{block_on, Decoder, Model};
use serde_json::Value;

/// The model and its reference.
pub fn fixture(name: &str) -> (Model, Value) {
    let d = models_dir();
    let m = Model::load(&d.join(format!("{name}.gguf")), None).unwrap();
    let text = std::fs::read_to_string(d.join(format!("{name}.json"))).unwrap();
    (m, serde_json::from_str(&text).unwrap())
}

pub fn prompt(r: &Value) -> Vec<u32> {
    r["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

pub fn forced(dec: &mut dyn Decoder, tokens: &[u32]) -> Vec<Vec<f32>> {
    tokens
        .iter()
        .enumerate()
        .map(|(pos, &t)| block_on(dec.step(t, pos)).unwrap().to_vec())
        .collect()
}

/// The oracle against transformers' logits: the largest |difference| over every logit of every
/// position must stay within the harness's f32 rule (`Tolerance::for_backend`, 8 L sqrt(n) 2^-24
/// relative to 1 + max |logit|: both sides compute in f32 from the same values, so only summation
/// order and transcendental functions differ), and every top-1 must agree.
pub fn oracle_matches_transformers(name: &str, m: &Model, r: &Value) {
    let p = prompt(r);
    let logits = forced(&mut CpuDecoder::new(m), &p);
    let (mut worst, mut scale, mut off) = (0.0f64, 0.0f64, 0);
    for (pos, l) in logits.iter().enumerate() {
        let w: Vec<f64> = r["logits"][pos]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(w.len(), l.len(), "{name} position {pos}: vocabulary");
        for (a, b) in l.iter().zip(&w) {
            worst = worst.max((*a as f64 - b).abs());
            scale = scale.max(b.abs());
        }
        let want_top = (0..w.len()).max_by(|&i, &j| w[i].total_cmp(&w[j])).unwrap();
        off += (nibble_engine::eval::argmax(l) as usize != want_top) as usize;
    }
    let tol = Tolerance::for_backend("gpu", None, &m.config, scale);
    eprintln!(
        "{name}: oracle vs transformers max |dlogit| {worst:.2e} (bound {:.2e}, logits up to \
         {scale:.1}), top-1 differs at {off} of {} positions",
        tol.max_abs_dlogit,
        p.len()
    );
    assert!(worst <= tol.max_abs_dlogit, "{name}: max |dlogit| {worst}");
    assert_eq!(off, 0, "{name}: top-1");
}

/// Every backend against the oracle as the harness judges a run (`measure::compare`,
/// `Tolerance::for_backend`'s f32 rule): the fast CPU backend on the file's F16 matrices, and the
/// GPU (lavapipe, f32 activations) step by step and in one prompt batch on them and on Q4_0.
pub fn every_backend_matches_the_oracle(name: &str, base: &Model, seq: Vec<u32>) {
    use nibble_engine::fast::{FastDecoder, FastOptions};
    use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
    let seqs = vec![seq];
    let gpu = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe)");
    for spec in ["weights=f16", "weights=q4_0"] {
        let (m, _) = measure::prepare(base, &RunConfig::parse(spec).unwrap()).unwrap();
        let reference = block_on(Reference::run(&mut CpuDecoder::new(&m), &seqs)).unwrap();
        let tol = Tolerance::for_backend("gpu", None, &m.config, reference.max_abs_logit());
        let judge = |dec: &mut dyn Decoder, backend: &str| {
            let d = block_on(measure::compare(&reference, dec, &seqs)).unwrap();
            eprintln!(
                "{name} {spec} {backend}: max |dlogit| {:.2e} (bound {:.2e}), top-1 {}",
                d.max_abs_dlogit, tol.max_abs_dlogit, d.top1_agreement
            );
            if let Err(e) = tol.check(&d) {
                panic!("{name} {spec} {backend}: {e} ({})", tol.why);
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
        eprintln!("{name} {spec} gpu prefill: last row max |dlogit| {d:.2e}");
        assert!(d <= tol.max_abs_dlogit, "{name} {spec} prefill: {d}");
    }
}

/// Written back by nibble, the file reads as the same model computing the same logits, bit for
/// bit; the written bytes are returned for the family's own checks.
pub fn written_reads_back_the_same(m: &Model, seq: &[u32]) -> Vec<u8> {
    let mut bytes = Vec::new();
    m.write_gguf(&mut bytes).unwrap();
    let back = Model::from_gguf(&bytes, "written.gguf").unwrap();
    assert_eq!(back.config, m.config);
    let a = forced(&mut CpuDecoder::new(m), seq);
    let b = forced(&mut CpuDecoder::new(&back), seq);
    assert!(a == b, "the written file's logits differ");
    bytes
}
