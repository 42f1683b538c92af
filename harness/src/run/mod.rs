//! `nibble run`: the orchestration. It prepares what every host scores (the model file, parameters and
//! oracle references), runs the native hosts, then each browser with a small [`browser::SessionPlan`],
//! saving `results.json` after every scenario, and ends with the gate and the report.

mod browser;
mod native;
mod prepare;
pub mod targets;
mod ui;

use crate::args::ModelArgs;
use crate::bench_cmd::Machine;
use crate::browser::{bundle, server};
use crate::results::{self, HostRun, HostStatus, ModelInfo, ReferenceInfo, RunResults};
use anyhow::{Context, Result};
use clap::Args;
use nibble_engine::scenario::{self, Scenario};
use prepare::Prepared;
use std::path::{Path, PathBuf};
use targets::Target;
use ui::Ui;

#[derive(Args)]
pub struct RunArgs {
    /// Browsers: chrome, firefox, webkit, edge, safari, or all. `none` runs only the native reference.
    #[arg(long, default_value = "chrome,firefox,webkit", value_delimiter = ',')]
    pub browsers: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// A synthetic preset instead of --model (tiny, llama-1b, llama-7b, llama-8b).
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
    /// Positions every decoder's KV cache holds but the window run's (default: 4096, llama.cpp's
    /// default context, or the model's where shorter).
    #[arg(long)]
    pub ctx: Option<usize>,
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
    /// The web bundle to serve (`nibble build-web --copy-to DIR`), for a binary used outside its
    /// checkout; default: built from the checkout, else `nibble-web/` beside the binary.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Ask every browser for a hardware adapter (each product's flags for a GPU on Linux);
    /// `gpu = true` in a `[browsers.NAME]` table asks one.
    #[arg(long)]
    pub gpu: bool,
}

/// Runs everything, then gates; answers the gate's exit code.
pub async fn run(a: RunArgs) -> Result<i32> {
    let ui = Ui::new();
    let gate_targets =
        crate::gate::load_targets(a.targets.as_deref()).map_err(crate::args::bad_input)?;
    let targets = targets::targets(&a)?;
    let want = scenarios(&a.scenarios)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("reports/run-{}", now_unix())));
    let (data, logs) = (out.join("data"), out.join("logs"));
    for d in [&out, &data, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let files = server::Files::default();
    if !targets.is_empty() {
        let dir = tokio::task::block_in_place(|| bundle::locate(a.bundle.as_deref()))?;
        files.add_dir("/", &dir)?;
    }
    let p = tokio::task::block_in_place(|| prepare::prepare(&a, &want, &data, &files, &ui))?;
    let results_path = out.join("results.json");
    let mut res = new_results(&a, &p, &targets);
    results::save(&results_path, &res)?;
    eprintln!("results: {}", results_path.display());
    // The sweep feeds the accuracy charts; a run without accuracy does not pay for it.
    if want.contains(&Scenario::Accuracy) {
        ui.line("native", "quantization sweep (CPU)");
        res.sweep = tokio::task::block_in_place(|| native::sweep(&p))?;
        results::save(&results_path, &res)?;
    }
    native::run_hosts(&p, &want, !a.no_native_gpu, &mut res, &results_path, &ui)?;
    if !targets.is_empty() {
        let server = server::Server::start(files.clone()).await?;
        let plan = browser::SessionPlan {
            server: &server,
            p: &p,
            backend: &a.backend,
            want: &want,
            timeouts: &browser::timeouts(&a),
            logs: &logs,
            ui: &ui,
        };
        browser::run_all(&targets, plan, &mut res, &results_path).await?;
    }
    ui::print_summary(&res);
    eprintln!("wrote {}", results_path.display());
    finish(&res, &gate_targets, &out)
}

/// The scenarios asked for, in run order (capabilities always runs and is not listed).
fn scenarios(names: &[String]) -> Result<Vec<Scenario>> {
    let mut want: Vec<Scenario> = names
        .iter()
        .filter(|s| s.as_str() != "capabilities")
        .map(|s| Scenario::parse(s))
        .collect::<nibble_engine::Result<_>>()?;
    // Reload goes last: in a browser it reloads the page.
    want.sort_by_key(|s| *s == Scenario::Reload);
    Ok(want)
}

/// The run's record before any host has run: every host pending.
fn new_results(a: &RunArgs, p: &Prepared, targets: &[Target]) -> RunResults {
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
        excluded: crate::browser::products::PRODUCTS
            .iter()
            .map(|p| p.name.to_string())
            .filter(|n| !targets.iter().any(|t| &t.name == n))
            .chain(a.no_native_gpu.then(|| "native-gpu".to_string()))
            .collect(),
    };
    let host = |name: &str, display: &str, kind: &str, url: Option<String>| HostRun {
        name: name.into(),
        display: display.into(),
        kind: kind.into(),
        status: HostStatus::Pending,
        webdriver_url: url,
        ..Default::default()
    };
    res.hosts.push(host(
        "native-cpu",
        "native CPU (oracle code)",
        "native",
        None,
    ));
    if !a.no_native_gpu {
        res.hosts
            .push(host("native-gpu", "native GPU (wgpu)", "native", None));
    }
    for t in targets {
        let display = t.product.map_or(t.name.clone(), |p| p.display.to_string());
        let kind = if t.remote.is_some() {
            "remote"
        } else {
            "local"
        };
        res.hosts
            .push(host(&t.name, &display, kind, t.remote.clone()));
    }
    res
}

/// Gates the run, writes gate.json and the report; answers the gate's exit code.
fn finish(res: &RunResults, gate_targets: &crate::gate::Targets, out: &Path) -> Result<i32> {
    let verdicts = crate::gate::evaluate(res, &gate_targets.list);
    println!("\n{}", crate::gate::table(&verdicts));
    crate::files::write_atomic(&out.join("gate.json"), |w| {
        Ok(serde_json::to_writer_pretty(w, &verdicts)?)
    })?;
    let code = crate::gate::exit_code(&verdicts);
    crate::report::write(res, &[], gate_targets, None, out)?;
    eprintln!("report: {}", out.join("report.html").display());
    eprintln!(
        "gate ({}): {}",
        gate_targets.source,
        if code == 0 {
            "every required target passes"
        } else {
            "a required target failed"
        }
    );
    Ok(code)
}

/// A host's status, error and time once its scenarios ran.
fn finish_host(h: &mut HostRun, t0: std::time::Instant) {
    h.seconds = t0.elapsed().as_secs_f64();
    finish_host_status(h);
}

/// A host's status and error from its scenarios.
fn finish_host_status(h: &mut HostRun) {
    h.status = HostStatus::of(&h.scenarios);
    let failed: Vec<String> = h
        .scenarios
        .iter()
        .filter(|s| s.status != scenario::Status::Ok)
        .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("?")))
        .collect();
    if !failed.is_empty() {
        h.error = Some(failed.join("; "));
    }
}

/// The harness's own verdict on an accuracy record (`AccuracyRow::rejudge`): one row per reference,
/// each judged from its raw figures with the tolerance of the host's backend.
fn rejudge(
    rec: &mut scenario::ScenarioRecord,
    caps: Option<&scenario::Capabilities>,
    c: &nibble_engine::Config,
    refs: &[nibble_engine::measure::Reference],
) {
    let Some(scenario::Outcome::Accuracy(rows)) = &mut rec.outcome else {
        return;
    };
    let Some(caps) = caps else {
        rec.status = scenario::Status::Failed;
        rec.error = Some("accuracy from a host that reported no capabilities".into());
        return;
    };
    if rows.len() != refs.len() {
        rec.status = scenario::Status::Failed;
        rec.error = Some(format!(
            "{} accuracy rows for {} references",
            rows.len(),
            refs.len()
        ));
        return;
    }
    for (row, r) in rows.iter_mut().zip(refs) {
        row.rejudge(caps, c, r);
    }
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
