//! The native hosts: the fast CPU backend (the oracle computes the references) and the native GPU run the same scenarios as the browsers, through
//! the engine's one scenario dispatch.

use super::ui::{host_progress, Ui};
use super::{finish_host, Prepared};
use crate::results::{self, HostStatus, RunResults};
use anyhow::Result;
use nibble_engine::fast::FastOptions;
use nibble_engine::gpu::Gpu;
use nibble_engine::measure;
use nibble_engine::scenario::{self, Capabilities, Inputs, Outcome, Scenario, ScenarioRecord};
use nibble_engine::{block_on, Backend};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The quantization sweep on the CPU (the accuracy charts' data).
pub fn sweep(p: &Prepared) -> nibble_engine::Result<Vec<measure::SweepRow>> {
    block_on(measure::sweep(
        &p.base,
        &p.params.seqs,
        &measure::default_grid(p.params.window, &p.base.config),
        p.params.kv_budget,
        Backend::Cpu,
        |_, _| {},
    ))
}

/// The fast CPU backend, then (unless skipped) the native GPU; `results.json` is saved after each.
pub fn run_hosts(
    p: &Prepared,
    want: &[Scenario],
    gpu: bool,
    res: &mut RunResults,
    path: &Path,
    ui: &Ui,
) -> Result<()> {
    let t0 = Instant::now();
    let mut host = res.host_mut("native-cpu").clone();
    let fast = FastOptions::default();
    let mut c = caps(None, Some("the fast CPU backend runs on the CPU".into()));
    c.activations = Some("q8".into());
    c.cpu = Some(format!("{}: every core", fast.label()));
    host.capabilities = Some(c);
    tokio::task::block_in_place(|| run_scenarios(p, Backend::Fast(fast), want, &mut host, ui));
    finish_host(&mut host, t0);
    *res.host_mut("native-cpu") = host;
    results::save(path, res)?;
    if !gpu {
        return Ok(());
    }
    let t0 = Instant::now();
    let mut host = res.host_mut("native-gpu").clone();
    match crate::args::gpu_env_options().and_then(|o| Ok(Gpu::open_blocking(o)?)) {
        Ok(g) => {
            let mut c = caps(Some(&g), None);
            match nibble_engine::block_on(g.check_modules()) {
                Ok(note) => {
                    c.shader_modules = Some(note);
                    host.capabilities = Some(c);
                    tokio::task::block_in_place(|| {
                        run_scenarios(p, Backend::Gpu(&g), want, &mut host, ui)
                    });
                    finish_host(&mut host, t0);
                }
                Err(e) => {
                    host.status = HostStatus::Failed;
                    host.error = Some(e.to_string());
                    host.capabilities = Some(c);
                }
            }
        }
        Err(e) => {
            host.status = HostStatus::Failed;
            host.error = Some(format!("no native GPU: {e}"));
            host.capabilities = Some(caps(None, Some(e.to_string())));
        }
    }
    *res.host_mut("native-gpu") = host;
    results::save(path, res)
}

/// Runs the scenarios natively on one backend, recording into `host`.
fn run_scenarios(
    p: &Prepared,
    backend: Backend<'_>,
    want: &[Scenario],
    host: &mut crate::results::HostRun,
    ui: &Ui,
) {
    for &sc in want {
        let t0 = Instant::now();
        ui.line(&host.name, sc.name());
        let progress = |m: String| host_progress(ui, &host.name, &m);
        let inputs = Inputs {
            model: &p.base,
            backend,
            params: &p.params,
            refs: &p.refs,
        };
        let out = block_on(async {
            match sc {
                Scenario::Reload => reload(p, backend, &host.name, progress)
                    .await
                    .map(|r| Outcome::Reload(Box::new(r))),
                _ => scenario::run(sc, inputs, progress).await,
            }
        });
        let mut rec = ScenarioRecord::finished(
            sc,
            t0.elapsed().as_secs_f64(),
            out.map_err(|e| e.to_string()),
        );
        super::rejudge(
            &mut rec,
            host.capabilities.as_ref(),
            &p.base.config,
            &p.refs,
        );
        host.scenarios.push(rec);
    }
}

/// Scenario "reload" natively: a cold load into an empty cache directory, then a warm one from it.
async fn reload(
    p: &Prepared,
    backend: Backend<'_>,
    host: &str,
    mut progress: impl FnMut(String),
) -> nibble_engine::Result<scenario::Reload> {
    let dir = p.data.join(format!("reload-cache-{host}"));
    let _ = std::fs::remove_dir_all(&dir);
    let store = crate::disk::DirStore::open(&dir)
        .map_err(|e| nibble_engine::Error::Invalid(format!("{e:#}")))?;
    let mut src = crate::disk::FileSource::new(p.model_file.clone(), p.tokenizer_file.clone());
    let cold =
        scenario::reload_run(&mut src, Some(&store), backend, &p.params, &mut progress).await?;
    let mut src = crate::disk::FileSource::new(p.model_file.clone(), p.tokenizer_file.clone());
    let warm = scenario::reload_run(&mut src, Some(&store), backend, &p.params, &mut progress)
        .await
        .map_err(|e| e.to_string());
    Ok(scenario::Reload::new(
        p.params.reload_config.clone(),
        cold,
        warm,
    ))
}

/// The capabilities record of a native host.
fn caps(gpu: Option<&Gpu>, why: Option<String>) -> Capabilities {
    Capabilities {
        host: "native".into(),
        user_agent: None,
        backend: if gpu.is_some() { "native-gpu" } else { "cpu" }.into(),
        gpu_unavailable: why,
        adapter: gpu.map(|g| g.report.clone()),
        activations: gpu.map(|g| g.products_activations().to_string()),
        matvec_kernel: gpu.map(|g| g.kernel_note()),
        shader_checks: gpu.map(|g| g.shader_checks.name().to_string()),
        shader_modules: None,
        cpu: None,
        apis: BTreeMap::new(),
    }
}
