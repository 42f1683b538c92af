//! The measurement scenarios that run in every browser and natively, and the one result schema they
//! share. The harness serialises these structs into `results.json`; the wasm API returns them as JSON;
//! nothing redefines them in JS.
//!
//! Every figure here is measured in the run that reports it. Where a host cannot measure something,
//! the field is `None` and a reason goes into `not_measured`.

use crate::bench::{self, BenchOpts, ConfigBench};
use crate::gpu::{AdapterReport, GpuMemory};
pub use crate::host::HostMemory;
use crate::kv::{KvConfig, KvType};
pub use crate::measure::label;
use crate::measure::{self, Divergence, Reference, RunConfig};
use crate::precision::Accounting;
pub use crate::tolerance::Tolerance;
use crate::{Backend, Config, Model, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use web_time::Instant;

/// Whether a feature exists here, and what was seen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Availability {
    pub available: bool,
    pub detail: String,
}

/// Scenario "capabilities": what the host offers.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Capabilities {
    /// "native" or "browser".
    pub host: String,
    pub user_agent: Option<String>,
    /// The backend every other scenario ran on: "webgpu", "wasm-cpu", "native-gpu" or "cpu".
    pub backend: String,
    /// Why WebGPU (or a native GPU) was not used, when it was not.
    pub gpu_unavailable: Option<String>,
    pub adapter: Option<AdapterReport>,
    /// "f16"/"f32" on a GPU ("q8" where TiledInt8 runs), "q8" on the fast CPU backend, or `None`.
    pub activations: Option<String>,
    /// The fast CPU backend's instruction set and threads, and why that many threads (absent in
    /// older results and on GPU hosts).
    #[serde(default)]
    pub cpu: Option<String>,
    /// The decode matvec kernel and how it was chosen (timed in browsers).
    #[serde(default)]
    pub matvec_kernel: Option<String>,
    /// wgpu's shader safety code kept (`gpu::ShaderChecks`): "on" in browsers, "off" natively.
    #[serde(default)]
    pub shader_checks: Option<String>,
    /// Whether the adapter's shader compiler took every kernel module (`Gpu::check_modules`), before
    /// any model needed them.
    #[serde(default)]
    pub shader_modules: Option<String>,
    /// Storage, memory and threading APIs by name (cache_api, opfs, performance_memory, ...).
    pub apis: BTreeMap<String, Availability>,
}

/// One configuration of scenario "accuracy": forced decoding against the native oracle's logits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccuracyRow {
    pub config: String,
    pub backend: String,
    pub divergence: Divergence,
    pub tolerance: Tolerance,
    pub pass: bool,
    pub failure: Option<String>,
    pub seconds: f64,
}

impl AccuracyRow {
    /// Judges this row again from its raw figures, as the harness does with every host's record: the
    /// tolerance from the host's backend and the harness's own reference, the tokens scored against
    /// the reference's. A host's own PASS is never trusted; where it disagrees, `failure` says so.
    pub fn rejudge(&mut self, caps: &Capabilities, c: &Config, reference: &Reference) {
        let tol = Tolerance::for_backend(
            &caps.backend,
            caps.activations.as_deref(),
            c,
            reference.max_abs_logit(),
        );
        let mut fails = Vec::new();
        if self.divergence.tokens != reference.tokens() {
            fails.push(format!(
                "scored {} tokens, the reference {}",
                self.divergence.tokens,
                reference.tokens()
            ));
        }
        if let Err(e) = tol.check(&self.divergence) {
            fails.push(e);
        }
        let pass = fails.is_empty();
        if pass != self.pass {
            fails.push(format!(
                "the host reported {}, the harness's check says {}",
                if self.pass { "PASS" } else { "FAIL" },
                if pass { "PASS" } else { "FAIL" }
            ));
        }
        self.pass = pass;
        self.failure = (!fails.is_empty()).then(|| fails.join("; "));
        self.tolerance = tol;
    }
}

/// One configuration of scenario "memory".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryRow {
    pub config: String,
    pub weights: Accounting,
    /// Engine-accounted GPU bytes by category; `None` on a CPU backend.
    pub gpu: Option<GpuMemory>,
    pub kv_bytes: usize,
    pub host: HostMemory,
}

/// One KV type of scenario "context".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextRow {
    pub kv: String,
    pub bytes_per_token: f64,
    pub budget_bytes: usize,
    pub tokens_in_budget: Option<usize>,
    /// Against the f32-KV oracle on the same weights.
    pub divergence: Divergence,
}

/// The sliding-window run of scenario "context": decoding past the model's context for real.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowRun {
    pub window: usize,
    pub sinks: usize,
    pub model_context: usize,
    pub positions_decoded: usize,
    /// KV bytes held at the window's first fill and at the end.
    pub kv_bytes_at_window: usize,
    pub kv_bytes_at_end: usize,
    pub host_at_window: HostMemory,
    pub host_at_end: HostMemory,
    pub gpu_total_bytes: Option<u64>,
    /// KV bytes did not grow after the window filled.
    pub flat: bool,
    pub ms_per_token: f64,
    /// The weights it ran (q4_0: the window's memory does not depend on them). Absent in older results.
    #[serde(default)]
    pub weights: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Context {
    pub rows: Vec<ContextRow>,
    pub window: Option<WindowRun>,
    /// Why there is no sliding-window run, where the scenario did not make one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_not_run: Option<String>,
}

/// What a scenario produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "scenario", content = "data", rename_all = "lowercase")]
pub enum Outcome {
    Capabilities(Box<Capabilities>),
    Accuracy(Vec<AccuracyRow>),
    Latency(Vec<ConfigBench>),
    Memory(Vec<MemoryRow>),
    Context(Context),
    Reload(Box<Reload>),
}

/// The scenarios, in the order a run takes them ("reload" last: in a browser it reloads the page).
/// They serialize to the names `results.json` has always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Accuracy,
    Latency,
    Memory,
    Context,
    Reload,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Accuracy,
        Scenario::Latency,
        Scenario::Memory,
        Scenario::Context,
        Scenario::Reload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Accuracy => "accuracy",
            Scenario::Latency => "latency",
            Scenario::Memory => "memory",
            Scenario::Context => "context",
            Scenario::Reload => "reload",
        }
    }

    pub fn parse(s: &str) -> Result<Scenario> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|x| x.name()).collect();
                crate::Error::Invalid(format!(
                    "unknown scenario {s:?}: expected {}",
                    all.join(", ")
                ))
            })
    }

    /// Scored against the native oracle's references.
    pub fn needs_reference(self) -> bool {
        matches!(self, Scenario::Accuracy | Scenario::Context)
    }

    /// Runs on the model the host loaded once (every scenario but reload, which loads on its own).
    pub fn needs_loaded_model(self) -> bool {
        self != Scenario::Reload
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "failed")]
    Failed,
    /// It never ran (the host failed before it), with the reason in `error`.
    #[serde(rename = "not measured")]
    NotMeasured,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::NotMeasured => "not measured",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario's record in `results.json`: its outcome, or why it has none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioRecord {
    pub name: Scenario,
    pub status: Status,
    pub error: Option<String>,
    pub seconds: f64,
    /// Figures this scenario could not measure here, with the reason.
    #[serde(default)]
    pub not_measured: Vec<String>,
    pub outcome: Option<Outcome>,
}

impl ScenarioRecord {
    /// The record of a scenario that ran for `seconds` and produced `out` (or failed with its error).
    pub fn finished(
        name: Scenario,
        seconds: f64,
        out: std::result::Result<Outcome, String>,
    ) -> Self {
        let (status, error, outcome) = match out {
            Ok(o) => (Status::Ok, None, Some(o)),
            Err(e) => (Status::Failed, Some(e), None),
        };
        ScenarioRecord {
            name,
            status,
            error,
            seconds,
            not_measured: Vec::new(),
            outcome,
        }
    }

    /// The record of a scenario that did not run, with the reason.
    pub fn not_run(name: Scenario, status: Status, why: String, seconds: f64) -> Self {
        ScenarioRecord {
            name,
            status,
            error: Some(why),
            seconds,
            not_measured: Vec::new(),
            outcome: None,
        }
    }
}

/// What the scenarios on a loaded model read.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub model: &'a Model,
    pub backend: Backend<'a>,
    pub params: &'a Params,
    /// The native oracle's references, one per accuracy configuration (f32 first).
    pub refs: &'a [Reference],
}

/// Runs scenario `s` on a loaded model: the one dispatch the page and the native runner share.
/// Reload loads the model itself through the host's store, so each host runs it with [`reload_run`].
pub async fn run(s: Scenario, i: Inputs<'_>, progress: impl FnMut(String)) -> Result<Outcome> {
    let (m, b, p) = (i.model, i.backend, i.params);
    Ok(match s {
        Scenario::Accuracy => Outcome::Accuracy(accuracy(m, b, p, i.refs, progress).await?),
        Scenario::Latency => Outcome::Latency(latency(m, b, p, progress).await?),
        Scenario::Memory => Outcome::Memory(memory(m, b, p, progress).await?),
        Scenario::Context => match i.refs.first() {
            Some(r) => Outcome::Context(context(m, b, p, r, progress).await?),
            None => {
                return Err(crate::Error::Invalid(
                    "context needs the f32 reference".into(),
                ))
            }
        },
        Scenario::Reload => {
            return Err(crate::Error::Invalid(
                "reload loads through the host's store: run it with reload_run".into(),
            ))
        }
    })
}

/// Parameters of a run, the same for every host so the figures compare.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Token sequences for forced decoding (the harness tokenizes once for every host).
    pub seqs: Vec<Vec<u32>>,
    /// Weight configurations for accuracy, each with its oracle reference (same order).
    pub accuracy_configs: Vec<String>,
    /// Weight configurations for latency and memory.
    pub latency_configs: Vec<String>,
    pub bench: BenchOpts,
    pub kv_budget: usize,
    pub kv_types: Vec<KvType>,
    pub window: usize,
    pub sinks: usize,
    /// Tokens decoded past the model's context in the window run.
    pub past_context: usize,
    /// Weight configuration loaded cold and warm by the reload scenario.
    #[serde(default = "default_reload_config")]
    pub reload_config: String,
    /// Positions every decoder's KV cache holds but the window run's (`--ctx`); `None`: the
    /// model's whole context.
    #[serde(default)]
    pub ctx: Option<usize>,
}

/// The context a run's decoders hold by default: llama.cpp's default `-c` (4096), or the model's
/// where shorter. A 128K-context model's whole cache is gigabytes, past what a page may allocate.
pub const DEFAULT_CTX: usize = 4096;

/// `kv` with the run's context where it sets none and has no window.
fn kv_in(p: &Params, mut kv: KvConfig) -> KvConfig {
    if kv.window.is_none() && kv.ctx.is_none() {
        kv.ctx = p.ctx;
    }
    kv
}

fn default_reload_config() -> String {
    "weights=q4_0".into()
}

/// One load of scenario "reload", through the component cache, up to the first generated token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadRun {
    pub load: crate::cache::LoadReport,
    /// Handing the weights to the backend: the GPU upload, which overlaps the load (each tensor as it
    /// arrives), plus making the decoder; pipeline compilation not included.
    pub upload_s: f64,
    /// Compiling the GPU pipelines while making the decoder: the first decoder on a device does.
    pub compile_s: Option<f64>,
    /// Load and upload (interleaved), until the weights are on the device. The speed-up compares this; shader compilation
    /// and the first token come after it and are reported on their own.
    pub ready_s: f64,
    /// The prompt's prefill and the first token.
    pub ttft_ms: f64,
    /// Load + upload + first token: what a user waits for.
    pub total_s: f64,
    pub prompt_tokens: usize,
    pub first_token: u32,
}

/// Scenario "reload": a cold load (empty cache) and a warm one (the page reloaded in the same
/// profile, or the process loading again natively).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reload {
    pub config: String,
    pub cold: ReloadRun,
    pub warm: Option<ReloadRun>,
    /// cold ready / warm ready: the load and upload, not the first token (whose prefill does not
    /// depend on the cache and is reported on its own).
    pub speedup: Option<f64>,
    /// Why there is no warm figure, if there is none.
    pub warm_missing: Option<String>,
}

impl Reload {
    pub fn new(
        config: String,
        cold: ReloadRun,
        warm: std::result::Result<ReloadRun, String>,
    ) -> Reload {
        let (warm, warm_missing) = match warm {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(e)),
        };
        Reload {
            speedup: warm.as_ref().map(|w| cold.ready_s / w.ready_s),
            config,
            cold,
            warm,
            warm_missing,
        }
    }
}

/// Loads `src` through `store` as `p.reload_config` says, makes a decoder and generates the first
/// token of the first sequence's opening tokens.
pub async fn reload_run(
    src: &mut dyn crate::cache::Source,
    store: Option<&dyn crate::cache::Store>,
    backend: Backend<'_>,
    p: &Params,
    mut progress: impl FnMut(String),
) -> Result<ReloadRun> {
    let cfg = RunConfig::parse(&p.reload_config)?;
    // Peak memory is the load's own, not the process's earlier high-water mark.
    HostMemory::reset_peak();
    let t0 = Instant::now();
    let ready = backend
        .load(src, &cfg.weights, store, &mut |m| progress(m))
        .await?;
    let mut dec = ready.decoder(kv_in(p, cfg.kv.clone()))?;
    let mut load = ready.report.clone();
    let sink_s = load.upload_s;
    load.host_after = HostMemory::now();
    let compile_s = dec.compile_ms().map(|ms| ms / 1e3);
    let ready_s = t0.elapsed().as_secs_f64() - compile_s.unwrap_or(0.0);
    let upload_s = sink_s + (ready_s - load.total_s);
    let prompt: Vec<u32> = p
        .seqs
        .first()
        .map_or(vec![1], |s| s.iter().take(16).copied().collect());
    progress("first token".into());
    let t2 = Instant::now();
    let first_token = dec.prefill_argmax(&prompt, 0).await?;
    let ttft_ms = t2.elapsed().as_secs_f64() * 1e3;
    Ok(ReloadRun {
        ready_s,
        load,
        upload_s,
        compile_s,
        ttft_ms,
        total_s: t0.elapsed().as_secs_f64(),
        prompt_tokens: prompt.len(),
        first_token,
    })
}

/// Scenario "accuracy": each configuration against its oracle reference.
pub async fn accuracy(
    base: &Model,
    backend: Backend<'_>,
    p: &Params,
    refs: &[Reference],
    mut progress: impl FnMut(String),
) -> Result<Vec<AccuracyRow>> {
    let mut rows = Vec::new();
    for (spec, reference) in p.accuracy_configs.iter().zip(refs) {
        progress(format!("accuracy {}", label(spec)));
        let cfg = RunConfig::parse(spec)?;
        let (m, _) = measure::prepare(base, &cfg)?;
        let t0 = Instant::now();
        let mut dec = backend.decoder(&m, kv_in(p, cfg.kv.clone()))?;
        let d = measure::compare(reference, dec.as_mut(), &p.seqs).await?;
        let (name, act) = backend_kind(&backend);
        let tol = Tolerance::for_backend(name, act, &m.config, reference.max_abs_logit());
        let verdict = tol.check(&d);
        rows.push(AccuracyRow {
            config: label(spec),
            backend: d.backend.clone(),
            pass: verdict.is_ok(),
            failure: verdict.err(),
            divergence: d,
            tolerance: tol,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(rows)
}

/// Scenario "latency": prefill, time to first token and decode per configuration.
pub async fn latency(
    base: &Model,
    backend: Backend<'_>,
    p: &Params,
    mut progress: impl FnMut(String),
) -> Result<Vec<ConfigBench>> {
    let mut out = Vec::new();
    for spec in &p.latency_configs {
        progress(format!("latency {}: building", label(spec)));
        let t0 = Instant::now();
        let cfg = RunConfig::parse(spec)?;
        let (m, fallbacks) = measure::prepare(base, &cfg)?;
        let build_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let mut dec = backend.decoder(&m, kv_in(p, cfg.kv.clone()))?;
        let upload_s = t0.elapsed().as_secs_f64();
        let l = label(spec);
        let t = bench::measure(dec.as_mut(), &m, &p.bench, |line| {
            progress(format!("latency {l}: {line}"))
        })
        .await?;
        out.push(ConfigBench::new(
            l,
            dec.as_ref(),
            &m,
            fallbacks,
            (build_s, upload_s),
            t,
        ));
    }
    Ok(out)
}

/// Scenario "memory": what each configuration holds once loaded and run for a few tokens.
pub async fn memory(
    base: &Model,
    backend: Backend<'_>,
    p: &Params,
    mut progress: impl FnMut(String),
) -> Result<Vec<MemoryRow>> {
    let mut rows = Vec::new();
    for spec in &p.latency_configs {
        progress(format!("memory {}", label(spec)));
        let cfg = RunConfig::parse(spec)?;
        let (m, _) = measure::prepare(base, &cfg)?;
        let mut dec = backend.decoder(&m, kv_in(p, cfg.kv.clone()))?;
        // A few real steps, so lazily grown buffers (the CPU cache) count.
        let seq = p.seqs.first().map(Vec::as_slice).unwrap_or(&[1]);
        dec.reset();
        for (pos, &t) in seq.iter().take(16).enumerate() {
            dec.step_argmax(t, pos).await?;
        }
        rows.push(MemoryRow {
            config: label(spec),
            weights: m.accounting(),
            gpu: dec.gpu_memory(),
            kv_bytes: dec.kv_bytes(),
            host: HostMemory::now(),
        });
    }
    Ok(rows)
}

/// Scenario "context": tokens per KV budget and their accuracy cost, then a real sliding-window run
/// past the model's context.
pub async fn context(
    base: &Model,
    backend: Backend<'_>,
    p: &Params,
    f32_reference: &Reference,
    mut progress: impl FnMut(String),
) -> Result<Context> {
    let c = &base.config;
    let mut rows = Vec::new();
    for &kv in &p.kv_types {
        progress(format!("context kv={}", kv.name()));
        let cfg = KvConfig {
            k: kv,
            v: kv,
            ..KvConfig::default()
        };
        let cfg = kv_in(p, cfg);
        cfg.validate(c)?;
        let mut dec = backend.decoder(base, cfg.clone())?;
        let d = measure::compare(f32_reference, dec.as_mut(), &p.seqs).await?;
        rows.push(ContextRow {
            kv: kv.name().into(),
            bytes_per_token: cfg.bytes_per_token(c),
            budget_bytes: p.kv_budget,
            tokens_in_budget: cfg.tokens_in_budget(c, p.kv_budget),
            divergence: d,
        });
    }
    if let Some(s) = c.swa {
        let why = format!(
            "the model's layers attend sliding windows of {} positions of their own, and a KV \
             window on such a model is not supported",
            s.window
        );
        return Ok(Context {
            rows,
            window: None,
            window_not_run: Some(why),
        });
    }
    let cfg = KvConfig {
        k: KvType::F16,
        v: KvType::F16,
        window: Some(p.window),
        sinks: p.sinks,
        ..KvConfig::default()
    };
    cfg.validate(c)?;
    // q4_0 weights: the cheapest pass on every backend, and the window's memory does not depend on them.
    let (spec, total) = ("weights=q4_0", c.seq_len + p.past_context);
    let (q4, _) = measure::prepare(base, &RunConfig::parse(spec)?)?;
    let mut dec = backend.decoder(&q4, cfg)?;
    progress(format!(
        "context: sliding window {} to {total} positions",
        p.window
    ));
    let mut window = window_run(dec.as_mut(), p.window, p.sinks, total, &mut progress).await?;
    window.weights = label(spec);
    Ok(Context {
        rows,
        window: Some(window),
        window_not_run: None,
    })
}

/// Decodes `total` positions greedily from position 0 and compares the KV bytes the decoder holds at
/// position `window` with those at the end: `flat` when its cache stopped growing there, as a sliding
/// window of `window` positions must. Every backend counts the bytes of the positions it holds.
pub async fn window_run(
    dec: &mut dyn crate::Decoder,
    window: usize,
    sinks: usize,
    total: usize,
    progress: &mut dyn FnMut(String),
) -> Result<WindowRun> {
    let (mut at_window, mut host_at_window, mut next, mut pos) = (0, HostMemory::default(), 1, 0);
    dec.reset();
    let t0 = Instant::now();
    // Greedy on the decoder's own loop (no readback per token on a GPU), in segments ending at the
    // window, where the cache must stop growing, and every 128 positions.
    while pos < total {
        let cap = if pos < window { window } else { total };
        let end = ((pos / 128 + 1) * 128).min(cap).min(total);
        let ids = dec.decode_greedy(next, pos, end - pos).await?;
        (next, pos) = (ids[ids.len() - 1], end);
        if pos == window {
            (at_window, host_at_window) = (dec.kv_bytes(), HostMemory::now());
        }
        if pos % 128 == 0 {
            progress(format!("context: sliding window, position {pos}/{total}"));
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / total as f64;
    let end = dec.kv_bytes();
    Ok(WindowRun {
        window,
        sinks,
        model_context: dec.config().seq_len,
        positions_decoded: total,
        kv_bytes_at_window: at_window,
        kv_bytes_at_end: end,
        host_at_window,
        host_at_end: HostMemory::now(),
        gpu_total_bytes: dec.gpu_memory().map(|g| g.total),
        flat: end <= at_window,
        ms_per_token: ms,
        weights: String::new(),
    })
}

fn backend_kind(b: &Backend<'_>) -> (&'static str, Option<&'static str>) {
    match b {
        Backend::Cpu if cfg!(target_arch = "wasm32") => ("wasm-cpu", None),
        Backend::Cpu => ("cpu", None),
        Backend::Fast(_) if cfg!(target_arch = "wasm32") => ("wasm-cpu", Some("q8")),
        Backend::Fast(_) => ("cpu", Some("q8")), // where weights are quantized; else f32
        Backend::Gpu(g) => ("gpu", Some(g.products_activations())),
    }
}

/// The default parameters for a model: the harness's choice, shared by every host of a run.
pub fn default_params(base: &Model, seqs: Vec<Vec<u32>>, reps: usize) -> Params {
    let c = &base.config;
    let ctx = c.seq_len;
    Params {
        seqs,
        accuracy_configs: vec![String::new(), "weights=q4_0".into()],
        latency_configs: vec![
            "weights=f16".into(),
            "weights=q4_0".into(),
            "precision=attn-q8".into(),
        ],
        bench: BenchOpts {
            reps,
            warmup: 1,
            // Smaller sizes where the context is short (the built-in model's 512): there they only
            // exercise the code paths, and software WebGPU pays for every position.
            prompts: vec![32.min(ctx / 4), if ctx < 2048 { 64 } else { 128 }],
            depths: vec![0, if ctx < 2048 { ctx / 4 } else { 1024 }],
            decode_tokens: 16,
            ..Default::default()
        },
        kv_budget: 1 << 20,
        kv_types: vec![KvType::F16, KvType::Q8_0, KvType::Q4_0, KvType::Kivi4],
        window: 64.min(ctx / 2),
        sinks: 4,
        past_context: 64,
        reload_config: default_reload_config(),
        ctx: Some(ctx.min(DEFAULT_CTX)),
    }
}
