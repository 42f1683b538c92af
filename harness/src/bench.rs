//! `nibble bench`: prefill and decode speed per weight configuration, like llama-bench, with medians and
//! spread over repetitions, the machine and the adapter, and the bytes each token had to read.

use crate::files::write_atomic;
use crate::native::{load_model, BackendArgs};
use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use nibble_engine::gpu::GpuMemory;
use nibble_engine::kv::KvConfig;
use nibble_engine::model::{Class, Model, Preset, TensorId};
use nibble_engine::precision::{Accounting, Fallback, Policy, WeightConfig};
use nibble_engine::quant::WType;
use nibble_engine::{Backend, Decoder};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A synthetic preset instead of --model: tiny, llama-1b, llama-7b.
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Weight configurations: f32, f16, q8_0, q4_0, q4_1, or a precision preset (attn-q8, all-q4).
    #[arg(long, default_value = "f16,q8_0,q4_0", value_delimiter = ',')]
    configs: Vec<String>,
    /// Block size for the quantized configurations.
    #[arg(long, default_value_t = 32)]
    block: usize,
    /// Measured repetitions per test (after warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Unrecorded warm-up repetitions per test.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Prompt lengths for prefill.
    #[arg(long, default_value = "128,512", value_delimiter = ',')]
    prompts: Vec<usize>,
    /// Context depths for decode.
    #[arg(long, default_value = "0,1024", value_delimiter = ',')]
    depths: Vec<usize>,
    /// Decode tokens timed per repetition.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Memory bandwidth in GB/s for the roofline column (decode reads every weight once per token).
    #[arg(long)]
    bandwidth: Option<f64>,
    /// Output directory for bench.json and bench.md (default: reports/bench-MODEL).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// 95% confidence interval of the mean (t-distribution), as ± half-width.
    pub ci95: f64,
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
            ci95: t95(n) * (var / n as f64).sqrt(),
            n,
        }
    }
}

/// Two-sided 95% Student t quantile for n - 1 degrees of freedom.
fn t95(n: usize) -> f64 {
    const T: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    match n {
        0 | 1 => f64::NAN,
        n if n <= 11 => T[n - 2],
        n if n <= 31 => 2.042,
        _ => 1.96,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Prefill {
    pub prompt_tokens: usize,
    pub tokens_per_s: Stat,
    /// How the prompt was processed.
    pub method: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decode {
    pub depth: usize,
    /// Per-token latency over every timed token of every repetition.
    pub ms_per_token: Stat,
    /// Median per repetition, so the spread between repetitions shows.
    pub rep_medians_ms: Vec<f64>,
    /// CPU time per token spent recording and submitting the GPU work (GPU backend only).
    pub cpu_encode_ms: Option<Stat>,
    /// Weights plus the KV cache actually read for one token at this depth.
    pub bytes_per_token: u64,
    pub achieved_gb_s: f64,
    pub roofline_pct: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigBench {
    pub config: String,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpus: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn this() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            hostname: read("/etc/hostname").trim().to_string(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub command: String,
    pub unix_time: u64,
    pub machine: Machine,
    pub backend: String,
    pub adapter: Option<nibble_engine::gpu::AdapterReport>,
    pub activations: String,
    pub model: String,
    pub params: usize,
    pub reps: usize,
    pub warmup: usize,
    pub bandwidth_gb_s: Option<f64>,
    pub configs: Vec<ConfigBench>,
}

fn weight_config(spec: &str, block: usize) -> Result<WeightConfig> {
    let mut w = WeightConfig {
        block,
        ..Default::default()
    };
    match WType::parse(spec) {
        Ok(t) => w.default = Some(t),
        Err(_) => w.policy = Policy::parse(spec).with_context(|| format!("--configs {spec}"))?,
    }
    w.validate()?;
    Ok(w)
}

/// Bytes one decode step reads: every matrix except the embedding (one row of it), all norms, and the
/// keys and values of `n_att` positions.
fn bytes_per_token(m: &Model, n_att: usize) -> u64 {
    let c = &m.config;
    let mut b = 0u64;
    for id in TensorId::all(c, m.tied()) {
        b += match id.class() {
            Class::Norm => (c.dim * 4) as u64,
            _ if id == TensorId::TokEmbd => (m.weights.tok_embd.n_bytes() / c.vocab_size) as u64,
            _ => m.weights.matrix(id).n_bytes() as u64,
        };
    }
    if m.tied() {
        b += m.weights.tok_embd.n_bytes() as u64;
    }
    b + (n_att * c.kv_dim() * 4 * 2 * c.n_layers) as u64
}

fn tokens(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (3 + (i * 7919 + salt * 104729) % (vocab - 3)) as u32)
        .collect()
}

/// Feeds a prompt; the GPU pipelines it without per-token readback.
fn prefill(dec: &mut dyn Decoder, toks: &[u32]) -> Result<u32> {
    let (&last, rest) = toks.split_last().context("empty prompt")?;
    for (p, &t) in rest.iter().enumerate() {
        dec.feed(t, p)?;
    }
    Ok(dec.step_argmax(last, rest.len())?)
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let rt = a.backend.open()?;
    let backend = rt.backend();
    let base: Option<Model> = match &a.preset {
        Some(_) => None,
        None => Some(load_model(&a.model)?),
    };
    let preset = a.preset.as_deref().map(Preset::parse).transpose()?;
    let reps = a.reps.max(1);
    let mut configs = Vec::new();
    for spec in &a.configs {
        let wc = weight_config(spec, a.block)?;
        eprintln!("[{spec}] building weights");
        let t0 = Instant::now();
        let (m, fallbacks) = match (&base, preset) {
            (Some(b), _) => {
                let mut m = b.clone();
                let fb = m.apply_weights(&wc)?;
                (m, fb)
            }
            (None, Some(p)) => Model::synthetic_with(p, 0, &wc)?,
            (None, None) => bail!("give --model or --preset"),
        };
        let build_s = t0.elapsed().as_secs_f64();
        let model_name = m.name.clone();
        let params = m.config.n_params(m.tied());
        let c = m.config.clone();
        let kv = KvConfig::default();
        eprintln!(
            "[{spec}] uploading ({} weight bytes)",
            m.accounting().total_bytes
        );
        let t0 = Instant::now();
        let mut dec = backend.decoder(&m, kv)?;
        let upload_s = t0.elapsed().as_secs_f64();
        let gpu_memory = match backend {
            Backend::Gpu(_) => dec.gpu_memory(),
            Backend::Cpu => None,
        };
        let kv_bytes = dec.kv_bytes();
        let mut not_measured = Vec::new();
        let mut pf = Vec::new();
        let mut ttft = None;
        for (pi, &n) in a.prompts.iter().enumerate() {
            if n + 1 > c.seq_len {
                not_measured.push(format!("prefill {n}: the model's context is {}", c.seq_len));
                continue;
            }
            let toks = tokens(n, c.vocab_size, pi);
            let mut tps = Vec::new();
            let mut firsts = Vec::new();
            for r in 0..a.warmup + reps {
                dec.reset();
                let t0 = Instant::now();
                prefill(dec.as_mut(), &toks)?;
                let s = t0.elapsed().as_secs_f64();
                if r >= a.warmup {
                    tps.push(n as f64 / s);
                    firsts.push(s * 1e3);
                }
            }
            eprintln!(
                "[{spec}] prefill {n}: {:.1} tokens/s (median)",
                Stat::of(&tps).median
            );
            if ttft.is_none() {
                ttft = Some(Stat::of(&firsts));
            }
            pf.push(Prefill {
                prompt_tokens: n,
                tokens_per_s: Stat::of(&tps),
                method: "token by token, one submission per token, no readback until the last (no batched prefill kernel yet)".into(),
            });
        }
        let mut decode = Vec::new();
        for &depth in &a.depths {
            if depth + a.decode_tokens + 1 > c.seq_len {
                not_measured.push(format!(
                    "decode at depth {depth}: needs {} positions, the model's context is {}",
                    depth + a.decode_tokens + 1,
                    c.seq_len
                ));
                continue;
            }
            let ctx = tokens(depth + 1, c.vocab_size, 7);
            let mut all = Vec::new();
            let mut encode = Vec::new();
            let mut rep_medians = Vec::new();
            for r in 0..a.warmup + reps {
                dec.reset();
                let mut next = prefill(dec.as_mut(), &ctx)?;
                let mut times = Vec::with_capacity(a.decode_tokens);
                for i in 0..a.decode_tokens {
                    let t0 = Instant::now();
                    next = dec.step_argmax(next, depth + 1 + i)?;
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                    if r >= a.warmup {
                        encode.extend(dec.encode_ms());
                    }
                }
                if r >= a.warmup {
                    rep_medians.push(Stat::of(&times).median);
                    all.extend(times);
                }
            }
            let st = Stat::of(&all);
            // Mean attended positions over the timed tokens.
            let n_att = depth + 2 + a.decode_tokens / 2;
            let bytes = bytes_per_token(&m, n_att);
            let gbs = bytes as f64 / (st.median / 1e3) / 1e9;
            eprintln!(
                "[{spec}] decode at depth {depth}: {:.3} ms/token (median), {gbs:.1} GB/s",
                st.median
            );
            decode.push(Decode {
                depth,
                ms_per_token: st,
                rep_medians_ms: rep_medians,
                cpu_encode_ms: (!encode.is_empty()).then(|| Stat::of(&encode)),
                bytes_per_token: bytes,
                achieved_gb_s: gbs,
                roofline_pct: a.bandwidth.map(|bw| gbs / bw * 100.0),
            });
        }
        drop(dec);
        configs.push(ConfigBench {
            config: spec.clone(),
            weights: m.accounting(),
            fallbacks,
            gpu_memory,
            kv_bytes,
            build_s,
            upload_s,
            prefill: pf,
            ttft_ms: ttft,
            decode,
            not_measured,
        });
        // Written after every configuration, so a crash or a time limit keeps what was measured.
        write_report(&a, &rt, &model_name, params, reps, &configs)?;
    }
    Ok(())
}

fn write_report(
    a: &BenchArgs,
    rt: &crate::native::Opened,
    model_name: &str,
    params: usize,
    reps: usize,
    configs: &[ConfigBench],
) -> Result<()> {
    let report = BenchReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: Machine::this(),
        backend: rt.backend().name(),
        adapter: rt.adapter().cloned(),
        activations: rt.activations().to_string(),
        model: model_name.to_string(),
        params,
        reps,
        warmup: a.warmup,
        bandwidth_gb_s: a.bandwidth,
        configs: configs.to_vec(),
    };
    let md = markdown(&report);
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("reports/bench-{model_name}")));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("bench.json"), |w| {
        Ok(serde_json::to_writer_pretty(w, &report)?)
    })?;
    write_atomic(&dir.join("bench.md"), |w| {
        use std::io::Write;
        Ok(w.write_all(md.as_bytes())?)
    })?;
    if configs.len() == a.configs.len() {
        println!("{md}");
        eprintln!("wrote {}/bench.json and bench.md", dir.display());
    }
    Ok(())
}

fn gib(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.2} MiB", b / (1u64 << 20) as f64)
    }
}

/// Bytes of the weight matrices alone (norms excluded), so the ratio to f16 is the storage format's.
fn matrix_bytes(a: &Accounting) -> usize {
    a.total_bytes - a.by_class.get(&Class::Norm).map_or(0, |n| n.bytes)
}

pub fn markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    let adapter = r.adapter.as_ref().map_or("none".to_string(), |a| {
        format!(
            "{} ({}, {}, driver {} {})",
            a.name, a.backend, a.device_type, a.driver, a.driver_info
        )
    });
    s += &format!(
        "model {} ({} params) | backend {} | adapter {adapter} | {} x {} ({} cpus) | {} reps after {} warm-up\n\n",
        r.model, r.params, r.backend, r.machine.cpu_model, r.machine.arch, r.machine.cpus, r.reps, r.warmup
    );
    s += "| model | config | size | params | backend | test | t/s |\n|---|---|---|---|---|---|---|\n";
    for c in &r.configs {
        let size = gib(c.weights.total_bytes as u64);
        for p in &c.prefill {
            s += &format!(
                "| {} | {} | {size} | {} | {} | pp{} | {:.2} ± {:.2} |\n",
                r.model,
                c.config,
                r.params,
                r.backend,
                p.prompt_tokens,
                p.tokens_per_s.median,
                p.tokens_per_s.ci95
            );
        }
        for d in &c.decode {
            let st = &d.ms_per_token;
            s += &format!(
                "| {} | {} | {size} | {} | {} | tg{}@d{} | {:.2} ± {:.2} |\n",
                r.model,
                c.config,
                r.params,
                r.backend,
                st.n / r.reps.max(1),
                d.depth,
                1e3 / st.median,
                1e3 / st.mean.powi(2) * st.ci95,
            );
        }
    }
    s += "\n| config | bits/weight | weights | KV | GPU total | TTFT ms (median) | decode depth | ms/token median [p10, p90] | CPU encode ms/token | bytes/token | GB/s | % of roofline |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for c in &r.configs {
        let total = c
            .gpu_memory
            .as_ref()
            .map_or("not measured (cpu)".into(), |m| gib(m.total));
        let ttft = c
            .ttft_ms
            .as_ref()
            .map_or("not measured".into(), |t| format!("{:.2}", t.median));
        for d in &c.decode {
            let st = &d.ms_per_token;
            s += &format!(
                "| {} | {:.3} | {} | {} | {total} | {ttft} | {} | {:.3} [{:.3}, {:.3}] | {} | {} | {:.1} | {} |\n",
                c.config,
                c.weights.bits_per_weight,
                gib(c.weights.total_bytes as u64),
                gib(c.kv_bytes as u64),
                d.depth,
                st.median,
                st.p10,
                st.p90,
                d.cpu_encode_ms.as_ref().map_or("n/a (cpu)".into(), |e| format!("{:.3}", e.median)),
                d.bytes_per_token,
                d.achieved_gb_s,
                d.roofline_pct.map_or("no --bandwidth".into(), |p| format!("{p:.1}%")),
            );
        }
        for n in &c.not_measured {
            s += &format!("| {} | not measured: {n} |\n", c.config);
        }
    }
    // Ratios between configurations, from the medians above.
    let f16 = r.configs.iter().find(|c| c.config == "f16");
    if let Some(f) = f16 {
        s += "\n| config | all weight bytes vs f16 | matrix bytes vs f16 | decode speed-up vs f16 (depth 0) |\n|---|---|---|---|\n";
        for c in &r.configs {
            let ratio = c.weights.total_bytes as f64 / f.weights.total_bytes as f64;
            let mratio = matrix_bytes(&c.weights) as f64 / matrix_bytes(&f.weights) as f64;
            let speed = match (c.decode.first(), f.decode.first()) {
                (Some(a), Some(b)) if a.depth == b.depth => {
                    format!("{:.2}x", b.ms_per_token.median / a.ms_per_token.median)
                }
                _ => "not measured".into(),
            };
            s += &format!(
                "| {} | {:.4} ({:.1}% smaller) | {:.5} | {speed} |\n",
                c.config,
                ratio,
                (1.0 - ratio) * 100.0,
                mratio
            );
        }
    }
    s
}
