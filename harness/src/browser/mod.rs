//! In the browser: `nibble run`, `nibble browsers`, `nibble setup`, `nibble build-web`.
//!
//! Kept apart as wptrunner keeps them: products (browser configuration), the driver processes, the
//! executor (one WebDriver session running the page), and results.

pub mod bundle;
pub mod driver;
pub mod executor;
pub mod products;
pub mod results;
pub mod server;
pub mod setup;

use crate::bench::Machine;
use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use executor::{Session, Timeouts};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gpu::Gpu;
use nibble_engine::measure::{self, Reference, RunConfig};
use nibble_engine::model::Model;
use nibble_engine::scenario::{self, Capabilities, Outcome, Params, ScenarioRecord};
use nibble_engine::Preset;
use nibble_engine::{block_on, eval, Backend};
use products::Product;
use results::{HostRun, ModelInfo, ReferenceInfo, RunResults};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// "reload" goes last: in a browser it reloads the page.
pub const SCENARIOS: [&str; 5] = ["accuracy", "latency", "memory", "context", "reload"];

#[derive(Args)]
pub struct RunArgs {
    /// Browsers: chrome, firefox, webkit, edge, safari, or all. `none` runs only the native reference.
    #[arg(long, default_value = "chrome,firefox,webkit", value_delimiter = ',')]
    pub browsers: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// A synthetic preset instead of --model (tiny, llama-1b, llama-7b).
    #[arg(long, conflicts_with = "model")]
    pub preset: Option<String>,
    /// Text for forced decoding (default: the model's TinyStories sample beside it, or the built-in sample).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Tokens scored in the accuracy and context scenarios (a prefix of the text's stories).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Output directory (default: reports/run-UNIXTIME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Measured repetitions per latency test, after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Scenarios to run (capabilities always runs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "accuracy,latency,memory,context,reload"
    )]
    pub scenarios: Vec<String>,
    /// A remote W3C WebDriver endpoint for a browser, NAME=URL (repeatable).
    #[arg(long = "webdriver", value_name = "NAME=URL")]
    pub webdriver: Vec<String>,
    /// Configuration file with [browsers.NAME] tables (webdriver, capabilities).
    #[arg(long, default_value = "nibble.toml")]
    pub config: PathBuf,
    /// Backend in the browsers: auto (WebGPU where it works, else wasm CPU), gpu or cpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Seconds allowed for one scenario in one browser.
    #[arg(long, default_value_t = 900)]
    pub scenario_timeout: u64,
    /// Seconds allowed for a new session, and for the page to start.
    #[arg(long, default_value_t = 90)]
    pub session_timeout: u64,
    /// Prompt lengths for prefill (default: 32 and 128, capped by the context).
    #[arg(long, value_delimiter = ',')]
    pub prompts: Option<Vec<usize>>,
    /// Context depths for decode (default: 0 and half the context).
    #[arg(long, value_delimiter = ',')]
    pub depths: Option<Vec<usize>>,
    /// Decode tokens timed per repetition.
    #[arg(long)]
    pub decode_tokens: Option<usize>,
    /// Tokens the sliding-window run decodes past the model's context.
    #[arg(long)]
    pub past_context: Option<usize>,
    /// Targets the run is gated on at the end (default: targets.toml in the repository).
    #[arg(long)]
    pub targets: Option<PathBuf>,
    /// Skip the native GPU reference (the CPU oracle always runs).
    #[arg(long)]
    pub no_native_gpu: bool,
    /// Browser store of the component cache in the reload scenario: the Cache API, or OPFS (the
    /// Origin Private File System, where the browser has it).
    #[arg(long, default_value = "cache-api", value_parser = ["cache-api", "opfs"])]
    pub cache: String,
}

#[derive(Args)]
pub struct BuildWebArgs {
    /// Rebuild even if the sources did not change.
    #[arg(long)]
    force: bool,
}

pub fn build_web(a: BuildWebArgs) -> Result<()> {
    let dir = bundle::build(a.force)?;
    println!("{}", dir.display());
    Ok(())
}

/// `[browsers.NAME]` tables of nibble.toml.
#[derive(serde::Deserialize, Default)]
struct FileConfig {
    #[serde(default)]
    browsers: BTreeMap<String, BrowserConfig>,
}

#[derive(serde::Deserialize, Default, Clone)]
struct BrowserConfig {
    webdriver: Option<String>,
    /// Merged over the product's capability preset.
    capabilities: Option<toml::Value>,
}

fn read_config(path: &Path) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(s) => toml::from_str(&s).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Where a browser runs: a driver this harness starts, or a remote endpoint.
struct Target {
    name: String,
    product: Option<&'static Product>,
    remote: Option<String>,
    caps_override: Option<Value>,
}

fn targets(a: &RunArgs) -> Result<Vec<Target>> {
    let cfg = read_config(&a.config)?;
    let mut remote: BTreeMap<String, String> = cfg
        .browsers
        .iter()
        .filter_map(|(k, v)| v.webdriver.clone().map(|u| (k.clone(), u)))
        .collect();
    for w in &a.webdriver {
        let (n, u) = w
            .split_once('=')
            .with_context(|| format!("--webdriver {w}: expected NAME=URL"))?;
        remote.insert(n.to_string(), u.to_string());
    }
    let mut names: Vec<String> = Vec::new();
    for b in &a.browsers {
        match b.as_str() {
            "all" => names.extend(products::PRODUCTS.iter().map(|p| p.name.to_string())),
            "none" => {}
            n => names.push(n.to_string()),
        }
    }
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let product = products::find(&n);
        let over = cfg
            .browsers
            .get(&n)
            .and_then(|b| b.capabilities.clone())
            .map(serde_json::to_value)
            .transpose()?;
        if product.is_none() && !remote.contains_key(&n) {
            bail!(
                "unknown browser {n:?}: expected chrome, firefox, webkit, edge, safari, all, or a \
                 name with --webdriver {n}=URL"
            );
        }
        out.push(Target {
            remote: remote.get(&n).cloned(),
            name: n,
            product,
            caps_override: over,
        });
    }
    Ok(out)
}

/// Progress: bars on a terminal, plain lines elsewhere (CI logs).
struct Ui {
    mp: Option<MultiProgress>,
}

impl Ui {
    fn new() -> Ui {
        Ui {
            mp: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }

    fn bar(&self, host: &str, len: u64) -> ProgressBar {
        match &self.mp {
            Some(mp) => {
                let b = mp.add(ProgressBar::new(len));
                b.set_style(
                    ProgressStyle::with_template("{prefix:>12} [{bar:20}] {pos}/{len} {wide_msg}")
                        .unwrap()
                        .progress_chars("=> "),
                );
                b.set_prefix(host.to_string());
                b
            }
            None => ProgressBar::hidden(),
        }
    }

    fn line(&self, host: &str, msg: &str) {
        match &self.mp {
            Some(mp) => {
                let _ = mp.println(format!("{host:>12}: {msg}"));
            }
            None => eprintln!("{host:>12}: {msg}"),
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything a run serves and scores: the model file, parameters and oracle references.
struct Prepared {
    base: Model,
    params: Params,
    refs: Vec<Reference>,
    /// JSON the page's `load` call takes.
    load_job: Value,
    /// JSON the page's `reload` call takes.
    reload_job: Value,
    /// The files the browsers fetch (the built-in model written as GGUF), which the native reload
    /// loads too.
    model_file: PathBuf,
    tokenizer_file: Option<PathBuf>,
    /// The run's data directory (native reload caches live there).
    data: PathBuf,
}

fn default_text(a: &RunArgs) -> PathBuf {
    if let Some(t) = &a.text {
        return t.clone();
    }
    if let Some(m) = &a.model.model {
        let beside = m.with_file_name("tinystories_sample.txt");
        if beside.exists() {
            return beside;
        }
    }
    bundle::workspace().join("harness/assets/sample.txt")
}

fn prepare(
    a: &RunArgs,
    want: &[String],
    data: &Path,
    files: &server::Files,
    ui: &Ui,
) -> Result<Prepared> {
    let (base, model_url, tok_url, model_file) = match (&a.model.model, &a.preset) {
        (Some(path), _) => {
            let base = crate::native::load_model(&a.model)?;
            let name = path
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().to_string());
            files.add(&format!("/data/{name}"), path);
            let tok = match &a.model.tokenizer {
                Some(t) => {
                    let tn = t
                        .file_name()
                        .map_or("tokenizer".into(), |n| n.to_string_lossy().to_string());
                    files.add(&format!("/data/{tn}"), t);
                    Some(format!("/data/{tn}"))
                }
                None => None,
            };
            (base, format!("/data/{name}"), tok, path.clone())
        }
        (None, preset) => {
            let base = match preset {
                Some(p) => Model::synthetic(Preset::parse(p)?, 0),
                None => Model::builtin(),
            };
            let file = data.join("model.gguf");
            crate::files::write_atomic(&file, |w| Ok(base.write_gguf(w)?))?;
            files.add("/data/model.gguf", &file);
            (base, "/data/model.gguf".to_string(), None, file)
        }
    };
    let text_path = default_text(a);
    let text = std::fs::read_to_string(&text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let tok = base
        .tokenizer
        .as_ref()
        .context("the model has no tokenizer: give --tokenizer")?;
    let mut seqs = eval::story_tokens(tok, &text, base.config.seq_len);
    // Keep whole stories until the token budget is spent, cutting the last one.
    let mut left = a.max_tokens + 1;
    seqs.retain_mut(|s| {
        if left <= 1 {
            return false;
        }
        s.truncate(left);
        left = left.saturating_sub(s.len());
        true
    });
    if seqs.is_empty() {
        bail!("{}: no text to score", text_path.display());
    }
    let mut params = scenario::default_params(&base, seqs, a.reps);
    if let Some(p) = &a.prompts {
        params.bench.prompts = p.clone();
    }
    if let Some(d) = &a.depths {
        params.bench.depths = d.clone();
    }
    if let Some(n) = a.decode_tokens {
        params.bench.decode_tokens = n;
    }
    if let Some(n) = a.past_context {
        params.past_context = n;
    }
    // Accuracy and context score against the oracle; a run without them does not compute it.
    let scored = want.iter().any(|s| s == "accuracy" || s == "context");
    if scored {
        ui.line("native", "computing the oracle references (CPU, f32)");
    }
    let mut refs = Vec::new();
    let mut ref_urls = Vec::new();
    let configs = if scored {
        params.accuracy_configs.as_slice()
    } else {
        &[]
    };
    for (i, spec) in configs.iter().enumerate() {
        let cfg = RunConfig::parse(spec)?;
        let (m, _) = measure::prepare(&base, &cfg)?;
        let r = block_on(Reference::run(&mut CpuDecoder::new(&m), &params.seqs))?;
        let f = data.join(format!("ref-{i}.bin"));
        crate::files::write_atomic(&f, |w| Ok(w.write_all(&r.to_bytes())?))?;
        files.add(&format!("/data/ref-{i}.bin"), &f);
        ref_urls.push(format!("/data/ref-{i}.bin"));
        refs.push(r);
    }
    let pf = data.join("params.json");
    crate::files::write_atomic(&pf, |w| Ok(serde_json::to_writer(w, &params)?))?;
    files.add("/data/params.json", &pf);
    let load_job = json!({
        "model_url": model_url,
        "tokenizer_url": tok_url,
        "params_url": "/data/params.json",
        "reference_urls": ref_urls,
    });
    let reload_job = json!({
        "model_url": model_url,
        "tokenizer_url": tok_url,
        "params_url": "/data/params.json",
        "store": a.cache,
        // Test hook: the browser store's writes fail as a full quota would.
        "fail_writes": std::env::var("NIBBLE_CACHE_FAIL_WRITES").is_ok_and(|v| v == "1"),
    });
    Ok(Prepared {
        base,
        params,
        refs,
        load_job,
        reload_job,
        model_file,
        tokenizer_file: a.model.tokenizer.clone(),
        data: data.to_path_buf(),
    })
}

use std::io::Write as _;

/// Runs the scenarios natively on one backend, recording into `host`.
fn run_native(p: &Prepared, backend: Backend<'_>, want: &[String], host: &mut HostRun, ui: &Ui) {
    for name in want {
        let t0 = Instant::now();
        let name = name.as_str();
        ui.line(&host.name, name);
        let progress = |m: String| host_progress(ui, &host.name, &m);
        let out = block_on(async {
            Ok::<_, nibble_engine::Error>(match name {
                "accuracy" => Outcome::Accuracy(
                    scenario::accuracy(&p.base, backend, &p.params, &p.refs, progress).await?,
                ),
                "latency" => Outcome::Latency(
                    scenario::latency(&p.base, backend, &p.params, progress).await?,
                ),
                "memory" => {
                    Outcome::Memory(scenario::memory(&p.base, backend, &p.params, progress).await?)
                }
                "context" => Outcome::Context(
                    scenario::context(&p.base, backend, &p.params, &p.refs[0], progress).await?,
                ),
                "reload" => Outcome::Reload(Box::new(
                    native_reload(p, backend, &host.name, progress).await?,
                )),
                other => {
                    return Err(nibble_engine::Error::Invalid(format!(
                        "unknown scenario {other}"
                    )))
                }
            })
        });
        host.scenarios
            .push(record(name, t0, out.map_err(|e| e.to_string())));
    }
}

/// Scenario "reload" natively: a cold load into an empty cache directory, then a warm one from it.
async fn native_reload(
    p: &Prepared,
    backend: Backend<'_>,
    host: &str,
    mut progress: impl FnMut(String),
) -> nibble_engine::Result<scenario::Reload> {
    let dir = p.data.join(format!("reload-cache-{host}"));
    let _ = std::fs::remove_dir_all(&dir);
    let store = crate::cache::DirStore::open(&dir)
        .map_err(|e| nibble_engine::Error::Invalid(format!("{e:#}")))?;
    let mut src = crate::cache::FileSource::new(p.model_file.clone(), p.tokenizer_file.clone());
    let cold =
        scenario::reload_run(&mut src, Some(&store), backend, &p.params, &mut progress).await?;
    let mut src = crate::cache::FileSource::new(p.model_file.clone(), p.tokenizer_file.clone());
    let warm = scenario::reload_run(&mut src, Some(&store), backend, &p.params, &mut progress)
        .await
        .map_err(|e| e.to_string());
    Ok(scenario::Reload::new(
        p.params.reload_config.clone(),
        cold,
        warm,
    ))
}

fn host_progress(ui: &Ui, host: &str, m: &str) {
    if std::env::var_os("NIBBLE_VERBOSE").is_some() {
        ui.line(host, m);
    }
}

fn record(name: &str, t0: Instant, out: std::result::Result<Outcome, String>) -> ScenarioRecord {
    ScenarioRecord::finished(name, t0.elapsed().as_secs_f64(), out)
}

fn native_caps(gpu: Option<&Gpu>, why: Option<String>) -> Capabilities {
    Capabilities {
        host: "native".into(),
        user_agent: None,
        backend: if gpu.is_some() { "native-gpu" } else { "cpu" }.into(),
        gpu_unavailable: why,
        adapter: gpu.map(|g| g.report.clone()),
        activations: gpu.map(|g| g.activations.name().to_string()),
        matvec_kernel: gpu.map(|g| g.matvec_choice.borrow().clone()),
        apis: BTreeMap::new(),
    }
}

/// Runs everything, then gates; answers the gate's exit code.
pub async fn run(a: RunArgs) -> Result<i32> {
    let ui = Ui::new();
    let gate_file = a
        .targets
        .clone()
        .unwrap_or_else(crate::gate::default_targets);
    let gate_targets = crate::gate::read_targets(&gate_file)?;
    let targets = targets(&a)?;
    let want: Vec<String> = a
        .scenarios
        .iter()
        .filter(|s| s.as_str() != "capabilities")
        .cloned()
        .collect();
    for s in &want {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s:?}: expected {}", SCENARIOS.join(", "));
        }
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("reports/run-{}", now_unix())));
    let data = out.join("data");
    let logs = out.join("logs");
    for d in [&out, &data, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let files = server::Files::default();
    if !targets.is_empty() {
        let dir = tokio::task::block_in_place(|| bundle::build(false))?;
        files.add_dir("/", &dir)?;
    }
    let p = tokio::task::block_in_place(|| prepare(&a, &want, &data, &files, &ui))?;
    let results_path = out.join("results.json");
    let mut res = RunResults {
        schema: results::SCHEMA,
        nibble_version: env!("CARGO_PKG_VERSION").into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix: now_unix(),
        commit: results::commit(),
        machine: Machine::this(),
        model: ModelInfo {
            name: p.base.name.clone(),
            source: a.model.model.as_ref().map_or_else(
                || a.preset.clone().unwrap_or("built-in".into()),
                |m| m.display().to_string(),
            ),
            params: p.base.config.n_params(p.base.tied()),
            vocab_size: p.base.config.vocab_size,
            context: p.base.config.seq_len,
        },
        params: p.params.clone(),
        references: p
            .params
            .accuracy_configs
            .iter()
            .zip(&p.refs)
            .map(|(c, r)| ReferenceInfo {
                config: scenario::label(c),
                ppl: r.perplexity.ppl,
                tokens: r.perplexity.tokens_scored,
                backend: r.perplexity.backend.clone(),
            })
            .collect(),
        hosts: Vec::new(),
        sweep: Vec::new(),
    };
    for (name, display, kind) in [
        ("native-cpu", "native CPU (oracle code)", "native"),
        ("native-gpu", "native GPU (wgpu)", "native"),
    ] {
        if name == "native-gpu" && a.no_native_gpu {
            continue;
        }
        res.hosts.push(HostRun {
            name: name.into(),
            display: display.into(),
            kind: kind.into(),
            status: "pending".into(),
            ..Default::default()
        });
    }
    for t in &targets {
        res.hosts.push(HostRun {
            name: t.name.clone(),
            display: t.product.map_or(t.name.clone(), |p| p.display.to_string()),
            kind: if t.remote.is_some() {
                "remote"
            } else {
                "local"
            }
            .into(),
            status: "pending".into(),
            webdriver_url: t.remote.clone(),
            ..Default::default()
        });
    }
    results::save(&results_path, &res)?;
    eprintln!("results: {}", results_path.display());
    // The sweep feeds the accuracy charts; a run without accuracy does not pay for it.
    if want.iter().any(|s| s == "accuracy") {
        ui.line("native", "quantization sweep (CPU)");
        res.sweep = tokio::task::block_in_place(|| {
            block_on(measure::sweep(
                &p.base,
                &p.params.seqs,
                &measure::default_grid(p.params.window),
                p.params.kv_budget,
                Backend::Cpu,
                |_, _| {},
            ))
        })?;
        results::save(&results_path, &res)?;
    }

    // Native reference: the CPU oracle, then the native GPU.
    let t0 = Instant::now();
    {
        let h = res.host_mut("native-cpu");
        h.capabilities = Some(native_caps(None, Some("the oracle runs on the CPU".into())));
    }
    let mut host = res.host_mut("native-cpu").clone();
    tokio::task::block_in_place(|| {
        run_native(&p, Backend::Cpu, &want, &mut host, &ui);
    });
    finish_host(&mut host, t0);
    *res.host_mut("native-cpu") = host;
    results::save(&results_path, &res)?;
    if !a.no_native_gpu {
        let t0 = Instant::now();
        let mut host = res.host_mut("native-gpu").clone();
        match crate::native::gpu_env_options().and_then(|o| Ok(Gpu::open_blocking(o)?)) {
            Ok(g) => {
                host.capabilities = Some(native_caps(Some(&g), None));
                tokio::task::block_in_place(|| {
                    run_native(&p, Backend::Gpu(&g), &want, &mut host, &ui);
                });
                finish_host(&mut host, t0);
            }
            Err(e) => {
                host.status = "failed".into();
                host.error = Some(format!("no native GPU: {e}"));
                host.capabilities = Some(native_caps(None, Some(e.to_string())));
            }
        }
        *res.host_mut("native-gpu") = host;
        results::save(&results_path, &res)?;
    }

    let timeouts = Timeouts {
        session: Duration::from_secs(a.session_timeout),
        page: Duration::from_secs(a.session_timeout),
        load: Duration::from_secs(a.scenario_timeout),
        scenario: Duration::from_secs(a.scenario_timeout),
        poll: Duration::from_secs(60),
    };
    if !targets.is_empty() {
        let server = server::Server::start(files.clone()).await?;
        let run_all = async {
            for t in &targets {
                let mut host = res.host_mut(&t.name).clone();
                let t0 = Instant::now();
                let cx = Ctx {
                    server: &server,
                    p: &p,
                    a: &a,
                    want: &want,
                    timeouts: &timeouts,
                    logs: &logs,
                    ui: &ui,
                };
                run_browser(t, cx, &mut host, |h| {
                    let mut r = res.clone();
                    *r.host_mut(&h.name) = h.clone();
                    let _ = results::save(&results_path, &r);
                })
                .await;
                host.seconds = t0.elapsed().as_secs_f64();
                ui.line(&t.name, &format!("{} ({:.0} s)", host.status, host.seconds));
                *res.host_mut(&t.name) = host;
                results::save(&results_path, &res)?;
            }
            Ok::<_, anyhow::Error>(())
        };
        // Ctrl-C, or SIGTERM from a CI timeout: dropping `run_all` kills every driver and browser.
        let stop = async {
            #[cfg(unix)]
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let term = std::future::pending::<()>();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
        };
        tokio::select! {
            r = run_all => r?,
            _ = stop => {
                eprintln!("interrupted: drivers and browsers are being stopped; results so far are in {}", results_path.display());
                // The file holds the partial record of the browser that was running; keep it.
                let mut last = results::load(&results_path).unwrap_or_else(|_| res.clone());
                for h in last.hosts.iter_mut().filter(|h| h.status == "pending") {
                    h.status = "interrupted".into();
                    h.error = Some("the run was interrupted (Ctrl-C)".into());
                }
                results::save(&results_path, &last)?;
                std::process::exit(130);
            }
        }
    }
    print_summary(&res);
    eprintln!("wrote {}", results_path.display());
    let verdicts = crate::gate::evaluate(&res, &gate_targets);
    println!("\n{}", crate::gate::table(&verdicts));
    crate::files::write_atomic(&out.join("gate.json"), |w| {
        Ok(serde_json::to_writer_pretty(w, &verdicts)?)
    })?;
    let code = crate::gate::exit_code(&verdicts);
    crate::report::write(&res, &[], &gate_targets, &out)?;
    eprintln!("report: {}", out.join("report.html").display());
    eprintln!(
        "gate ({}): {}",
        gate_file.display(),
        if code == 0 {
            "every required target passes"
        } else {
            "a required target failed"
        }
    );
    Ok(code)
}

fn finish_host(h: &mut HostRun, t0: Instant) {
    h.seconds = t0.elapsed().as_secs_f64();
    let failed: Vec<&ScenarioRecord> = h.scenarios.iter().filter(|s| s.status != "ok").collect();
    h.status = if failed.is_empty() { "ok" } else { "failed" }.into();
    if !failed.is_empty() {
        h.error = Some(
            failed
                .iter()
                .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
}

/// What every step of a browser's run reads.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    server: &'a server::Server,
    p: &'a Prepared,
    a: &'a RunArgs,
    want: &'a [String],
    timeouts: &'a Timeouts,
    logs: &'a Path,
    ui: &'a Ui,
}

async fn run_browser(t: &Target, cx: Ctx<'_>, host: &mut HostRun, mut save: impl FnMut(&HostRun)) {
    let Ctx { want, ui, .. } = cx;
    // Not installed: say how to install, and move on.
    if t.remote.is_none() {
        let product = t.product.expect("local targets are products");
        if product.local.is_none() {
            host.status = "not installed".into();
            host.error = Some(format!(
                "{} is reachable only through a remote WebDriver endpoint",
                product.display
            ));
            host.install = product.install.iter().map(|s| s.to_string()).collect();
            ui.line(&t.name, "not installed (remote only): skipped");
            return;
        }
        let missing = products::missing(product);
        if !missing.is_empty() {
            host.status = "not installed".into();
            host.error = Some(missing.join("; "));
            host.install = product.install.iter().map(|s| s.to_string()).collect();
            ui.line(
                &t.name,
                &format!(
                    "not installed: {}; install with: {}",
                    missing.join("; "),
                    product.install.join(" && ")
                ),
            );
            return;
        }
    }
    let bar = ui.bar(&t.name, 2 + want.len() as u64);
    let r = browser_steps(t, cx, host, &bar, &mut save).await;
    bar.finish_and_clear();
    match r {
        Ok(()) => {
            let failed: Vec<String> = host
                .scenarios
                .iter()
                .filter(|s| s.status != "ok")
                .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("?")))
                .collect();
            host.status = if failed.is_empty() { "ok" } else { "failed" }.into();
            if !failed.is_empty() {
                host.error = Some(failed.join("; "));
            }
        }
        Err(e) => {
            host.status = "failed".into();
            host.error = Some(format!("{e:#}"));
            // Scenarios that never ran say why.
            for s in want {
                if !host.scenarios.iter().any(|r| &r.name == s) {
                    host.scenarios.push(ScenarioRecord {
                        name: s.clone(),
                        status: "not measured".into(),
                        error: Some(format!("the browser failed before this scenario: {e:#}")),
                        seconds: 0.0,
                        not_measured: vec![],
                        outcome: None,
                    });
                }
            }
            ui.line(
                &t.name,
                &format!(
                    "FAILED: {e:#} (last progress: {})",
                    host.last_progress.as_deref().unwrap_or("none")
                ),
            );
        }
    }
    save(host);
}

async fn browser_steps(
    t: &Target,
    cx: Ctx<'_>,
    host: &mut HostRun,
    bar: &ProgressBar,
    save: &mut impl FnMut(&HostRun),
) -> Result<()> {
    let Ctx { timeouts, logs, .. } = cx;
    let profile = tempdir_in(logs, &format!("{}-profile", t.name))?;
    let mut caps = products::capabilities(&t.name, &profile);
    if let Some(o) = &t.caps_override {
        products::merge(&mut caps, o);
    }
    // Guards: dropped (and killed) when this function returns, on every path.
    let mut _xvfb = None;
    let mut _driver = None;
    let url = match (&t.remote, t.product.and_then(|p| p.local.as_ref())) {
        (Some(u), _) => u.clone(),
        (None, Some(d)) => {
            let display = if d.needs_display {
                bar.set_message("starting Xvfb");
                let x = driver::start_xvfb(logs).await?;
                let disp = x.display.clone();
                _xvfb = Some(x);
                Some(disp)
            } else {
                None
            };
            bar.set_message(format!("starting {}", d.binary));
            let (proc, url) = driver::start_driver(&t.name, d, display.as_deref(), logs).await?;
            _driver = Some(proc);
            host.driver = Some(d.binary.to_string());
            host.driver_version = products::version_of(d.driver_version_cmd);
            host.browser_version = products::version_of(d.version_cmd);
            url
        }
        (None, None) => bail!("no endpoint for {}", t.name),
    };
    host.webdriver_url = Some(url.clone());
    bar.set_message("new session");
    let mut s = executor::connect(&url, &caps, timeouts).await?;
    if s.browser_version.is_some() {
        host.browser_version = s.browser_version.clone();
    }
    let r = session_steps(&mut s, cx, host, bar, save).await;
    host.last_progress = s.last_progress.clone();
    s.close().await;
    r
}

async fn session_steps(
    s: &mut Session,
    cx: Ctx<'_>,
    host: &mut HostRun,
    bar: &ProgressBar,
    save: &mut impl FnMut(&HostRun),
) -> Result<()> {
    let Ctx {
        server,
        p,
        a,
        want,
        timeouts,
        ui,
        ..
    } = cx;
    let name = host.name.clone();
    bar.set_message("loading the bench page");
    s.open_page(&server.url("/index.html"), timeouts).await?;
    let mut on = |m: &str| {
        bar.set_message(m.to_string());
        host_progress(ui, &name, m);
    };
    let caps = s
        .call(
            "open",
            vec![json!(json!({"backend": a.backend}).to_string())],
            timeouts.page,
            timeouts,
            &mut on,
        )
        .await?;
    let caps: Capabilities = serde_json::from_str(caps.as_str().context("open answered no text")?)
        .context("open's answer")?;
    ui.line(
        &name,
        &format!(
            "backend {}{}",
            caps.backend,
            caps.adapter.as_ref().map_or_else(
                || format!(" ({})", caps.gpu_unavailable.as_deref().unwrap_or("")),
                |ad| format!(
                    " on {} ({} activations)",
                    ad.name,
                    caps.activations.as_deref().unwrap_or("?")
                )
            )
        ),
    );
    host.capabilities = Some(caps);
    bar.inc(1);
    save(host);
    // Every scenario but reload works on the model `load` fetches; reload loads on its own.
    let needs_load = want.iter().any(|w| w != "reload");
    let load = if !needs_load {
        Value::Null
    } else {
        s.call(
            "load",
            vec![json!(p.load_job.to_string())],
            timeouts.load,
            timeouts,
            &mut on,
        )
        .await?
    };
    host.load = serde_json::from_str(load.as_str().unwrap_or("null")).ok();
    bar.inc(1);
    save(host);
    for sc in want {
        bar.set_message(sc.clone());
        ui.line(&name, sc);
        let t0 = Instant::now();
        if sc == "reload" {
            let r = browser_reload(s, cx, &mut on).await;
            let rec = match r {
                Ok(rel) => ScenarioRecord::finished(
                    sc,
                    t0.elapsed().as_secs_f64(),
                    Ok(Outcome::Reload(Box::new(rel))),
                ),
                Err(e) => {
                    host.scenarios.push(ScenarioRecord::finished(
                        sc,
                        t0.elapsed().as_secs_f64(),
                        Err(format!("{e:#}")),
                    ));
                    save(host);
                    return Err(e);
                }
            };
            host.scenarios.push(rec);
            bar.inc(1);
            save(host);
            continue;
        }
        let r = s
            .call(
                "run_scenario",
                vec![json!(sc)],
                timeouts.scenario,
                timeouts,
                &mut on,
            )
            .await;
        let rec: ScenarioRecord = match r {
            Ok(v) => serde_json::from_str(v.as_str().context("scenario answered no text")?)
                .with_context(|| format!("{sc}'s answer"))?,
            Err(e) => {
                // The session is unusable after a hang or crash: record and stop this browser.
                host.scenarios.push(ScenarioRecord {
                    name: sc.clone(),
                    status: "failed".into(),
                    error: Some(format!("{e:#}")),
                    seconds: t0.elapsed().as_secs_f64(),
                    not_measured: vec![],
                    outcome: None,
                });
                save(host);
                return Err(e);
            }
        };
        if rec.status != "ok" {
            ui.line(
                &name,
                &format!("{sc} failed: {}", rec.error.as_deref().unwrap_or("?")),
            );
        }
        host.scenarios.push(rec);
        if sc == "memory" {
            host.page_memory = s.page_memory(timeouts).await.ok();
        }
        bar.inc(1);
        save(host);
    }
    Ok(())
}

/// Scenario "reload" in a browser: a load in this fresh profile (cold), then the page reloaded in the
/// same profile and loaded again (warm). Both go through the Cache API store, up to the first token.
async fn browser_reload(
    s: &mut Session,
    cx: Ctx<'_>,
    on: &mut impl FnMut(&str),
) -> Result<scenario::Reload> {
    let Ctx {
        server,
        p,
        a,
        timeouts,
        ..
    } = cx;
    let job = vec![json!(p.reload_job.to_string())];
    let cold = s
        .call("reload", job.clone(), timeouts.load, timeouts, &mut *on)
        .await?;
    let cold: scenario::ReloadRun =
        serde_json::from_str(cold.as_str().context("reload answered no text")?)
            .context("reload's answer")?;
    // Reload the page: a new document and a new worker, the same profile and caches.
    let warm = async {
        let on = &mut *on;
        s.open_page(&server.url("/index.html"), timeouts).await?;
        s.call(
            "open",
            vec![json!(json!({"backend": a.backend}).to_string())],
            timeouts.page,
            timeouts,
            &mut *on,
        )
        .await?;
        let w = s
            .call("reload", job, timeouts.load, timeouts, &mut *on)
            .await?;
        let w: scenario::ReloadRun =
            serde_json::from_str(w.as_str().context("reload answered no text")?)
                .context("reload's answer")?;
        anyhow::Ok(w)
    }
    .await
    .map_err(|e| format!("{e:#}"));
    Ok(scenario::Reload::new(
        p.params.reload_config.clone(),
        cold,
        warm,
    ))
}

fn tempdir_in(base: &Path, prefix: &str) -> Result<PathBuf> {
    let d = base.join(format!("{prefix}-{}-{}", std::process::id(), now_unix()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn print_summary(r: &RunResults) {
    println!("| host | status | backend | accuracy | decode q4_0 ms/token | error |");
    println!("|---|---|---|---|---|---|");
    for h in &r.hosts {
        let backend = h
            .capabilities
            .as_ref()
            .map_or("-".into(), |c| c.backend.clone());
        let acc = h
            .scenarios
            .iter()
            .find_map(|s| match &s.outcome {
                Some(Outcome::Accuracy(rows)) => Some(
                    rows.iter()
                        .map(|r| format!("{} {}", r.config, if r.pass { "PASS" } else { "FAIL" }))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                _ => None,
            })
            .unwrap_or_else(|| "not measured".into());
        let dec = h
            .scenarios
            .iter()
            .find_map(|s| match &s.outcome {
                Some(Outcome::Latency(rows)) => rows
                    .iter()
                    .find(|c| c.config == "q4_0")
                    .and_then(|c| c.decode.first())
                    .map(|d| {
                        format!(
                            "{:.3} (p10 {:.3}, p90 {:.3})",
                            d.ms_per_token.median, d.ms_per_token.p10, d.ms_per_token.p90
                        )
                    }),
                _ => None,
            })
            .unwrap_or_else(|| "not measured".into());
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            h.name,
            h.status,
            backend,
            acc,
            dec,
            h.error.as_deref().unwrap_or("")
        );
    }
}
