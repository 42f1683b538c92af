//! `nibble report`: one self-contained report.html (minijinja template, inline SVG charts drawn with
//! plotters, no network), results.csv and summary.md, from one or more results.json. Anything a run did
//! not measure is listed with its reason; nothing is filled in.

use crate::gate;
use crate::results::{self, HostRun, HostStatus, RunResults};
use anyhow::{Context, Result};
use clap::Args;
use nibble_engine::scenario::{Outcome, Scenario, Status};
use plotters::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReportArgs {
    /// results.json files (the newest is the run reported; all of them feed the trends).
    results: Vec<PathBuf>,
    /// Run directories (each with a results.json) whose history becomes trend charts.
    #[arg(long, num_args = 1..)]
    history: Vec<PathBuf>,
    /// Targets for the gate table (default: targets.toml in the repository).
    #[arg(long)]
    targets: Option<PathBuf>,
    #[arg(long, default_value = "reports/report")]
    out: PathBuf,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

#[derive(Serialize)]
struct Chart {
    id: String,
    title: String,
    svg: String,
    note: String,
}

/// One bar: its label, stacked segments, and an optional (lo, hi) error bar.
type Bar = (String, Vec<f64>, Option<(f64, f64)>);

/// A bar chart of labelled groups; each bar may stack several segments and carry an error bar.
struct Bars {
    title: String,
    y_label: String,
    bars: Vec<Bar>,
    segments: Vec<String>,
}

impl Bars {
    /// An empty chart with one segment per name.
    fn new(title: &str, y_label: &str, segments: &[&str]) -> Bars {
        Bars {
            title: title.into(),
            y_label: y_label.into(),
            bars: vec![],
            segments: segments.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn push(&mut self, label: String, value: f64) {
        self.bars.push((label, vec![value], None));
    }
}

fn draw_bars(b: &Bars) -> Result<String> {
    let mut svg = String::new();
    {
        let n = b.bars.len().max(1);
        let top = b
            .bars
            .iter()
            .map(|(_, s, e)| s.iter().sum::<f64>().max(e.map_or(0.0, |e| e.1)))
            .fold(0.0f64, f64::max)
            .max(1e-12)
            * 1.15;
        let root = SVGBackend::with_string(&mut svg, (860, 380)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&b.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
        let labels: Vec<String> = b.bars.iter().map(|x| x.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                labels.get(i).cloned().unwrap_or_default()
            })
            .y_desc(&b.y_label)
            .draw()?;
        for (i, (_, segs, err)) in b.bars.iter().enumerate() {
            let mut y0 = 0.0;
            for (k, v) in segs.iter().enumerate() {
                let c = COLORS[k % COLORS.len()];
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(i as f64 + 0.15, y0), (i as f64 + 0.85, y0 + v)],
                    c.filled(),
                )))?;
                y0 += v;
            }
            if let Some((lo, hi)) = err {
                let x = i as f64 + 0.5;
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x, *lo), (x, *hi)],
                    BLACK.stroke_width(2),
                )))?;
            }
        }
        if b.segments.len() > 1 {
            for (k, name) in b.segments.iter().enumerate() {
                let c = COLORS[k % COLORS.len()];
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, 0.0), (0.0, 0.0)],
                        c.filled(),
                    )))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled())
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// Points joined by lines, one series per name.
fn draw_lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<String> {
    let mut svg = String::new();
    {
        let pts = series.iter().flat_map(|s| s.1.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let pad = |a: f64, b: f64| {
            if (b - a).abs() < 1e-12 {
                (a - 1.0, b + 1.0)
            } else {
                (a - (b - a) * 0.05, b + (b - a) * 0.05)
            }
        };
        let (x0, x1) = pad(x0, x1);
        let (y0, y1) = pad(y0, y1);
        let root = SVGBackend::with_string(&mut svg, (860, 380)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        for (k, (name, p)) in series.iter().enumerate() {
            let c = COLORS[k % COLORS.len()];
            let mut p = p.clone();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 12, y)], c.stroke_width(2))
                });
            chart.draw_series(p.iter().map(|&(x, y)| Circle::new((x, y), 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn outcome(h: &HostRun, name: Scenario) -> Option<&Outcome> {
    h.scenarios
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.outcome.as_ref())
}

/// Every chart this run's data supports; the rest go to `missing` with the reason.
fn charts(
    r: &RunResults,
    sweep: &[nibble_engine::measure::SweepRow],
    missing: &mut Vec<String>,
) -> Result<Vec<Chart>> {
    let mut out = Vec::new();
    let ran: Vec<&HostRun> = r.hosts.iter().filter(|h| !h.scenarios.is_empty()).collect();

    // Memory by configuration, stacked by category (engine-accounted; CPU hosts hold weights + KV).
    let mut mem = Bars::new(
        "Memory by configuration (bytes, engine-accounted)",
        "MiB",
        &["weights", "KV cache", "activations+scratch", "staging"],
    );
    for h in &ran {
        if let Some(Outcome::Memory(rows)) = outcome(h, Scenario::Memory) {
            for m in rows {
                let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
                let segs = match &m.gpu {
                    Some(g) => vec![
                        mib(g.weights),
                        mib(g.kv_cache),
                        mib(g.activations),
                        mib(g.staging),
                    ],
                    None => vec![
                        mib(m.weights.total_bytes as u64),
                        mib(m.kv_bytes as u64),
                        0.0,
                        0.0,
                    ],
                };
                mem.bars
                    .push((format!("{}/{}", h.name, m.config), segs, None));
            }
        }
    }
    push_bars(
        &mut out,
        "memory",
        mem,
        "CPU hosts have no GPU buffers: their bars are weights and the KV held after 16 tokens.",
        missing,
    )?;

    // Decode ms/token with p10-p90 bars, and prefill tokens/s.
    let mut dec = Bars::new(
        "Decode latency at depth 0 (median, bar: p10-p90)",
        "ms/token",
        &["ms/token"],
    );
    let mut pre = Bars::new(
        "Prefill throughput (first prompt length, median, bar: p10-p90)",
        "tokens/s",
        &["tokens/s"],
    );
    // How each host ran its prompts, as it recorded it (batched or token by token).
    let mut methods: Vec<String> = Vec::new();
    for h in &ran {
        if let Some(Outcome::Latency(rows)) = outcome(h, Scenario::Latency) {
            for c in rows {
                for p in &c.prefill {
                    let m = format!("{}: {}", h.name, p.method);
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
                }
                if let Some(d) = c.decode.iter().find(|d| d.depth == 0) {
                    let s = &d.ms_per_token;
                    dec.bars.push((
                        format!("{}/{}", h.name, c.config),
                        vec![s.median],
                        Some((s.p10, s.p90)),
                    ));
                }
                if let Some(p) = c.prefill.first() {
                    let s = &p.tokens_per_s;
                    pre.bars.push((
                        format!("{}/{}", h.name, c.config),
                        vec![s.median],
                        Some((s.p10, s.p90)),
                    ));
                }
            }
        }
    }
    push_bars(&mut out, "decode", dec, "", missing)?;
    push_bars(
        &mut out,
        "prefill",
        pre,
        &format!("How prompts ran. {}.", methods.join("; ")),
        missing,
    )?;

    // Accuracy: KL against the oracle per KV type (context) and weight configuration (accuracy).
    let mut acc = Bars::new(
        "Accuracy cost: mean KL against the native f32 oracle",
        "nats",
        &["mean KL"],
    );
    let mut dppl = Bars::new(
        "Accuracy cost: ΔPPL per KV type against the f32-KV oracle",
        "|ΔPPL|",
        &["|ΔPPL|"],
    );
    for h in &ran {
        if let Some(Outcome::Accuracy(rows)) = outcome(h, Scenario::Accuracy) {
            for a in rows {
                acc.push(format!("{}/w:{}", h.name, a.config), a.divergence.mean_kl);
            }
        }
        if let Some(Outcome::Context(c)) = outcome(h, Scenario::Context) {
            for k in &c.rows {
                let label = format!("{}/kv:{}", h.name, k.kv);
                acc.push(label.clone(), k.divergence.mean_kl);
                dppl.push(label, k.divergence.delta_ppl.abs());
            }
        }
    }
    push_bars(&mut out, "accuracy", acc, "Weight configurations are compared with the oracle on the same weights (rounding only); KV types with the f32-KV oracle.", missing)?;
    push_bars(&mut out, "dppl", dppl, "", missing)?;

    // Context capacity per KV type.
    let mut ctx = Bars::new("Context capacity in the KV budget", "tokens", &["tokens"]);
    if let Some(h) = ran.iter().find(|h| outcome(h, Scenario::Context).is_some()) {
        if let Some(Outcome::Context(c)) = outcome(h, Scenario::Context) {
            for k in &c.rows {
                if let Some(t) = k.tokens_in_budget {
                    ctx.bars.push((
                        format!("{} ({:.0} B/token)", k.kv, k.bytes_per_token),
                        vec![t as f64],
                        None,
                    ));
                }
            }
            ctx.title = format!(
                "Context capacity in a {} KiB KV budget ({})",
                c.rows.first().map_or(0, |r| r.budget_bytes / 1024),
                h.name
            );
        }
    }
    push_bars(
        &mut out,
        "context",
        ctx,
        "Token counts follow from the formats' bytes per token, the same on every host.",
        missing,
    )?;

    // Quantization sweep: bits/weight against ΔPPL (native CPU).
    if sweep.is_empty() {
        missing.push("quantization sweep chart: the run has no sweep (older results)".into());
    } else {
        let pts: Vec<(f64, f64)> = sweep
            .iter()
            .filter(|s| s.kv_k == nibble_engine::kv::KvType::F32 && s.window.is_none())
            .map(|s| (s.bits_per_weight, s.divergence.delta_ppl))
            .collect();
        out.push(Chart {
            id: "sweep".into(),
            title: "Quantization sweep".into(),
            svg: draw_lines("Bits per weight against ΔPPL (native CPU, f32 KV)", "bits/weight", "ΔPPL", &[("weights".into(), pts)])?,
            note: "Each point is one weight configuration of the sweep grid, scored against the f32 oracle.".into(),
        });
    }
    // Reload: cold against warm, what a user waits for (load + upload + first token).
    let mut rel = Bars::new(
        "Reload: cold (empty cache) against warm (same profile), load and upload",
        "s",
        &["cold", "warm"],
    );
    let mut why_warm = Vec::new();
    for h in &ran {
        if let Some(Outcome::Reload(r)) = outcome(h, Scenario::Reload) {
            match &r.warm {
                Some(w) => rel.bars.push((
                    format!("{}/{}", h.name, nibble_engine::scenario::label(&r.config)),
                    vec![r.cold.ready_s, w.ready_s],
                    None,
                )),
                None => why_warm.push(format!(
                    "{}: {}",
                    h.name,
                    r.warm_missing.as_deref().unwrap_or("no warm load")
                )),
            }
        }
    }
    missing.extend(why_warm.into_iter().map(|w| format!("warm reload, {w}")));
    push_bars(
        &mut out,
        "reload",
        rel,
        "Cold: fetch, parse, hash, quantize, write the cache, upload. Warm: read and verify the cached \
         components, upload. Both in the same browser profile. Shader compilation and the first token \
         follow either and are in results.json (compile_s, ttft_ms).",
        missing,
    )?;
    Ok(out)
}

fn push_bars(
    out: &mut Vec<Chart>,
    id: &str,
    b: Bars,
    note: &str,
    missing: &mut Vec<String>,
) -> Result<()> {
    if b.bars.is_empty() {
        missing.push(format!("{}: no host measured it", b.title));
        return Ok(());
    }
    out.push(Chart {
        id: id.into(),
        title: b.title.clone(),
        svg: draw_bars(&b)?,
        note: note.into(),
    });
    Ok(())
}

#[derive(Serialize)]
struct Cell {
    level: String,
    reason: String,
}

/// Browser × feature: full, limited or unavailable, each with its reason.
fn matrix(r: &RunResults) -> (Vec<String>, Vec<(String, Vec<Cell>)>) {
    let features = [
        "4-bit inference",
        "f16 activations",
        "quantized KV cache",
        "sliding window",
        "component cache",
        "OPFS",
        "Cache API",
        "memory API",
    ];
    let mut rows = Vec::new();
    for h in &r.hosts {
        let cell = |level: &str, reason: String| Cell {
            level: level.into(),
            reason,
        };
        let mut cells = Vec::new();
        if h.status == HostStatus::NotInstalled {
            for _ in features {
                cells.push(cell(
                    "unavailable",
                    format!("not installed: {}", h.install.join("; ")),
                ));
            }
            rows.push((h.name.clone(), cells));
            continue;
        }
        let caps = h.capabilities.as_ref();
        let backend = caps.map_or("?".to_string(), |c| c.backend.clone());
        cells.push(match outcome(h, Scenario::Accuracy) {
            Some(Outcome::Accuracy(a)) if a.iter().any(|x| x.config == "q4_0" && x.pass) => {
                if backend == "wasm-cpu" || backend == "cpu" {
                    cell(
                        "limited",
                        format!("q4_0 passes on the {backend} path (no WebGPU)"),
                    )
                } else {
                    cell("full", format!("q4_0 passes on {backend}"))
                }
            }
            Some(Outcome::Accuracy(_)) => {
                cell("unavailable", "q4_0 accuracy failed its tolerance".into())
            }
            _ => cell("unavailable", "accuracy not measured".into()),
        });
        cells.push(match caps.and_then(|c| c.activations.as_deref()) {
            Some("f16") => cell("full", "shader-f16".into()),
            Some(_) => cell(
                "unavailable",
                "the adapter has no shader-f16: f32 activations".into(),
            ),
            None => cell(
                "unavailable",
                format!(
                    "no GPU: {}",
                    caps.and_then(|c| c.gpu_unavailable.clone())
                        .unwrap_or_default()
                ),
            ),
        });
        let ctx = match outcome(h, Scenario::Context) {
            Some(Outcome::Context(c)) => Some(c),
            _ => None,
        };
        cells.push(match ctx {
            Some(c) if c.rows.iter().any(|r| r.kv != "f16") => cell(
                "full",
                format!(
                    "{} measured",
                    c.rows
                        .iter()
                        .map(|r| r.kv.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            _ => cell("unavailable", "context scenario not measured".into()),
        });
        cells.push(match ctx.and_then(|c| c.window.as_ref()) {
            Some(w) if w.flat => cell(
                "full",
                format!(
                    "{} positions, KV flat at {} B",
                    w.positions_decoded, w.kv_bytes_at_end
                ),
            ),
            Some(w) => cell(
                "limited",
                format!(
                    "KV grew from {} to {} B",
                    w.kv_bytes_at_window, w.kv_bytes_at_end
                ),
            ),
            None => cell("unavailable", "not measured".into()),
        });
        cells.push(cell(
            "unavailable",
            "not measured: the component cache is not implemented yet".into(),
        ));
        let api = |k: &str| caps.and_then(|c| c.apis.get(k));
        for k in ["opfs", "cache_api"] {
            cells.push(match api(k) {
                Some(a) if a.available => cell(
                    "limited",
                    format!(
                        "present ({}); not exercised until the component cache",
                        a.detail
                    ),
                ),
                Some(a) => cell("unavailable", format!("absent ({})", a.detail)),
                None => cell("unavailable", "not a browser".into()),
            });
        }
        cells.push(match &h.page_memory {
            Some(m) => {
                let has = |k: &str| m.get(k).is_some();
                let why = m["not_available"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default();
                match (
                    has("performance_memory_usedJSHeapSize"),
                    has("ua_specific_memory_bytes"),
                ) {
                    (true, true) => cell(
                        "full",
                        "performance.memory and measureUserAgentSpecificMemory".into(),
                    ),
                    (true, false) | (false, true) => cell("limited", why),
                    _ => cell("unavailable", why),
                }
            }
            None if h.kind == "native" => cell("full", "native: peak RSS".into()),
            None => cell("unavailable", "not measured".into()),
        });
        rows.push((h.name.clone(), cells));
    }
    (features.iter().map(|s| s.to_string()).collect(), rows)
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

fn summary_md(r: &RunResults, verdicts: &[gate::Verdict]) -> String {
    let mut s = format!(
        "# nibble run: {} ({} params)\n\n",
        r.model.name, r.model.params
    );
    s += "| host | backend | config | test | value |\n|---|---|---|---|---|\n";
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

/// Trend series per gate metric over the runs, one line per host.
fn trends(runs: &[RunResults]) -> Result<Vec<Chart>> {
    let mut out = Vec::new();
    for (m, what) in gate::METRICS {
        let mut series: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
        for r in runs {
            for h in &r.hosts {
                if let Ok(v) = gate::metric(h, m) {
                    series
                        .entry(h.name.clone())
                        .or_default()
                        .push((r.started_unix as f64 / 86400.0, v.value));
                }
            }
        }
        if series.is_empty() {
            continue;
        }
        let s: Vec<(String, Vec<(f64, f64)>)> = series.into_iter().collect();
        out.push(Chart {
            id: format!("trend-{m}"),
            title: format!("Trend: {m}"),
            svg: draw_lines(
                &format!("{m} over runs"),
                "days since 1970 (run start)",
                m,
                &s,
            )?,
            note: what.to_string(),
        });
    }
    Ok(out)
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
    let targets = a.targets.clone().unwrap_or_else(gate::default_targets);
    write(&latest, &all, &gate::read_targets(&targets)?, &a.out)?;
    println!("{}", a.out.join("report.html").display());
    Ok(())
}

/// Writes report.html, results.csv and summary.md for `r` (with trends when `history` has more runs).
pub fn write(
    r: &RunResults,
    history: &[RunResults],
    targets: &[gate::Target],
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let verdicts = gate::evaluate(r, targets);
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
    let mut charts = charts(r, &r.sweep, &mut missing)?;
    if history.len() > 1 {
        charts.extend(trends(history)?);
    }
    missing.sort();
    missing.dedup();
    let (features, matrix) = matrix(r);
    let tpl =
        std::fs::read_to_string(crate::browser::bundle::workspace().join("templates/report.html"))
            .context("reading templates/report.html")?;
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
    let md = summary_md(r, &verdicts);
    crate::files::write_atomic(&out.join("summary.md"), |w| Ok(w.write_all(md.as_bytes())?))?;
    Ok(())
}

use std::io::Write as _;
