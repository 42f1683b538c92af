//! Quantized weights and KV caches on the CPU: reconstruction bounds, the cost of each KV type on the
//! real model, kivi4's f16 residual, sliding windows, and exactness of the f32 path against an
//! independent reference implementation.

mod common;
use common::*;
use half::f16;
use nibble_engine::block_on;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::eval;
use nibble_engine::kv::{KvCache, KvConfig, KvType};
use nibble_engine::measure::{self, Reference, RunConfig};
use nibble_engine::model::{Config, Model, TensorId};
use nibble_engine::precision::WeightConfig;
use nibble_engine::quant::{QMatrix, WType};
use nibble_engine::{Decoder, Preset};

fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Each element lies within half a quantization step of its original. The one exception is q4_0's
/// asymmetric range: codes run -8..7 around a scale set by the largest-magnitude value, so a value of the
/// opposite sign and near-equal magnitude clamps at +7 and may be a full step off (ggml behaves the same).
#[test]
fn reconstruction_within_half_a_step() {
    let cols = 512;
    let mut x = lcg(8 * cols, 1);
    // An all-zero block, and a block with one huge outlier.
    x[..256].fill(0.0);
    x[512..768].iter_mut().for_each(|v| *v *= 0.01);
    x[600] = 1000.0;
    for ty in [WType::Q4_0, WType::Q4_1, WType::Q8_0] {
        for block in [32, 64, 128, 256] {
            let m = QMatrix::quantize(ty, block, 8, cols, &x);
            let y = m.to_f32();
            for (bi, (xb, yb)) in x.chunks(block).zip(y.chunks(block)).enumerate() {
                let max = xb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let min = xb.iter().copied().fold(f32::INFINITY, f32::min);
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let step = match ty {
                    WType::Q4_0 => amax / 8.0,
                    WType::Q4_1 => (max - min) / 15.0,
                    _ => amax / 127.0,
                };
                // f16 rounding of the scale (and min) adds at most 2^-11 relative per term.
                let slack = step * 0.02 + min.abs() * 1e-3 + 1e-6;
                for (i, (a, b)) in xb.iter().zip(yb).enumerate() {
                    let err = (a - b).abs();
                    // q4_0 clamps x * (-8 / max) >= 7.5: opposite sign to max and |x| >= 15/16 |max|.
                    let signed_max =
                        xb.iter()
                            .copied()
                            .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                    let clamped = ty == WType::Q4_0
                        && a.signum() != signed_max.signum()
                        && a.abs() >= signed_max.abs() * (15.0 / 16.0) * (1.0 - 1e-3);
                    let bound = if clamped { step } else { step / 2.0 };
                    assert!(
                        err <= bound + slack,
                        "{ty:?} block {block} #{bi} elem {i}: {a} -> {b} (step {step})"
                    );
                }
                if xb.iter().all(|v| *v == 0.0) {
                    assert!(yb.iter().all(|v| *v == 0.0), "{ty:?} zero block");
                }
            }
            // The outlier itself survives almost exactly.
            assert!(
                (y[600] - 1000.0).abs() < 1000.0 * 2e-3,
                "{ty:?} {block}: outlier {}",
                y[600]
            );
        }
    }
}

#[test]
fn inf_weights_are_rejected_with_the_tensor_name() {
    let mut m = Model::builtin();
    let (r, c) = (
        m.weights.matrix(TensorId::Up(0)).rows,
        m.weights.matrix(TensorId::Up(0)).cols,
    );
    let mut v = m.weights.matrix(TensorId::Up(0)).to_f32();
    v[3] = f32::INFINITY;
    *m.weights.matrix_mut(TensorId::Up(0)) = QMatrix::from_f32(r, c, v);
    let cfg = WeightConfig {
        default: Some(WType::Q4_0),
        ..Default::default()
    };
    let e = m.apply_weights(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.ffn_up.weight") && e.contains("inf"),
        "{e}"
    );
}

#[test]
fn bigger_blocks_cost_fewer_bits_and_more_error() {
    let base = Model::builtin();
    let seqs = eval::story_tokens(
        base.tokenizer.as_ref().unwrap(),
        include_str!("../../harness/assets/sample.txt"),
        128,
    )
    .unwrap();
    let reference = block_on(Reference::run(&mut CpuDecoder::new(&base), &seqs[..1])).unwrap();
    let mut last: Option<(f64, f64)> = None;
    for block in [32, 256] {
        let cfg = RunConfig::parse(&format!("weights=q4_1,block={block}")).unwrap();
        let (m, fb) = measure::prepare(&base, &cfg).unwrap();
        assert!(fb.is_empty());
        let bpw = m.accounting().by_class[&nibble_engine::model::Class::Attention].bits_per_weight;
        let d = block_on(measure::compare(
            &reference,
            &mut CpuDecoder::new(&m),
            &seqs[..1],
        ))
        .unwrap();
        if let Some((b0, kl0)) = last {
            assert!(bpw < b0, "bits: {bpw} vs {b0}");
            assert!(d.mean_kl > kl0, "KL: {} vs {kl0}", d.mean_kl);
        }
        last = Some((bpw, d.mean_kl));
    }
}

/// The KV types on stories260K, both texts: q8_0 costs less perplexity than 4-bit, and kivi4 (per-channel
/// keys) less than per-token q4_0.
#[test]
fn kv_cache_types_cost_what_they_should_on_stories260k() {
    let m = stories();
    let tok = m.tokenizer.as_ref().unwrap();
    for name in ["tinystories_sample.txt", "tinystories_valid_head.txt"] {
        let seqs = eval::story_tokens(tok, &text(name), m.config.seq_len).unwrap();
        let reference = block_on(Reference::run(&mut CpuDecoder::new(&m), &seqs)).unwrap();
        let mut d = std::collections::HashMap::new();
        for kv in KvType::ALL {
            let cfg = KvConfig {
                k: kv,
                v: kv,
                ..KvConfig::default()
            };
            let mut dec = CpuDecoder::with_kv(&m, cfg).unwrap();
            let r = block_on(measure::compare(&reference, &mut dec, &seqs)).unwrap();
            println!(
                "{name} kv={}: PPL {:.4} (Δ {:+.4}), mean KL {:.5}, top-1 {:.2}%",
                kv.name(),
                r.ppl,
                r.delta_ppl,
                r.mean_kl,
                r.top1_agreement * 100.0
            );
            d.insert(kv, r);
        }
        let dp = |t: KvType| d[&t].delta_ppl.abs();
        assert_eq!(d[&KvType::F32].delta_ppl, 0.0);
        assert!(dp(KvType::Q8_0) < dp(KvType::Q4_0), "{name}");
        assert!(dp(KvType::Q8_0) < dp(KvType::Kivi4), "{name}");
        assert!(dp(KvType::Kivi4) < dp(KvType::Q4_0), "{name}");
        assert!(dp(KvType::F16) < dp(KvType::Q8_0), "{name}");
    }
}

/// Stores `n` random rows in a kivi4 key cache with group `g`, then checks every gathered row: complete
/// groups equal the per-channel q4_1 quantization of the f16-rounded rows, the partial group equals the
/// f16 rows exactly.
#[test]
fn kivi4_partial_group_reads_the_f16_residual() {
    let c = Preset::Tiny.config();
    let dim = c.kv_dim();
    let g = 32;
    let n = 2 * g + 13;
    let rows = lcg(n * dim, 9);
    let cfg = KvConfig {
        k: KvType::Kivi4,
        v: KvType::F16,
        group: g,
        ..KvConfig::default()
    };
    let mut cache = KvCache::new(&c, cfg.clone()).unwrap();
    for p in 0..n {
        let r = &rows[p * dim..(p + 1) * dim];
        cache.store(0, p, r, r);
    }
    let positions: Vec<usize> = (0..n).collect();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    cache.gather(0, n - 1, &positions, &mut k, &mut v);
    let h = |x: f32| f16::from_f32(x).to_f32();
    for grp in 0..2 {
        // Channel-major f16 values of this group, quantized with one q4_1 block per channel.
        let mut by_ch = vec![0.0; dim * g];
        for t in 0..g {
            for ch in 0..dim {
                by_ch[ch * g + t] = h(rows[(grp * g + t) * dim + ch]);
            }
        }
        let want = QMatrix::quantize(WType::Q4_1, g, dim, g, &by_ch).to_f32();
        for t in 0..g {
            for ch in 0..dim {
                assert_eq!(k[(grp * g + t) * dim + ch], want[ch * g + t]);
            }
        }
    }
    for p in 2 * g..n {
        for ch in 0..dim {
            assert_eq!(k[p * dim + ch], h(rows[p * dim + ch]), "residual row {p}");
        }
    }
    // Accounting: measured bytes equal the formula, residual and scales included.
    // Only layer 0 was filled.
    assert_eq!(cache.bytes(), cfg.bytes_after(&c, n) / c.n_layers);
}

/// With a group longer than the sequence every key is still in the f16 residual, so kivi4 keys give
/// exactly the logits of an f16 key cache; once a group completes they differ.
#[test]
fn kivi4_logits_follow_the_residual_path() {
    let m = Model::builtin();
    let toks: Vec<u32> = (0..40).map(|i| 3 + (i * 7 % 200) as u32).collect();
    let run = |k: KvType, group: usize| {
        let cfg = KvConfig {
            k,
            v: KvType::F32,
            group,
            ..KvConfig::default()
        };
        let mut dec = CpuDecoder::with_kv(&m, cfg).unwrap();
        toks.iter()
            .enumerate()
            .map(|(p, &t)| block_on(dec.step(t, p)).unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    let f16 = run(KvType::F16, 32);
    let kivi_long = run(KvType::Kivi4, 64);
    assert_eq!(kivi_long, f16);
    let kivi = run(KvType::Kivi4, 32);
    // Positions before the first group completes read only f16 keys.
    assert_eq!(kivi[..31], f16[..31]);
    assert_ne!(kivi[31], f16[31]);
    assert_ne!(kivi[39], f16[39]);
}

#[test]
fn sliding_window_memory_is_flat_and_decoding_passes_the_context() {
    let m = Model::builtin();
    let c = &m.config;
    let (w, s) = (64, 4);
    for kv in KvType::ALL {
        let cfg = KvConfig {
            k: kv,
            v: kv,
            group: 16,
            window: Some(w),
            sinks: s,
            ctx: None,
        };
        let mut dec = CpuDecoder::with_kv(&m, cfg.clone()).unwrap();
        let total = c.seq_len + 100;
        let mut bytes = Vec::new();
        for p in 0..total {
            let logits = block_on(dec.step((p % 250) as u32 + 3, p)).unwrap();
            assert!(logits.iter().all(|x| x.is_finite()));
            bytes.push(dec.kv_bytes());
            assert_eq!(
                dec.kv_bytes(),
                cfg.bytes_after(c, p + 1),
                "{} at {p}",
                kv.name()
            );
        }
        let steady = &bytes[2 * w..];
        let max = *steady.iter().max().unwrap();
        if kv == KvType::Kivi4 {
            // Keys flush a group every 16 tokens, so memory cycles with that period and never grows.
            assert_eq!(steady[..16], steady[16..32]);
            assert_eq!(max, *bytes[w..2 * w].iter().max().unwrap());
        } else {
            assert!(steady.iter().all(|&b| b == bytes[w - 1]), "{}", kv.name());
        }
    }
    // Without a window the context is a hard limit.
    let mut dec = CpuDecoder::new(&m);
    let e = block_on(dec.step(3, c.seq_len)).unwrap_err().to_string();
    assert!(e.contains("past the model's context"), "{e}");
}

/// A window at least as long as the sequence changes nothing; a short one attends to sinks + recent only.
#[test]
fn window_longer_than_sequence_is_exact() {
    let m = Model::builtin();
    let toks: Vec<u32> = (0..50).map(|i| 3 + (i * 11 % 200) as u32).collect();
    let run = |window: Option<usize>, sinks: usize| {
        let mut dec = CpuDecoder::with_kv(
            &m,
            KvConfig {
                window,
                sinks,
                ..KvConfig::default()
            },
        )
        .unwrap();
        toks.iter()
            .enumerate()
            .map(|(p, &t)| block_on(dec.step(t, p)).unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    let full = run(None, 0);
    assert_eq!(run(Some(50), 4), full);
    let short = run(Some(16), 4);
    assert_eq!(short[..16], full[..16]);
    assert_ne!(short[20], full[20]);
}

#[test]
fn kv_budget_counts_real_bytes() {
    let c: Config = stories().config;
    let f16 = KvConfig {
        k: KvType::F16,
        v: KvType::F16,
        ..KvConfig::default()
    };
    let kivi = KvConfig {
        k: KvType::Kivi4,
        v: KvType::Kivi4,
        ..KvConfig::default()
    };
    let budget = 1 << 20;
    let n16 = f16.tokens_in_budget(&c, budget).unwrap();
    let nk = kivi.tokens_in_budget(&c, budget).unwrap();
    for (cfg, n) in [(&f16, n16), (&kivi, nk)] {
        assert!(cfg.bytes_after(&c, n) <= budget);
        assert!(cfg.bytes_after(&c, n + 1) > budget);
    }
    // stories260K's KV row is 32 values: f16 = 64 B, kivi4 keys 16 + 4 = 20 B amortized, values 20 B.
    assert_eq!(f16.bytes_per_token(&c), 5.0 * 2.0 * 64.0);
    assert_eq!(kivi.bytes_per_token(&c), 5.0 * 40.0);
    let ratio = nk as f64 / n16 as f64;
    assert!(
        ratio > 3.0 && ratio < 3.3,
        "kivi4 holds {ratio:.3}x the context of f16"
    );
}

/// A dot product written here, not taken from the engine: eight running lanes, their sum, then the
/// tail, the summation order the CPU oracle documents (ARCHITECTURE.md, the GPU tests), so that a bug
/// in the engine's `quant::dot` (a lost tail, a wrong lane) shows as a bit difference.
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let n8 = a.len() / 8 * 8;
    let mut lanes = [0.0f32; 8];
    for i in 0..n8 {
        lanes[i % 8] += a[i] * b[i];
    }
    let mut tail = 0.0f32;
    for i in n8..a.len() {
        tail += a[i] * b[i];
    }
    lanes.iter().sum::<f32>() + tail
}

/// Softmax written here: subtract the max, exponentiate, divide by the sum (llama2.c's `softmax`).
fn softmax_here(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// An independent, naive transliteration of llama2.c's forward pass (f32, no abstractions, no engine
/// arithmetic), used to check that the engine's f32 path with an f32 KV cache reproduces it bit for
/// bit.
fn naive_forward(m: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let c = &m.config;
    let (d, hs, kvd) = (c.dim, c.head_size(), c.kv_dim());
    let w = |id: TensorId| m.weights.matrix(id).to_f32();
    let matmul = |w: &[f32], x: &[f32], rows: usize| -> Vec<f32> {
        (0..rows)
            .map(|r| dot8(&w[r * x.len()..(r + 1) * x.len()], x))
            .collect()
    };
    let rms = |x: &[f32], wt: &[f32]| -> Vec<f32> {
        let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let s = 1.0 / (ss + c.norm_eps).sqrt();
        x.iter().zip(wt).map(|(a, b)| b * (s * a)).collect()
    };
    let mut kc: Vec<Vec<f32>> = vec![Vec::new(); c.n_layers];
    let mut vc: Vec<Vec<f32>> = vec![Vec::new(); c.n_layers];
    let emb = w(TensorId::TokEmbd);
    let mut out = Vec::new();
    for (pos, &t) in tokens.iter().enumerate() {
        let mut x = emb[t as usize * d..(t as usize + 1) * d].to_vec();
        for l in 0..c.n_layers {
            let xb = rms(&x, m.weights.norm(TensorId::AttnNorm(l)));
            let mut q = matmul(&w(TensorId::Wq(l)), &xb, d);
            let mut k = matmul(&w(TensorId::Wk(l)), &xb, kvd);
            let v = matmul(&w(TensorId::Wv(l)), &xb, kvd);
            for vec in [&mut q, &mut k] {
                for i in (0..vec.len()).step_by(2) {
                    let freq = 1.0 / c.rope_theta.powf((i % hs) as f32 / hs as f32);
                    let (sn, cs) = (pos as f32 * freq).sin_cos();
                    let (a, b) = (vec[i], vec[i + 1]);
                    vec[i] = a * cs - b * sn;
                    vec[i + 1] = a * sn + b * cs;
                }
            }
            kc[l].extend_from_slice(&k);
            vc[l].extend_from_slice(&v);
            let mut att_out = vec![0.0; d];
            for h in 0..c.n_heads {
                let kvh = h / (c.n_heads / c.n_kv_heads) * hs;
                let qh = &q[h * hs..(h + 1) * hs];
                let mut sc: Vec<f32> = (0..=pos)
                    .map(|p| dot8(qh, &kc[l][p * kvd + kvh..][..hs]) / (hs as f32).sqrt())
                    .collect();
                softmax_here(&mut sc);
                for (p, a) in sc.iter().enumerate() {
                    for j in 0..hs {
                        att_out[h * hs + j] += a * vc[l][p * kvd + kvh + j];
                    }
                }
            }
            let o = matmul(&w(TensorId::Wo(l)), &att_out, d);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xb = rms(&x, m.weights.norm(TensorId::FfnNorm(l)));
            let g = matmul(&w(TensorId::Gate(l)), &xb, c.hidden_dim);
            let u = matmul(&w(TensorId::Up(l)), &xb, c.hidden_dim);
            let hb: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let o = matmul(&w(TensorId::Down(l)), &hb, d);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        let xf = rms(&x, m.weights.norm(TensorId::OutNorm));
        out.push(matmul(&w(TensorId::Output), &xf, c.vocab_size));
    }
    out
}

#[test]
fn f32_weights_and_f32_kv_reproduce_the_oracle_exactly() {
    for base in [stories(), Model::builtin()] {
        let cfg = RunConfig::parse("weights=f32,kv=f32").unwrap();
        let (m, _) = measure::prepare(&base, &cfg).unwrap();
        let toks: Vec<u32> = (0..24).map(|i| 3 + (i * 13 % 250) as u32).collect();
        let want = naive_forward(&base, &toks);
        let mut dec = CpuDecoder::with_kv(&m, cfg.kv.clone()).unwrap();
        for (p, &t) in toks.iter().enumerate() {
            let got = block_on(dec.step(t, p)).unwrap();
            assert!(
                got.iter()
                    .zip(&want[p])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} position {p}",
                base.name
            );
        }
    }
}

#[test]
fn compare_refuses_other_tokens_or_another_vocabulary() {
    // zip would silently truncate: scoring other tokens, or logits of another vocabulary, against a
    // reference is an error naming the first position that differs.
    let m = Model::builtin();
    let seqs = vec![vec![1u32, 40, 41, 42, 43, 44]];
    let r = block_on(measure::Reference::run(&mut CpuDecoder::new(&m), &seqs)).unwrap();
    let ok = block_on(measure::compare(&r, &mut CpuDecoder::new(&m), &seqs)).unwrap();
    assert_eq!(ok.tokens, r.tokens());
    let other = vec![vec![1u32, 40, 41, 99, 43, 44]];
    let e = block_on(measure::compare(&r, &mut CpuDecoder::new(&m), &other)).unwrap_err();
    assert!(e.to_string().contains("position 2"), "{e}");
    let s = stories();
    let e = block_on(measure::compare(&r, &mut CpuDecoder::new(&s), &seqs)).unwrap_err();
    assert!(e.to_string().contains("512 logits"), "{e}");
}

#[test]
fn the_harness_rejudges_a_hosts_accuracy() {
    use nibble_engine::scenario::{AccuracyRow, Capabilities, Tolerance};
    let m = Model::builtin();
    let seqs = vec![vec![1u32, 40, 41, 42, 43, 44]];
    let r = block_on(measure::Reference::run(&mut CpuDecoder::new(&m), &seqs)).unwrap();
    let d = block_on(measure::compare(&r, &mut CpuDecoder::new(&m), &seqs)).unwrap();
    let caps = |backend: &str, act: Option<&str>| Capabilities {
        host: "test".into(),
        user_agent: None,
        backend: backend.into(),
        gpu_unavailable: None,
        adapter: None,
        activations: act.map(str::to_string),
        matvec_kernel: None,
        shader_checks: None,
        shader_modules: None,
        cpu: None,
        apis: Default::default(),
    };
    let row = |d: measure::Divergence, pass: bool| AccuracyRow {
        config: "as-loaded".into(),
        backend: "test".into(),
        divergence: d,
        // A tolerance the host made up: the harness ignores it.
        tolerance: Tolerance::for_backend("gpu", Some("f16"), &m.config, 1e9),
        pass,
        failure: None,
        seconds: 0.0,
    };
    // Exact figures pass on every backend.
    let mut a = row(d.clone(), true);
    a.rejudge(&caps("webgpu", Some("f32")), &m.config, &r);
    assert!(a.pass && a.failure.is_none(), "{:?}", a.failure);
    // A host claiming PASS with figures outside its backend's tolerance fails, and says why.
    let mut bad = d.clone();
    bad.max_abs_dlogit = 0.5;
    let mut b = row(bad, true);
    b.rejudge(&caps("wasm-cpu", None), &m.config, &r);
    assert!(!b.pass);
    let why = b.failure.unwrap();
    assert!(
        why.contains("max |dlogit|") && why.contains("reported PASS"),
        "{why}"
    );
    // Fewer tokens than the reference scored: fails whatever the figures.
    let mut short = d;
    short.tokens -= 1;
    let mut c = row(short, true);
    c.rejudge(&caps("webgpu", Some("f32")), &m.config, &r);
    assert!(
        !c.pass
            && c.failure
                .unwrap()
                .contains("scored 4 tokens, the reference 5")
    );
}

#[test]
fn tolerances_follow_the_error_model_of_each_path() {
    use nibble_engine::scenario::Tolerance;
    let c = Model::builtin().config;
    let rel = |b: &str, a: Option<&str>| Tolerance::for_backend(b, a, &c, 0.0).max_abs_dlogit;
    // The native CPU runs the oracle's own code: nothing but bit-identical passes.
    assert_eq!(rel("cpu", None), 0.0);
    // f32 everywhere else: 8 L sqrt(n) 2^-24 with L = 2 and n = 512 for the built-in model.
    let f32_rel = 8.0 * 2.0 * 512f64.sqrt() * 2f64.powi(-24);
    assert!((rel("wasm-cpu", None) - f32_rel).abs() < 1e-15);
    assert!((rel("webgpu", Some("f32")) - f32_rel).abs() < 1e-15);
    // f16 activations: 2 L 2^-11.
    assert!((rel("webgpu", Some("f16")) - 4.0 * 2f64.powi(-11)).abs() < 1e-15);
    // Deeper and wider models are allowed proportionally more.
    let big = nibble_engine::Preset::Llama7b.config();
    let f = |c: &nibble_engine::Config| {
        Tolerance::for_backend("webgpu", Some("f32"), c, 0.0).max_abs_dlogit
    };
    assert!(f(&big) > 10.0 * f(&c));
}

/// Top-1 flips count against a host unless the reference's own two logits were closer than twice the
/// allowed |dlogit|: Firefox's f16 run flipped one of 32 built-in tokens at a margin of that order.
#[test]
fn a_top1_flip_at_a_near_tie_is_not_a_failure_but_a_clear_flip_is() {
    use nibble_engine::measure::Divergence;
    use nibble_engine::scenario::Tolerance;
    let c = Model::builtin().config;
    let t = Tolerance::for_backend("webgpu", Some("f16"), &c, 4.0);
    let d = |margin: f64| Divergence {
        tokens: 32,
        mean_kl: 1e-7,
        p99_kl: 1e-7,
        top1_agreement: 31.0 / 32.0,
        top1_flip_margins: vec![margin],
        max_abs_dlogit: 3e-3,
        ppl_reference: 500.0,
        ppl: 500.0,
        delta_ppl: 0.0,
        backend: "test".into(),
    };
    assert_eq!(t.check(&d(0.5 * t.max_abs_dlogit)), Ok(()));
    let e = t.check(&d(3.0 * t.max_abs_dlogit)).unwrap_err();
    assert!(e.contains("top-1 96.88% < 99%"), "{e}");
    // Older results carry no margins: every flip counts.
    let old = Divergence {
        top1_flip_margins: vec![],
        ..d(0.0)
    };
    assert!(t.check(&old).is_err());
}
