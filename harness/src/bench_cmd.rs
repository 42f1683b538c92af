//! `nibble bench`: prefill and decode speed per weight configuration, like llama-bench, with medians and
//! spread over repetitions, the machine and the adapter, and the bytes each token had to read.

use crate::args::ModelArgs;
use crate::backend::BackendArgs;
use crate::files::write_atomic;
use crate::native::load_model;
use anyhow::{bail, Context, Result};
use clap::Args;
use nibble_engine::bench::{self, BenchOpts, ConfigBench};
use nibble_engine::block_on;
use nibble_engine::kv::{KvConfig, KvType};
use nibble_engine::model::{Class, Model};
use nibble_engine::precision::{Accounting, Policy, WeightConfig};
use nibble_engine::quant::WType;
use nibble_engine::Preset;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A synthetic preset instead of --model: tiny, llama-1b, llama-7b, llama-8b.
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Weight configurations: a type (f32, f16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k), a precision preset
    /// (attn-q8, all-q4), or as-loaded (the file's own types, e.g. a Q4_K_M mix).
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
    /// KV cache type for keys and values (f32, f16, q8_0, q4_0, kivi4); f16 as llama-bench's
    /// `-ctk`/`-ctv` default, so that decode at depth reads what the peer's does.
    #[arg(long, default_value = "f16")]
    kv: String,
    /// Memory bandwidth in GB/s for the roofline column (decode reads every weight once per token).
    #[arg(long)]
    bandwidth: Option<f64>,
    /// Profile N passes after each test's timed ones: GPU time per kernel (natively, where the
    /// adapter writes timestamps inside passes), each kernel's median over them.
    #[arg(long, default_value_t = 0)]
    profile: usize,
    /// Output directory for bench.json and bench.md (default: reports/bench-MODEL).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// The commit the binary was built from.
    pub commit: Option<String>,
    pub unix_time: u64,
    pub machine: Machine,
    pub backend: String,
    pub adapter: Option<nibble_engine::gpu::AdapterReport>,
    pub activations: String,
    /// KV cache type (keys and values).
    pub kv: String,
    /// wgpu's shader safety code kept on the GPU (`on`, `off`, ...).
    pub shader_checks: Option<String>,
    /// The decode kernels and row sums chosen on the GPU, and why.
    pub kernels: Option<String>,
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

pub fn bench(a: BenchArgs) -> Result<()> {
    let rt = a.backend.open_with(a.profile > 0)?;
    let no_profile = (a.profile > 0).then(|| rt.no_profile()).flatten();
    let backend = rt.backend();
    let base: Option<Model> = match &a.preset {
        Some(_) => None,
        None => Some(load_model(&a.model)?),
    };
    let preset = a.preset.as_deref().map(Preset::parse).transpose()?;
    let reps = a.reps.max(1);
    let kv_type = KvType::parse(&a.kv).context("--kv")?;
    let mut configs = Vec::new();
    for spec in &a.configs {
        let wc = weight_config(spec, a.block)?;
        eprintln!("[{spec}] building weights");
        let t0 = Instant::now();
        let (m, fallbacks) = match (&base, preset) {
            (Some(b), _) => b.with_weights(&wc)?,
            (None, Some(p)) => Model::synthetic_with(p, 0, &wc)?,
            (None, None) => bail!("give --model or --preset"),
        };
        let build_s = t0.elapsed().as_secs_f64();
        let model_name = m.name.clone();
        let params = m.config.n_params(m.tied());
        let kv = KvConfig {
            k: kv_type,
            v: kv_type,
            ..KvConfig::default()
        };
        eprintln!(
            "[{spec}] uploading ({} weight bytes)",
            m.accounting().total_bytes
        );
        let t0 = Instant::now();
        let mut dec = backend.decoder(&m, kv)?;
        let upload_s = t0.elapsed().as_secs_f64();
        let opts = BenchOpts {
            reps,
            warmup: a.warmup,
            prompts: a.prompts.clone(),
            depths: a.depths.clone(),
            decode_tokens: a.decode_tokens,
            bandwidth: a.bandwidth,
            profile: if no_profile.is_some() { 0 } else { a.profile },
        };
        let mut t = block_on(bench::measure(dec.as_mut(), &m, &opts, |l| {
            eprintln!("[{spec}] {l}")
        }))?;
        t.not_measured.extend(
            no_profile
                .iter()
                .map(|why| format!("kernel profile: {why}")),
        );
        configs.push(ConfigBench::new(
            spec.clone(),
            dec.as_ref(),
            &m,
            fallbacks,
            (build_s, upload_s),
            t,
        ));
        drop(dec);
        // Written after every configuration, so a crash or a time limit keeps what was measured.
        write_report(&a, &rt, &model_name, params, reps, &configs)?;
    }
    Ok(())
}

fn write_report(
    a: &BenchArgs,
    rt: &crate::backend::OpenBackend,
    model_name: &str,
    params: usize,
    reps: usize,
    configs: &[ConfigBench],
) -> Result<()> {
    let report = BenchReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: crate::results::commit(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: Machine::this(),
        backend: rt.backend().name(),
        adapter: rt.adapter().cloned(),
        activations: rt.activations().to_string(),
        kv: a.kv.clone(),
        shader_checks: rt.shader_checks(),
        kernels: rt.kernels(),
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

/// A confidence half-width, or "n/a" with one repetition.
fn ci(c: Option<f64>) -> String {
    c.map_or("n/a".into(), |c| format!("{c:.2}"))
}

/// A llama-bench style row for one decode figure: tokens per second at a depth.
fn tg_row(r: &BenchReport, c: &ConfigBench, size: &str, d: &bench::Decode) -> String {
    let st = &d.ms_per_token;
    format!(
        "| {} | {} | {size} | {} | {} | tg{}@d{} | {:.2} ± {} |\n",
        r.model,
        c.config,
        r.params,
        r.backend,
        d.tokens,
        d.depth,
        1e3 / st.median,
        ci(d.reps_ms_per_token
            .as_ref()
            .and_then(|r| r.ci95.map(|c| 1e3 / r.mean.powi(2) * c))),
    )
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
        "model {} ({} params) | backend {} | adapter {adapter} | KV {} | shader checks {} | kernels {} | {} x {} ({} cpus) | {} reps after {} warm-up | nibble {}\n\n",
        r.model, r.params, r.backend, r.kv, r.shader_checks.as_deref().unwrap_or("-"), r.kernels.as_deref().unwrap_or("-"), r.machine.cpu_model, r.machine.arch, r.machine.cpus, r.reps, r.warmup,
        r.commit.as_deref().unwrap_or("of an unknown commit")
    );
    s += "| model | config | size | params | backend | test | t/s |\n|---|---|---|---|---|---|---|\n";
    for c in &r.configs {
        let size = gib(c.weights.total_bytes as u64);
        for p in &c.prefill {
            s += &format!(
                "| {} | {} | {size} | {} | {} | pp{} | {:.2} ± {} |\n",
                r.model,
                c.config,
                r.params,
                r.backend,
                p.prompt_tokens,
                p.tokens_per_s.median,
                ci(p.tokens_per_s.ci95)
            );
        }
        for d in &c.decode {
            s += &tg_row(r, c, &size, d);
        }
    }
    s += "\n| config | bits/weight | weights | KV | GPU total | TTFT ms (median) | decode depth | ms/token median [p10, p90] | CPU encode ms/token | dispatches/token | bytes/token | GB/s | % of roofline |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
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
                "| {} | {:.3} | {} | {} | {total} | {ttft} | {} | {:.3} [{:.3}, {:.3}] | {} | {} | {} | {:.1} | {} |\n",
                c.config,
                c.weights.bits_per_weight,
                gib(c.weights.total_bytes as u64),
                gib(c.kv_bytes as u64),
                d.depth,
                st.median,
                st.p10,
                st.p90,
                d.cpu_encode_ms.as_ref().map_or("n/a (cpu)".into(), |e| format!("{:.3}", e.median)),
                d.dispatches_per_token.map_or("n/a (cpu)".into(), |n| n.to_string()),
                d.bytes_per_token,
                d.achieved_gb_s,
                d.roofline_pct.map_or("no --bandwidth".into(), |p| format!("{p:.1}%")),
            );
        }
        for n in &c.not_measured {
            s += &format!("| {} | not measured: {n} |\n", c.config);
        }
    }
    s += &decode_notes(r);
    s += &profiles(r);
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

/// How each configuration decoded, with what was tuned on its model (`Decoder::tune`) and every
/// setting tried.
fn decode_notes(r: &BenchReport) -> String {
    let mut s = String::new();
    for c in &r.configs {
        if let Some(d) = c.decode.first().filter(|d| !d.method.is_empty()) {
            s += &format!("\n{} decode: {}\n", c.config, d.method);
        }
        if let Some(t) = &c.tuning {
            let trials: Vec<String> = (t.trials.iter())
                .map(|x| match x.ms_per_token {
                    Some(ms) => format!("{} {ms:.3}", x.setting),
                    None => format!("{} stopped", x.setting),
                })
                .collect();
            s += &format!(
                "\n{} tuned, {} chosen; ms/token per setting: {}\n",
                c.config,
                t.chosen,
                trials.join(", ")
            );
        }
    }
    s
}

/// Each profiled test's kernels, slowest first, with their share of the pass's summed GPU time.
fn profiles(r: &BenchReport) -> String {
    let mut s = String::new();
    for c in &r.configs {
        let tests =
            c.prefill
                .iter()
                .filter_map(|p| Some((format!("pp{}", p.prompt_tokens), p.profile.as_ref()?)))
                .chain(c.decode.iter().filter_map(|d| {
                    Some((format!("decode depth {}", d.depth), d.profile.as_ref()?))
                }));
        for (test, p) in tests {
            let total: f64 = p.kernels.iter().map(|k| k.us).sum();
            let n: usize = p.kernels.iter().map(|k| k.dispatches).sum();
            s += &format!(
                "\n{} {test}: GPU time per kernel, one pass (median of {} profiled passes): {:.1} us in {n} dispatches\n\n| kernel | dispatches | us | % |\n|---|---|---|---|\n",
                c.config, p.passes, total
            );
            let mut ks: Vec<_> = p.kernels.iter().collect();
            ks.sort_by(|a, b| b.us.total_cmp(&a.us));
            for k in ks {
                s += &format!(
                    "| {} | {} | {:.1} | {:.1} |\n",
                    k.kernel,
                    k.dispatches,
                    k.us,
                    100.0 * k.us / total.max(f64::MIN_POSITIVE)
                );
            }
        }
    }
    s
}
