//! One browser: install check, driver, session, then each scenario through the page. A session sees
//! only its [`SessionPlan`], never the command line.

use super::targets::Target;
use super::ui::{host_progress, Ui};
use super::{now_unix, Prepared, RunArgs};
use crate::browser::executor::{self, Session, Timeouts};
use crate::browser::{driver, products, server};
use crate::results::{self, HostRun, HostStatus, RunResults};
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use nibble_engine::scenario::{self, Capabilities, Outcome, Scenario, ScenarioRecord, Status};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What every step of a browser's run reads.
#[derive(Clone, Copy)]
pub struct SessionPlan<'a> {
    pub server: &'a server::Server,
    pub p: &'a Prepared,
    /// The page's backend: auto, gpu or cpu.
    pub backend: &'a str,
    pub want: &'a [Scenario],
    pub timeouts: &'a Timeouts,
    pub logs: &'a Path,
    pub ui: &'a Ui,
}

pub fn timeouts(a: &RunArgs) -> Timeouts {
    Timeouts {
        session: Duration::from_secs(a.session_timeout),
        page: Duration::from_secs(a.session_timeout),
        load: Duration::from_secs(a.scenario_timeout),
        scenario: Duration::from_secs(a.scenario_timeout),
        poll: Duration::from_secs(60),
    }
}

/// Every browser in turn, saving after each step. Ctrl-C or SIGTERM (a CI timeout) drops the run,
/// which kills every driver and browser, and marks the hosts still pending as interrupted.
pub async fn run_all(
    targets: &[Target],
    plan: SessionPlan<'_>,
    res: &mut RunResults,
    path: &Path,
) -> Result<()> {
    let snapshot = res.clone();
    let run_all = async {
        for t in targets {
            let mut host = res.host_mut(&t.name).clone();
            let t0 = Instant::now();
            run_browser(t, plan, &mut host, |h| {
                let mut r = res.clone();
                *r.host_mut(&h.name) = h.clone();
                let _ = results::save(path, &r);
            })
            .await;
            host.seconds = t0.elapsed().as_secs_f64();
            plan.ui
                .line(&t.name, &format!("{} ({:.0} s)", host.status, host.seconds));
            *res.host_mut(&t.name) = host;
            results::save(path, res)?;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::select! {
        r = run_all => r,
        _ = stop_signal() => {
            eprintln!("interrupted: drivers and browsers are being stopped; results so far are in {}", path.display());
            // The file holds the partial record of the browser that was running; keep it.
            let mut last = results::load(path).unwrap_or(snapshot);
            for h in last.hosts.iter_mut().filter(|h| h.status == HostStatus::Pending) {
                h.status = HostStatus::Interrupted;
                h.error = Some("the run was interrupted (Ctrl-C)".into());
            }
            results::save(path, &last)?;
            std::process::exit(130);
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
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
}

/// Why a local browser cannot run here (not installed, or remote only), recorded with how to
/// install it; `None` when it can run.
fn not_installed(t: &Target, host: &mut HostRun, ui: &Ui) -> Option<()> {
    let product = t.product.filter(|_| t.remote.is_none())?;
    let why = match product.local {
        None => format!(
            "{} is reachable only through a remote WebDriver endpoint",
            product.display
        ),
        Some(_) => {
            let missing = products::missing(product, &t.found);
            if missing.is_empty() {
                return None;
            }
            missing.join("; ")
        }
    };
    host.status = HostStatus::NotInstalled;
    host.install = product.install.iter().map(|s| s.to_string()).collect();
    ui.line(
        &t.name,
        &match product.local {
            None => "not installed (remote only): skipped".to_string(),
            Some(_) => format!(
                "not installed: {why}; install with: {}",
                product.install.join(" && ")
            ),
        },
    );
    host.error = Some(why);
    Some(())
}

async fn run_browser(
    t: &Target,
    plan: SessionPlan<'_>,
    host: &mut HostRun,
    mut save: impl FnMut(&HostRun),
) {
    let SessionPlan { want, ui, .. } = plan;
    // Not installed: say how to install, and move on.
    if not_installed(t, host, ui).is_some() {
        return;
    }
    let bar = ui.bar(&t.name, 2 + want.len() as u64);
    let r = browser_steps(t, plan, host, &bar, &mut save).await;
    bar.finish_and_clear();
    match r {
        Ok(()) => super::finish_host_status(host),
        Err(e) => {
            host.status = HostStatus::Failed;
            host.error = Some(format!("{e:#}"));
            // Scenarios that never ran say why.
            for &s in want {
                if !host.scenarios.iter().any(|r| r.name == s) {
                    host.scenarios.push(ScenarioRecord::not_run(
                        s,
                        Status::NotMeasured,
                        format!("the browser failed before this scenario: {e:#}"),
                        0.0,
                    ));
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
    plan: SessionPlan<'_>,
    host: &mut HostRun,
    bar: &ProgressBar,
    save: &mut impl FnMut(&HostRun),
) -> Result<()> {
    let SessionPlan { timeouts, logs, .. } = plan;
    let profile = tempdir_in(logs, &format!("{}-profile", t.name))?;
    let mut caps = products::capabilities(&t.name, &profile, t.found.browser.as_deref(), t.gpu);
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
            let bin = t.found.driver.as_deref().context("no driver found")?;
            bar.set_message(format!("starting {}", bin.display()));
            let (proc, url) =
                driver::start_driver(&t.name, d, bin, display.as_deref(), logs).await?;
            _driver = Some(proc);
            host.driver = Some(bin.display().to_string());
            let product = t.product.context("a local driver without a product")?;
            (host.browser_version, host.driver_version) = products::versions(product, &t.found);
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
    let r = session_steps(&mut s, plan, host, bar, save).await;
    host.last_progress = s.last_progress.clone();
    s.close().await;
    r
}

/// Opens the page's engine; answers its capabilities.
async fn open(
    s: &mut Session,
    plan: SessionPlan<'_>,
    on: &mut impl FnMut(&str),
) -> Result<Capabilities> {
    let t = plan.timeouts;
    // Test hooks, read here at the edge: a scenario the page never answers, a GPU lost mid-scenario.
    let hook = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let opts = json!({
        "backend": plan.backend,
        "test_hang": hook("NIBBLE_TEST_HANG"),
        "test_lose_gpu": hook("NIBBLE_TEST_LOSE_GPU"),
    });
    let caps = s
        .call("open", vec![json!(opts.to_string())], t.page, t, on)
        .await?;
    serde_json::from_str(caps.as_str().context("open answered no text")?).context("open's answer")
}

async fn session_steps(
    s: &mut Session,
    plan: SessionPlan<'_>,
    host: &mut HostRun,
    bar: &ProgressBar,
    save: &mut impl FnMut(&HostRun),
) -> Result<()> {
    let SessionPlan {
        server,
        p,
        want,
        timeouts,
        ui,
        ..
    } = plan;
    let name = host.name.clone();
    bar.set_message("loading the bench page");
    s.open_page(&server.url("/index.html"), timeouts).await?;
    let mut on = |m: &str| {
        bar.set_message(m.to_string());
        host_progress(ui, &name, m);
    };
    let caps = open(s, plan, &mut on).await?;
    ui.line(&name, &format!("backend {}", describe(&caps)));
    host.capabilities = Some(caps);
    bar.inc(1);
    save(host);
    // Every scenario but reload works on the model `load` fetches; reload loads on its own.
    let load = if want.iter().any(|w| w.needs_loaded_model()) {
        let job = vec![json!(p.load_job.to_string())];
        s.call("load", job, timeouts.load, timeouts, &mut on)
            .await?
    } else {
        Value::Null
    };
    host.load = serde_json::from_str(load.as_str().unwrap_or("null")).ok();
    bar.inc(1);
    save(host);
    for &sc in want {
        bar.set_message(sc.name());
        ui.line(&name, sc.name());
        let (mut rec, stop) = match scenario_step(s, plan, sc, &mut on).await {
            Ok(rec) => (rec, None),
            Err((rec, e)) => (rec, Some(e)),
        };
        super::rejudge(
            &mut rec,
            host.capabilities.as_ref(),
            &p.base.config,
            &p.refs,
        );
        if rec.status != Status::Ok {
            ui.line(
                &name,
                &format!("{sc} failed: {}", rec.error.as_deref().unwrap_or("?")),
            );
        }
        host.scenarios.push(rec);
        if let Some(e) = stop {
            save(host);
            return Err(e);
        }
        if sc == Scenario::Memory {
            host.page_memory = s.page_memory(timeouts).await.ok();
        }
        bar.inc(1);
        save(host);
    }
    Ok(())
}

/// A scenario the session could not finish, with the error that ends this browser's run.
type Stopped = (ScenarioRecord, anyhow::Error);

/// One scenario in the page. A failure inside the scenario is its record's; a hang, a crash or a
/// broken answer stops the session (it is unusable), recorded as the scenario's failure.
async fn scenario_step(
    s: &mut Session,
    plan: SessionPlan<'_>,
    sc: Scenario,
    on: &mut impl FnMut(&str),
) -> std::result::Result<ScenarioRecord, Stopped> {
    let t0 = Instant::now();
    let failed = |e: anyhow::Error| {
        let rec = ScenarioRecord::finished(sc, t0.elapsed().as_secs_f64(), Err(format!("{e:#}")));
        (rec, e)
    };
    if sc == Scenario::Reload {
        let rel = browser_reload(s, plan, on).await.map_err(failed)?;
        return Ok(ScenarioRecord::finished(
            sc,
            t0.elapsed().as_secs_f64(),
            Ok(Outcome::Reload(Box::new(rel))),
        ));
    }
    let t = plan.timeouts;
    let v = s
        .call("run_scenario", vec![json!(sc.name())], t.scenario, t, on)
        .await
        .map_err(failed)?;
    let text = v
        .as_str()
        .context("scenario answered no text")
        .map_err(failed)?;
    serde_json::from_str(text)
        .with_context(|| format!("{sc}'s answer"))
        .map_err(failed)
}

/// "cpu (why no GPU)" or "webgpu on ADAPTER (f16 activations)".
fn describe(caps: &Capabilities) -> String {
    let how = caps.adapter.as_ref().map_or_else(
        || format!(" ({})", caps.gpu_unavailable.as_deref().unwrap_or("")),
        |ad| {
            format!(
                " on {} ({} activations)",
                ad.name,
                caps.activations.as_deref().unwrap_or("?")
            )
        },
    );
    format!("{}{how}", caps.backend)
}

/// Scenario "reload" in a browser: a load in this fresh profile (cold), then the page reloaded in the
/// same profile and loaded again (warm). Both go through the browser store, up to the first token.
async fn browser_reload(
    s: &mut Session,
    plan: SessionPlan<'_>,
    on: &mut impl FnMut(&str),
) -> Result<scenario::Reload> {
    let SessionPlan {
        server,
        p,
        timeouts,
        ..
    } = plan;
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
        open(s, plan, &mut *on).await?;
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
