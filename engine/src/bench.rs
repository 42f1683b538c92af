//! Latency measurement shared by `nibble bench` natively and the browser's latency scenario: prefill
//! tokens/s, time to first token and decode ms/token, as medians with their spread over repetitions.

use crate::gpu::GpuMemory;
pub use crate::gpu::KernelTime;
use crate::model::{Class, Model, TensorId};
use crate::precision::{Accounting, Fallback};
pub use crate::tuning::{Trial, Tuning};
use crate::{Decoder, Result};
use serde::{Deserialize, Serialize};
use web_time::Instant;

/// What to time and how often.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchOpts {
    pub reps: usize,
    pub warmup: usize,
    pub prompts: Vec<usize>,
    pub depths: Vec<usize>,
    pub decode_tokens: usize,
    /// Memory bandwidth in GB/s for the roofline column.
    pub bandwidth: Option<f64>,
    /// Profiled passes after each test's timed ones (0: none): GPU time per kernel.
    #[serde(default)]
    pub profile: usize,
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// 95% confidence interval of the mean (t-distribution), as ± half-width; `None` for one sample.
    pub ci95: Option<f64>,
    pub n: usize,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Stat {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let q = |p: f64| {
            let i = p * (n - 1) as f64;
            let (lo, hi) = (i.floor() as usize, i.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (i - lo as f64)
        };
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Stat {
            median: q(0.5),
            p10: q(0.1),
            p90: q(0.9),
            min: v[0],
            max: v[n - 1],
            mean,
            ci95: (n > 1).then(|| t95(n) * (var / n as f64).sqrt()),
            n,
        }
    }
}

/// Two-sided 95% Student t quantile for `n` samples (n - 1 degrees of freedom): the table to 30
/// degrees, then the Cornish-Fisher expansion around the normal quantile (within 2e-4 of the exact
/// value there).
pub fn t95(n: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if n < 2 {
        return f64::NAN;
    }
    let df = n - 1;
    if df <= T.len() {
        return T[df - 1];
    }
    let (z, v) = (1.959964f64, df as f64);
    z + (z.powi(3) + z) / (4.0 * v)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * v.powi(3))
}

/// Each kernel's time over profiled passes (the median), as `nibble bench --profile` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// Passes profiled; each kernel's `us` is the median over them.
    pub passes: usize,
    pub kernels: Vec<KernelTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prefill {
    pub prompt_tokens: usize,
    pub tokens_per_s: Stat,
    /// How the prompt was processed.
    pub method: String,
    /// GPU time per kernel of the prompt's first pass (`--profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decode {
    pub depth: usize,
    /// How the tokens were run ([`Decoder::decode_method`]). Absent in older results.
    #[serde(default)]
    pub method: String,
    /// Tokens timed per repetition. Absent (0) in older results.
    #[serde(default)]
    pub tokens: usize,
    /// Milliseconds per token, one figure per repetition (its time over its tokens): median and
    /// p10/p90 across repetitions. No CI here (see `reps_ms_per_token`).
    pub ms_per_token: Stat,
    /// Per repetition, so the spread between repetitions shows.
    pub rep_medians_ms: Vec<f64>,
    /// The repetition medians as a sample, as Speedometer reports its iterations: its `ci95` is the
    /// 95% interval of the mean over repetitions, with t for their number. Absent in older results.
    #[serde(default)]
    pub reps_ms_per_token: Option<Stat>,
    /// CPU time per token spent recording and submitting the GPU work (GPU backend only).
    pub cpu_encode_ms: Option<Stat>,
    /// Kernel dispatches per token (GPU backend only). Absent in older results.
    #[serde(default)]
    pub dispatches_per_token: Option<usize>,
    /// Weights plus the KV cache actually read for one token at this depth.
    pub bytes_per_token: u64,
    pub achieved_gb_s: f64,
    pub roofline_pct: Option<f64>,
    /// GPU time per kernel of one token at this depth (`--profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigBench {
    pub config: String,
    pub backend: String,
    pub weights: Accounting,
    pub fallbacks: Vec<Fallback>,
    pub gpu_memory: Option<GpuMemory>,
    pub kv_bytes: usize,
    pub build_s: f64,
    pub upload_s: f64,
    pub prefill: Vec<Prefill>,
    /// Time to first token: the first prompt length's prefill plus its first generated token.
    pub ttft_ms: Option<Stat>,
    pub decode: Vec<Decode>,
    pub not_measured: Vec<String>,
    /// A launch setting timed on this model before the benchmark ([`Decoder::tune`]). Absent where
    /// the backend had nothing to choose, and in older results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<Tuning>,
}

/// Bytes one decode step reads: every matrix except the embedding (one row of it), all norms, and the
/// keys and values of `n_att` positions.
pub fn bytes_per_token(m: &Model, n_att: usize) -> u64 {
    let c = &m.config;
    let mut b = 0u64;
    for id in TensorId::all(c, m.tied()) {
        b += match id.class() {
            Class::Norm => (c.dim * 4) as u64,
            _ if id == TensorId::TokEmbd => {
                (m.weights.matrix(TensorId::TokEmbd).n_bytes() / c.vocab_size) as u64
            }
            _ => m.weights.matrix(id).n_bytes() as u64,
        };
    }
    if m.tied() {
        b += m.weights.matrix(TensorId::TokEmbd).n_bytes() as u64;
    }
    b + (n_att * c.kv_dim() * 4 * 2 * c.n_layers) as u64
}

pub fn tokens(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (3 + (i * 7919 + salt * 104729) % (vocab - 3)) as u32)
        .collect()
}

/// Runs a prompt from position 0 and answers the first generated token (greedy).
pub async fn prefill(dec: &mut dyn Decoder, toks: &[u32]) -> Result<u32> {
    dec.prefill_argmax(toks, 0).await
}

impl ConfigBench {
    /// The record of configuration `config`: what `dec` (holding `m`) holds, and the timings.
    pub fn new(
        config: String,
        dec: &dyn Decoder,
        m: &Model,
        fallbacks: Vec<Fallback>,
        (build_s, upload_s): (f64, f64),
        t: Timings,
    ) -> ConfigBench {
        ConfigBench {
            config,
            backend: dec.backend(),
            weights: m.accounting(),
            fallbacks,
            gpu_memory: dec.gpu_memory(),
            kv_bytes: dec.kv_bytes(),
            build_s,
            upload_s,
            prefill: t.prefill,
            ttft_ms: t.ttft_ms,
            decode: t.decode,
            not_measured: t.not_measured,
            tuning: t.tuning,
        }
    }
}

/// The timed part of one configuration.
pub struct Timings {
    pub prefill: Vec<Prefill>,
    pub ttft_ms: Option<Stat>,
    pub decode: Vec<Decode>,
    pub not_measured: Vec<String>,
    pub tuning: Option<Tuning>,
}

/// Times prefill at each prompt length and decode at each depth on `dec`, which holds `m`.
/// `log` hears one line per finished test.
pub async fn measure(
    dec: &mut dyn Decoder,
    m: &Model,
    o: &BenchOpts,
    mut log: impl FnMut(&str),
) -> Result<Timings> {
    let c = m.config.clone();
    let reps = o.reps.max(1);
    let mut t = Timings {
        prefill: Vec::new(),
        ttft_ms: None,
        decode: Vec::new(),
        not_measured: Vec::new(),
        tuning: None,
    };
    // Launch choices timed on this model first; decode records carry them (`decode_method`).
    t.tuning = dec.tune().await?;
    if let Some(tuned) = &t.tuning {
        log(&format!("tuned: {}", tuned.note));
    }
    for (pi, &n) in o.prompts.iter().enumerate() {
        if n + 1 > c.seq_len {
            t.not_measured
                .push(format!("prefill {n}: the model's context is {}", c.seq_len));
            continue;
        }
        let toks = tokens(n, c.vocab_size, pi);
        let mut tps = Vec::new();
        let mut firsts = Vec::new();
        for r in 0..o.warmup + reps {
            dec.reset();
            let t0 = Instant::now();
            prefill(dec, &toks).await?;
            let s = t0.elapsed().as_secs_f64();
            if r >= o.warmup {
                tps.push(n as f64 / s);
                firsts.push(s * 1e3);
            }
        }
        log(&format!(
            "prefill {n}: {:.1} tokens/s (median)",
            Stat::of(&tps).median
        ));
        if t.ttft_ms.is_none() {
            t.ttft_ms = Some(Stat::of(&firsts));
        }
        dec.reset();
        let profile = profiled(dec, &toks, 0, o.profile).await?;
        t.prefill.push(Prefill {
            prompt_tokens: n,
            tokens_per_s: Stat::of(&tps),
            method: dec.prefill_method(),
            profile,
        });
    }
    for &depth in &o.depths {
        if depth + o.decode_tokens + 1 > c.seq_len {
            t.not_measured.push(format!(
                "decode at depth {depth}: needs {} positions, the model's context is {}",
                depth + o.decode_tokens + 1,
                c.seq_len
            ));
            continue;
        }
        let d = decode_at(dec, m, o, depth, reps).await?;
        log(&format!(
            "decode at depth {depth}: {:.3} ms/token (median), {:.1} GB/s",
            d.ms_per_token.median, d.achieved_gb_s
        ));
        t.decode.push(d);
    }
    Ok(t)
}

/// Decode at `depth`: `reps` repetitions (after the warm-up) of `decode_tokens` greedy tokens each,
/// run by the backend's [`Decoder::decode_greedy`] (on the GPU a loop that never waits for the CPU,
/// as llama-bench's `tg` queues its tokens). Each repetition is timed whole: one token's time is not
/// observable alone when the GPU runs ahead, so the figure per repetition is its mean per token.
/// Where the decoder may run positions again ([`Decoder::rewinds`]), the context is prefilled once
/// and every repetition decodes the same positions after it (the cache before them is the same);
/// otherwise each repetition prefills again.
async fn decode_at(
    dec: &mut dyn Decoder,
    m: &Model,
    o: &BenchOpts,
    depth: usize,
    reps: usize,
) -> Result<Decode> {
    let ctx = tokens(depth + 1, m.config.vocab_size, 7);
    let mut all = Vec::new();
    let mut encode = Vec::new();
    let mut rep_medians = Vec::new();
    let mut next = 0;
    for r in 0..o.warmup + reps {
        if r == 0 || !dec.rewinds() {
            dec.reset();
            next = prefill(dec, &ctx).await?;
        }
        let t0 = Instant::now();
        dec.decode_greedy(next, depth + 1, o.decode_tokens).await?;
        let ms = t0.elapsed().as_secs_f64() * 1e3 / o.decode_tokens.max(1) as f64;
        if r >= o.warmup {
            encode.extend(dec.encode_ms());
            rep_medians.push(ms);
            all.push(ms);
        }
    }
    let dispatches = dec.dispatches();
    let profile = profiled(dec, &[next], depth + 1, o.profile).await?;
    let st = Stat {
        ci95: None,
        ..Stat::of(&all)
    };
    // Mean attended positions over the timed tokens.
    let n_att = depth + 2 + o.decode_tokens / 2;
    let bytes = bytes_per_token(m, n_att);
    let gbs = bytes as f64 / (st.median / 1e3) / 1e9;
    Ok(Decode {
        depth,
        method: dec.decode_method(),
        tokens: o.decode_tokens,
        ms_per_token: st,
        reps_ms_per_token: (!rep_medians.is_empty()).then(|| Stat::of(&rep_medians)),
        rep_medians_ms: rep_medians,
        cpu_encode_ms: (!encode.is_empty()).then(|| Stat::of(&encode)),
        dispatches_per_token: dispatches,
        bytes_per_token: bytes,
        achieved_gb_s: gbs,
        roofline_pct: o.bandwidth.map(|bw| gbs / bw * 100.0),
        profile,
    })
}

/// `passes` profiled passes of `tokens` at `pos` ([`Decoder::profile`]: the first pass of a prompt,
/// or one decode step), each kernel's time the median over them. None where the backend cannot
/// profile or none was asked.
async fn profiled(
    dec: &mut dyn Decoder,
    tokens: &[u32],
    pos: usize,
    passes: usize,
) -> Result<Option<Profile>> {
    let mut runs = Vec::new();
    for _ in 0..passes {
        match dec.profile(tokens, pos).await? {
            Some(k) => runs.push(k),
            None => return Ok(None),
        }
    }
    let Some(first) = runs.first() else {
        return Ok(None);
    };
    let kernels = first
        .iter()
        .map(|k| {
            let xs: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.iter().find(|x| x.kernel == k.kernel))
                .map(|x| x.us)
                .collect();
            KernelTime {
                us: Stat::of(&xs).median,
                ..k.clone()
            }
        })
        .collect();
    Ok(Some(Profile { passes, kernels }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_follow_the_degrees_of_freedom() {
        // Published two-sided 95% quantiles (df in brackets); the old table said 2.042 from 12 to 31.
        for (n, t) in [
            (2, 12.706),
            (12, 2.201),
            (21, 2.086),
            (30, 2.045),
            (61, 2.000),
            (121, 1.980),
        ] {
            assert!((t95(n) - t).abs() < 1e-3, "n {n}: {} vs {t}", t95(n));
        }
        assert!(t95(1).is_nan());
    }

    #[test]
    fn the_interval_is_over_repetitions() {
        let m = crate::Model::builtin();
        let mut d = crate::cpu::CpuDecoder::new(&m);
        let o = BenchOpts {
            reps: 4,
            warmup: 0,
            prompts: vec![],
            depths: vec![0],
            decode_tokens: 6,
            bandwidth: None,
            profile: 0,
        };
        let t = crate::block_on(measure(&mut d, &m, &o, |_| {})).unwrap();
        let dec = &t.decode[0];
        // One figure per repetition (its mean per token), never one per token.
        assert_eq!(dec.ms_per_token.n, 4);
        assert_eq!(dec.tokens, 6);
        assert_eq!(dec.ms_per_token.ci95, None);
        let reps = dec.reps_ms_per_token.as_ref().unwrap();
        assert_eq!(reps.n, 4);
        let xs = &dec.rep_medians_ms;
        let mean = xs.iter().sum::<f64>() / 4.0;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
        let want = 3.182 * sd / 2.0;
        assert!(
            (reps.ci95.unwrap() - want).abs() <= 1e-9 * (1.0 + want),
            "{reps:?}"
        );
    }
}
