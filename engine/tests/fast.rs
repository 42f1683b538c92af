//! The fast CPU backend against the oracle: every weight type, KV type and instruction set this machine
//! has, step by step and in prompt batches, judged by the harness's own accuracy check
//! (`measure::compare` and `Tolerance::for_backend`, whose q8 rule states its derivation).

mod common;

use common::{stories, text};
use nibble_engine::config::{Class, TensorId};
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::fast::dot::Isa;
use nibble_engine::fast::{FastDecoder, FastOptions, MAX_ROWS};
use nibble_engine::kv::{KvConfig, KvType};
use nibble_engine::measure::{self, Reference, RunConfig};
use nibble_engine::quant::WType;
use nibble_engine::scenario::Tolerance;
use nibble_engine::{block_on, eval, Decoder, Model, Preset};

const WEIGHT_SPECS: [&str; 10] = [
    "weights=f32",
    "weights=f16",
    "weights=q8_0",
    "weights=q4_0",
    "weights=q4_1",
    "weights=q4_0,block=64",
    "weights=q8_0,block=128",
    "weights=q4_k",
    "weights=q6_k",
    "precision=attn-q8",
];

fn isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.available()).collect()
}

fn opts(isa: Isa) -> FastOptions {
    FastOptions { threads: 2, isa }
}

/// Whether any matrix of `m` meets 8-bit activations (a q4/q8 type), which sets the tolerance rule.
fn q8_path(m: &Model) -> bool {
    TensorId::all(&m.config, m.tied())
        .into_iter()
        .filter(|id| id.class() != Class::Norm)
        .any(|id| {
            matches!(
                m.weights.matrix(id).ty,
                WType::Q4_0 | WType::Q4_1 | WType::Q8_0
            )
        })
}

/// Two sequences from a model's own tokenizer: a story and the sample text.
fn seqs(m: &Model, text: &str, n: usize) -> Vec<Vec<u32>> {
    eval::story_tokens(m.tokenizer.as_ref().unwrap(), text, n).unwrap()[..1].to_vec()
}

/// The fast decoder judged as the harness judges a host: the oracle's reference on the same weights,
/// the tolerance of the path (q8 where a matrix is quantized, f32 otherwise).
fn judge(m: &Model, kv: KvConfig, o: FastOptions, seqs: &[Vec<u32>], what: &str) -> f64 {
    let reference = block_on(Reference::run(
        &mut CpuDecoder::with_kv(m, kv.clone()).unwrap(),
        seqs,
    ))
    .unwrap();
    let mut fast = FastDecoder::new(m, kv, o).unwrap();
    let d = block_on(measure::compare(&reference, &mut fast, seqs)).unwrap();
    let act = if q8_path(m) { "q8" } else { "f32" };
    let tol = Tolerance::for_backend("cpu", Some(act), &m.config, reference.max_abs_logit());
    println!(
        "{what} {}: max |dlogit| {:.3e} (bound {:.3e}), top-1 {:.3}, |dPPL|/PPL {:.2e}",
        o.isa.name(),
        d.max_abs_dlogit,
        tol.max_abs_dlogit,
        d.top1_agreement,
        (d.delta_ppl / d.ppl_reference).abs()
    );
    if let Err(e) = tol.check(&d) {
        panic!("{what} on {}: {e} ({})", o.isa.name(), tol.why);
    }
    d.max_abs_dlogit
}

#[test]
fn every_weight_type_matches_the_oracle_on_every_instruction_set() {
    let st = stories();
    let story = text("tinystories_sample.txt");
    let sample = include_str!("../../harness/assets/sample.txt");
    let tiny = Model::builtin();
    let qwen3 = Model::synthetic(Preset::Qwen3Tiny, 0);
    for (name, base, txt) in [
        ("stories260K", &st, story.as_str()),
        ("built-in", &tiny, sample),
        ("qwen3-tiny", &qwen3, sample),
    ] {
        let s = seqs(base, txt, 48);
        for spec in WEIGHT_SPECS {
            let (m, _) = measure::prepare(base, &RunConfig::parse(spec).unwrap()).unwrap();
            for isa in isas() {
                judge(
                    &m,
                    KvConfig::default(),
                    opts(isa),
                    &s,
                    &format!("{name} {spec}"),
                );
            }
        }
    }
}

#[test]
fn every_kv_type_and_the_window_match_the_oracle() {
    let base = Model::builtin();
    let (m, _) = measure::prepare(&base, &RunConfig::parse("weights=q4_0").unwrap()).unwrap();
    let s = seqs(&base, include_str!("../../harness/assets/sample.txt"), 96);
    let mut kvs: Vec<KvConfig> = [KvType::F16, KvType::Q8_0, KvType::Q4_0, KvType::Kivi4]
        .into_iter()
        .map(|t| KvConfig {
            k: t,
            v: if t == KvType::Kivi4 { KvType::Q4_0 } else { t },
            ..KvConfig::default()
        })
        .collect();
    kvs.push(KvConfig {
        window: Some(32),
        sinks: 4,
        ..KvConfig::default()
    });
    for kv in kvs {
        for isa in isas() {
            judge(&m, kv.clone(), opts(isa), &s, &kv.label());
        }
    }
}

/// A prompt in batches (longer than one batch, so it spans two) gives the logits its tokens give one
/// at a time. The kernels are the same but for the order of a few sums (token tiles), so f32 paths
/// agree to 1e-5 of the logit scale; on 8-bit paths a last-bit difference can move an activation
/// across a rounding boundary of its code, an error of the kind the q8 tolerance bounds, so they get
/// that bound. The scalar 8-bit path sums in the same order both ways: bit-identical.
#[test]
fn a_prompt_in_batches_equals_its_tokens_one_by_one() {
    let base = Model::builtin();
    let s = seqs(
        &base,
        include_str!("../../harness/assets/sample.txt"),
        MAX_ROWS + 40,
    );
    let prompt = &s[0][..MAX_ROWS + 37];
    for spec in [
        "weights=q4_0",
        "weights=q8_0",
        "weights=f16",
        "weights=q4_k",
    ] {
        let (m, _) = measure::prepare(&base, &RunConfig::parse(spec).unwrap()).unwrap();
        for isa in isas() {
            let mut one = FastDecoder::new(&m, KvConfig::default(), opts(isa)).unwrap();
            let mut last = Vec::new();
            for (p, &t) in prompt.iter().enumerate() {
                last = block_on(one.step(t, p)).unwrap().to_vec();
            }
            let mut batched = FastDecoder::new(&m, KvConfig::default(), opts(isa)).unwrap();
            let b = block_on(batched.prefill(prompt, 0)).unwrap();
            let scale = 1.0 + last.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = last
                .iter()
                .zip(b)
                .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
            let tol = match (isa, q8_path(&m)) {
                (Isa::Scalar, true) => 0.0,
                (_, true) => {
                    Tolerance::for_backend("cpu", Some("q8"), &m.config, 0.0).max_abs_dlogit as f32
                }
                (_, false) => 1e-5,
            } * scale;
            println!(
                "{spec} {}: prefill vs steps {d:.2e} (bound {tol:.2e})",
                isa.name()
            );
            assert!(d <= tol, "{spec} {}: {d} > {tol}", isa.name());
            // The next step continues from the batch's cache exactly as from the steps' cache.
            let n = prompt.len();
            let a = block_on(one.step(s[0][n], n)).unwrap().to_vec();
            let b = block_on(batched.step(s[0][n], n)).unwrap();
            let d = a
                .iter()
                .zip(b)
                .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(d <= tol, "{spec} {}: next step {d} > {tol}", isa.name());
        }
    }
}

/// Rows split over threads never change a row's sums: any thread count gives the same bits.
#[test]
fn thread_counts_give_identical_logits() {
    let base = Model::builtin();
    let (m, _) = measure::prepare(&base, &RunConfig::parse("weights=q4_0").unwrap()).unwrap();
    let s = seqs(&base, include_str!("../../harness/assets/sample.txt"), 24);
    let run = |threads| {
        let o = FastOptions {
            threads,
            isa: Isa::best(),
        };
        let mut d = FastDecoder::new(&m, KvConfig::default(), o).unwrap();
        let mut all = Vec::new();
        for (p, &t) in s[0].iter().enumerate() {
            all.extend_from_slice(block_on(d.step(t, p)).unwrap());
        }
        all
    };
    let one = run(1);
    for t in [2, 3] {
        assert!(one == run(t), "{t} threads differ from one");
    }
}

#[test]
fn bad_input_is_an_error() {
    let m = Model::builtin();
    let mut d = FastDecoder::new(&m, KvConfig::default(), FastOptions::default()).unwrap();
    let v = m.config.vocab_size as u32;
    let e = block_on(d.step(v, 0)).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = block_on(d.step(1, m.config.seq_len))
        .unwrap_err()
        .to_string();
    assert!(e.contains("past the model's context"), "{e}");
    let e = block_on(d.prefill(&[], 0)).unwrap_err().to_string();
    assert!(e.contains("empty prompt"), "{e}");
    if let Some(missing) = Isa::ALL.into_iter().find(|i| !i.available()) {
        let o = FastOptions {
            threads: 1,
            isa: missing,
        };
        let e = FastDecoder::new(&m, KvConfig::default(), o).err().unwrap();
        assert!(e.to_string().contains("not available"), "{e}");
    }
}
