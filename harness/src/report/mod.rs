//! `nibble report`: one self-contained report.html (minijinja template, inline SVG charts drawn with
//! plotters, no network), results.csv and summary.md, from one or more results.json. Anything a run did
//! not measure is listed with its reason; nothing is filled in.

mod charts;
mod matrix;

use crate::gate;
use crate::results::{self, HostStatus, RunResults};
use anyhow::{Context, Result};
use charts::outcome;
use clap::Args;
use nibble_engine::scenario::{Outcome, Scenario, Status};
use std::path::{Path, PathBuf};

/// The report template, built into the binary (`--template` replaces it).
const BUILTIN_TEMPLATE: &str = include_str!("../../../templates/report.html");

#[derive(Args)]
pub struct ReportArgs {
    /// results.json files (the newest is the run reported; all of them feed the trends).
    results: Vec<PathBuf>,
    /// Run directories (each with a results.json) whose history becomes trend charts.
    #[arg(long, num_args = 1..)]
    history: Vec<PathBuf>,
    /// Targets for the gate table (default: the repository's targets.toml, built into this binary).
    #[arg(long)]
    targets: Option<PathBuf>,
    /// A report template to use instead of the built-in one (minijinja, as templates/report.html).
    #[arg(long)]
    template: Option<PathBuf>,
    #[arg(long, default_value = "reports/report")]
    out: PathBuf,
}

/// Flat rows for results.csv: host, scenario, config, metric, value.
fn csv_rows(r: &RunResults) -> Vec<[String; 5]> {
    let mut v = Vec::new();
    for h in &r.hosts {
        let mut put = |sc: &str, cfg: &str, m: &str, x: f64| {
            v.push([
                h.name.clone(),
                sc.into(),
                cfg.into(),
                m.into(),
                format!("{x}"),
            ])
        };
        for s in &h.scenarios {
            match &s.outcome {
                Some(Outcome::Accuracy(rows)) => {
                    for a in rows {
                        let d = &a.divergence;
                        put("accuracy", &a.config, "max_abs_dlogit", d.max_abs_dlogit);
                        put("accuracy", &a.config, "mean_kl", d.mean_kl);
                        put("accuracy", &a.config, "top1", d.top1_agreement);
                        put("accuracy", &a.config, "ppl", d.ppl);
                    }
                }
                Some(Outcome::Latency(rows)) => {
                    for c in rows {
                        for p in &c.prefill {
                            put(
                                "latency",
                                &c.config,
                                &format!("prefill{}_tokens_per_s", p.prompt_tokens),
                                p.tokens_per_s.median,
                            );
                        }
                        for d in &c.decode {
                            put(
                                "latency",
                                &c.config,
                                &format!("decode_d{}_ms_per_token", d.depth),
                                d.ms_per_token.median,
                            );
                        }
                        if let Some(t) = &c.ttft_ms {
                            put("latency", &c.config, "ttft_ms", t.median);
                        }
                    }
                }
                Some(Outcome::Memory(rows)) => {
                    for m in rows {
                        put(
                            "memory",
                            &m.config,
                            "weight_bytes",
                            m.weights.total_bytes as f64,
                        );
                        if let Some(g) = &m.gpu {
                            put("memory", &m.config, "gpu_total_bytes", g.total as f64);
                        }
                        if let Some(w) = m.host.wasm_memory_bytes {
                            put("memory", &m.config, "wasm_memory_bytes", w as f64);
                        }
                    }
                }
                Some(Outcome::Context(c)) => {
                    for k in &c.rows {
                        if let Some(t) = k.tokens_in_budget {
                            put("context", &k.kv, "tokens_in_budget", t as f64);
                        }
                        put("context", &k.kv, "mean_kl", k.divergence.mean_kl);
                    }
                }
                _ => {}
            }
        }
    }
    v
}

fn summary_md(r: &RunResults, verdicts: &[gate::Verdict], targets_source: &str) -> String {
    let mut s = format!(
        "# nibble run: {} ({} params)\n\nGated on {targets_source}.\n\n",
        r.model.name, r.model.params
    );
    s += "| host | status | seconds | backend | adapter |\n|---|---|---|---|---|\n";
    for h in &r.hosts {
        let backend = h.capabilities.as_ref().map_or("-", |c| c.backend.as_str());
        s += &format!(
            "| {} | {} | {:.0} | {backend} | {} |\n",
            h.name,
            h.status,
            h.seconds,
            crate::results::adapter_kind(h)
        );
    }
    s += "\n| host | backend | config | test | value |\n|---|---|---|---|---|\n";
    for h in &r.hosts {
        let backend = h
            .capabilities
            .as_ref()
            .map_or("-".into(), |c| c.backend.clone());
        if let Some(Outcome::Latency(rows)) = outcome(h, Scenario::Latency) {
            for c in rows {
                for p in &c.prefill {
                    s += &format!(
                        "| {} | {backend} | {} | pp{} | {:.2} t/s |\n",
                        h.name, c.config, p.prompt_tokens, p.tokens_per_s.median
                    );
                }
                for d in &c.decode {
                    s += &format!("| {} | {backend} | {} | tg@d{} | {:.3} ms/token [p10 {:.3}, p90 {:.3}] |\n", h.name, c.config, d.depth, d.ms_per_token.median, d.ms_per_token.p10, d.ms_per_token.p90);
                }
            }
        } else {
            s += &format!("| {} | {backend} | - | - | {} |\n", h.name, h.status);
        }
    }
    s += &reload_md(r);
    s += "\n## Gates\n\n";
    s += &gate::table(verdicts);
    s
}

/// The reload scenario per host: cold and warm, how the model arrived and the memory it took.
fn reload_md(r: &RunResults) -> String {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let mut s = String::new();
    for h in &r.hosts {
        let Some(Outcome::Reload(rl)) = outcome(h, Scenario::Reload) else {
            continue;
        };
        if s.is_empty() {
            s += "\n## Reload\n\n| host | load | ready s | streamed | most file bytes held | largest component | largest GPU staging | host memory after (before) | cache read / written |\n|---|---|---|---|---|---|---|---|---|\n";
        }
        for (what, run) in [("cold", Some(&rl.cold)), ("warm", rl.warm.as_ref())] {
            let Some(run) = run else {
                s += &format!(
                    "| {} | {what} | not measured: {} | | | | | | |\n",
                    h.name,
                    rl.warm_missing.as_deref().unwrap_or("no warm load")
                );
                continue;
            };
            let l = &run.load;
            let host = |m: &nibble_engine::scenario::HostMemory| match (
                m.wasm_memory_bytes,
                m.peak_rss_bytes,
            ) {
                (Some(w), _) => format!("wasm {}", mb(w)),
                (None, Some(p)) => format!("peak RSS {}", mb(p)),
                (None, None) => "not reported by this host".into(),
            };
            s += &format!(
                "| {} | {what} ({}) | {:.4} | {} | {} | {} | {} | {} ({}) | {} / {} |\n",
                h.name,
                l.path,
                run.ready_s,
                match (&l.not_streamed, l.streamed) {
                    (Some(why), _) => format!("no: {why}"),
                    (None, true) => "yes".into(),
                    (None, false) => "no".into(),
                },
                if l.path == "warm" {
                    "none (from the cache)".into()
                } else {
                    mb(l.peak_buffered_bytes)
                },
                mb(l.largest_component_bytes),
                l.largest_staging_bytes.map_or("no GPU".into(), mb),
                host(&l.host_after),
                host(&l.host_before),
                mb(l.cache_bytes_read),
                mb(l.cache_bytes_written),
            );
        }
    }
    s
}

pub fn report(a: ReportArgs) -> Result<()> {
    let mut runs = Vec::new();
    for p in &a.results {
        runs.push(results::load(p)?);
    }
    let mut history = Vec::new();
    for d in &a.history {
        let p = if d.is_dir() {
            d.join("results.json")
        } else {
            d.clone()
        };
        history.push(results::load(&p)?);
    }
    // Several results.json (one per runner of a nightly) make one report: the newest run, with the
    // other runs' hosts added; native hosts are told apart by machine.
    let mut latest = runs
        .iter()
        .chain(history.iter())
        .max_by_key(|r| r.started_unix)
        .cloned()
        .context("give a results.json (or --history run directories)")?;
    for r in &runs {
        if r.started_unix == latest.started_unix && r.machine.hostname == latest.machine.hostname {
            continue;
        }
        for h in &r.hosts {
            let mut h = h.clone();
            if latest.hosts.iter().any(|x| x.name == h.name) {
                h.name = format!("{}@{}", h.name, r.machine.hostname);
            }
            latest.hosts.push(h);
        }
    }
    let all: Vec<RunResults> = runs.into_iter().chain(history).collect();
    let targets = gate::load_targets(a.targets.as_deref()).map_err(crate::args::bad_input)?;
    write(&latest, &all, &targets, a.template.as_deref(), &a.out)?;
    println!("{}", a.out.join("report.html").display());
    Ok(())
}

/// Writes report.html, results.csv and summary.md for `r` (with trends when `history` has more runs).
pub fn write(
    r: &RunResults,
    history: &[RunResults],
    targets: &gate::Targets,
    template: Option<&Path>,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let verdicts = gate::evaluate(r, &targets.list);
    let mut missing = Vec::new();
    for h in &r.hosts {
        if h.status == HostStatus::NotInstalled {
            missing.push(format!(
                "{}: not installed ({})",
                h.name,
                h.install.join("; ")
            ));
        }
        for s in &h.scenarios {
            if s.status != Status::Ok {
                missing.push(format!(
                    "{} {}: {} — {}",
                    h.name,
                    s.name,
                    s.status,
                    s.error.as_deref().unwrap_or("")
                ));
            }
            for n in &s.not_measured {
                missing.push(format!("{} {}: {n}", h.name, s.name));
            }
            if let Some(Outcome::Latency(rows)) = &s.outcome {
                for c in rows {
                    for n in &c.not_measured {
                        missing.push(format!("{} latency {}: {n}", h.name, c.config));
                    }
                }
            }
        }
        if h.kind != "native" && h.status != HostStatus::NotInstalled && h.page_memory.is_none() {
            missing.push(format!(
                "{}: page memory APIs not read (the memory scenario did not finish)",
                h.name
            ));
        }
    }
    for v in &verdicts {
        if let Some(why) = &v.not_measured {
            missing.push(format!("target {} on {}: {why}", v.metric, v.host));
        }
    }
    let mut charts = charts::charts(r, &r.sweep, &mut missing)?;
    if history.len() > 1 {
        charts.extend(charts::trends(history)?);
    }
    missing.sort();
    missing.dedup();
    let (features, matrix) = matrix::matrix(r);
    let tpl = match template {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => BUILTIN_TEMPLATE.to_string(),
    };
    let mut env = minijinja::Environment::new();
    env.add_template("report", &tpl)?;
    let when = r.started_unix;
    let html = env.get_template("report")?.render(minijinja::context! {
        run => r,
        when => when,
        verdicts => verdicts,
        charts => charts,
        missing => missing,
        features => features,
        matrix => matrix,
        runs => history.len(),
        targets_source => targets.source,
    })?;
    crate::files::write_atomic(&out.join("report.html"), |w| {
        Ok(w.write_all(html.as_bytes())?)
    })?;
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["host", "scenario", "config", "metric", "value"])?;
    for row in csv_rows(r) {
        csv.write_record(&row)?;
    }
    let bytes = csv.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::files::write_atomic(&out.join("results.csv"), |w| Ok(w.write_all(&bytes)?))?;
    let md = summary_md(r, &verdicts, &targets.source);
    crate::files::write_atomic(&out.join("summary.md"), |w| Ok(w.write_all(md.as_bytes())?))?;
    Ok(())
}

use std::io::Write as _;
