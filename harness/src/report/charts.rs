//! The report's charts, drawn by plotters as inline SVG. Each chart is one function in [`CHARTS`]; a
//! chart no host measured is left out and listed in `missing` with the reason.

use crate::gate;
use crate::results::{HostRun, RunResults};
use anyhow::Result;
use nibble_engine::measure::SweepRow;
use nibble_engine::scenario::{Outcome, Scenario};
use plotters::prelude::*;
use serde::Serialize;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

#[derive(Serialize)]
pub struct Chart {
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

/// Horizontal bars, one row per bar and every row labelled, grouped by host as pushed; one colour per
/// configuration (the part of a label after the host) with a legend, or per segment when bars stack.
/// A single-segment chart whose values span more than 1.5 decades (a ratio over 30) gets a log axis,
/// so one slow host (Firefox's ~100 ms readback) does not flatten the others.
fn draw_bars(b: &Bars) -> Result<String> {
    let n = b.bars.len().max(1);
    let height = (90 + 24 * n) as u32;
    let stacked = b.segments.len() > 1;
    let log = !stacked && spans_decades(b);
    let (x_hi, floor, xf) = axis(b, log);
    let configs = config_colours(b);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&b.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(250)
            .build_cartesian_2d(0f64..x_hi, 0f64..n as f64)?;
        let axis_name = if log {
            format!("{} (log scale)", b.y_label)
        } else {
            b.y_label.clone()
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc(axis_name)
            .x_label_formatter(&|v| fmt_value(if log { 10f64.powf(*v + floor) } else { *v }))
            .draw()?;
        for (i, (label, segs, err)) in b.bars.iter().enumerate() {
            // Row 0 at the top.
            let y = (n - 1 - i) as f64;
            let mut x0 = 0.0;
            for (k, v) in segs.iter().enumerate() {
                let c = if stacked {
                    COLORS[k % COLORS.len()]
                } else {
                    configs.colour(label)
                };
                let w = xf(*v) - if stacked { 0.0 } else { x0 };
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, y + 0.15), (x0 + w, y + 0.85)],
                    c.filled(),
                )))?;
                x0 += w;
            }
            if let Some((lo, hi)) = err {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(xf(*lo), y + 0.5), (xf(*hi), y + 0.5)],
                    BLACK.stroke_width(2),
                )))?;
            }
            let total: f64 = segs.iter().sum();
            let (px, py) = chart.backend_coord(&(0.0, y + 0.5));
            let (ex, _) = chart.backend_coord(&(x0, y + 0.5));
            let style = ("sans-serif", 13).into_font().color(&BLACK);
            root.draw(&Text::new(label.clone(), (12, py - 7), style.clone()))?;
            root.draw(&Text::new(
                fmt_value(total),
                (ex.max(px) + 4, py - 7),
                style,
            ))?;
        }
        legend(&mut chart, b, &configs)?;
        root.present()?;
    }
    Ok(svg)
}

/// Whether the positive bar values span more than 1.5 decades.
fn spans_decades(b: &Bars) -> bool {
    let vals: Vec<f64> = b
        .bars
        .iter()
        .map(|x| x.1.iter().sum::<f64>())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = vals.iter().copied().fold(f64::MAX, f64::min);
    let hi = vals.iter().copied().fold(0.0, f64::max);
    !vals.is_empty() && hi / lo > 30.0
}

/// The x extent (room on the right for value labels and the legend), the log axis's floor, and the
/// map from a value to x: identity, or log10 above a
/// floor a decade under the smallest value (so every bar has a visible length).
fn axis(b: &Bars, log: bool) -> (f64, f64, Box<dyn Fn(f64) -> f64>) {
    let top = b
        .bars
        .iter()
        .map(|(_, s, e)| s.iter().sum::<f64>().max(e.map_or(0.0, |e| e.1)))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    if !log {
        return (top * 1.4, 0.0, Box::new(|v| v));
    }
    let lo = b
        .bars
        .iter()
        .map(|x| x.1.iter().sum::<f64>())
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min);
    let floor = (lo.log10().floor() - 1.0).max(-30.0);
    let f = move |v: f64| (v.max(1e-30).log10() - floor).max(0.0);
    (f(top) * 1.4, floor, Box::new(f))
}

fn fmt_value(v: f64) -> String {
    match v.abs() {
        0.0 => "0".into(),
        x if x >= 1000.0 => format!("{v:.0}"),
        x if x >= 10.0 => format!("{v:.1}"),
        x if x >= 0.01 => format!("{v:.3}"),
        _ => format!("{v:.2e}"),
    }
}

/// One colour per configuration, in order of first appearance.
struct Configs(Vec<String>);

impl Configs {
    fn of(label: &str) -> &str {
        label.split_once('/').map_or(label, |(_, c)| c)
    }

    fn colour(&self, label: &str) -> RGBColor {
        let i = self
            .0
            .iter()
            .position(|c| c == Configs::of(label))
            .unwrap_or(0);
        COLORS[i % COLORS.len()]
    }
}

fn config_colours(b: &Bars) -> Configs {
    let mut v: Vec<String> = Vec::new();
    for (l, _, _) in &b.bars {
        let c = Configs::of(l).to_string();
        if !v.contains(&c) {
            v.push(c);
        }
    }
    Configs(v)
}

/// The axes every chart draws on.
type Axes =
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>;

/// The legend: the segments of stacked bars, or the configurations' colours.
fn legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Axes>,
    b: &Bars,
    configs: &Configs,
) -> Result<()> {
    let names: Vec<String> = if b.segments.len() > 1 {
        b.segments.clone()
    } else {
        configs.0.clone()
    };
    if names.len() < 2 {
        return Ok(());
    }
    for (k, name) in names.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (0.0, 0.0)],
                c.filled(),
            )))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The data ranges of `pts`, each widened by `frac` of its span (by 1 when flat); 0..1 when empty.
fn padded_ranges(
    pts: impl Iterator<Item = (f64, f64)>,
    frac: f64,
) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| {
        let d = if (b - a).abs() < 1e-12 {
            1.0
        } else {
            (b - a) * frac
        };
        a - d..b + d
    };
    (pad(x0, x1), pad(y0, y1))
}

/// A white x/y chart with its caption, mesh and axis names: what line and scatter charts share.
fn xy_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    xs: std::ops::Range<f64>,
    ys: std::ops::Range<f64>,
    x_label: &str,
    y_label: &str,
) -> Result<ChartContext<'a, SVGBackend<'b>, Axes>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(xs, ys)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()?;
    Ok(chart)
}

/// Labelled points and the Pareto front (no other point is at most as many bits and at most as much
/// |ΔPPL| while better in one), joined in order of bits.
fn draw_scatter(
    title: &str,
    x_label: &str,
    y_label: &str,
    pts: &[(String, f64, f64)],
) -> Result<String> {
    let (xs, ys) = padded_ranges(pts.iter().map(|p| (p.1, p.2)), 0.08);
    let front = pareto(pts);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        let mut chart = xy_chart(&root, title, xs, ys, x_label, y_label)?;
        let c = COLORS[0];
        chart
            .draw_series(LineSeries::new(front.clone(), c.stroke_width(2)))?
            .label("Pareto front")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], c.stroke_width(2)));
        for (label, x, y) in pts {
            chart.draw_series(std::iter::once(Circle::new(
                (*x, *y),
                4,
                COLORS[1].filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                label.clone(),
                (*x, *y),
                ("sans-serif", 11).into_font(),
            )))?;
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

/// The points no other point dominates (fewer or equal bits and |ΔPPL|, strictly better in one).
fn pareto(pts: &[(String, f64, f64)]) -> Vec<(f64, f64)> {
    let mut f: Vec<(f64, f64)> = pts
        .iter()
        .filter(|(_, x, y)| {
            !pts.iter()
                .any(|(_, a, b)| *a <= *x && b.abs() <= y.abs() && (*a < *x || b.abs() < y.abs()))
        })
        .map(|(_, x, y)| (*x, *y))
        .collect();
    f.sort_by(|a, b| a.0.total_cmp(&b.0));
    f
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
        let pts = series.iter().flat_map(|s| s.1.iter().copied());
        let (xs, ys) = padded_ranges(pts, 0.05);
        let root = SVGBackend::with_string(&mut svg, (860, 380)).into_drawing_area();
        let mut chart = xy_chart(&root, title, xs, ys, x_label, y_label)?;
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

/// The outcome of scenario `name` on host `h`, when it has one.
pub fn outcome(h: &HostRun, name: Scenario) -> Option<&Outcome> {
    h.scenarios
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.outcome.as_ref())
}

/// What every chart function reads: the hosts that ran something, and the sweep.
pub struct Data<'a> {
    pub ran: Vec<&'a HostRun>,
    pub sweep: &'a [SweepRow],
}

/// A chart: what it draws from the run's data, or why nothing (pushed to `missing`).
type ChartFn = fn(&Data, &mut Vec<String>) -> Result<Option<Chart>>;

/// Every chart of the report, in the order it shows them.
const CHARTS: [ChartFn; 8] = [
    memory, decode, prefill, accuracy, dppl, context, sweep, reload,
];

/// Every chart this run's data supports; the rest go to `missing` with the reason.
pub fn charts(r: &RunResults, sweep: &[SweepRow], missing: &mut Vec<String>) -> Result<Vec<Chart>> {
    let data = Data {
        ran: r.hosts.iter().filter(|h| !h.scenarios.is_empty()).collect(),
        sweep,
    };
    let mut out = Vec::new();
    for f in CHARTS {
        out.extend(f(&data, missing)?);
    }
    Ok(out)
}

/// A bar chart when some host measured it, else its title in `missing`.
fn bars(id: &str, b: Bars, note: &str, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    if b.bars.is_empty() {
        missing.push(format!("{}: no host measured it", b.title));
        return Ok(None);
    }
    Ok(Some(Chart {
        id: id.into(),
        title: b.title.clone(),
        svg: draw_bars(&b)?,
        note: note.into(),
    }))
}

/// Memory by configuration, stacked by category (engine-accounted; CPU hosts hold weights + KV).
fn memory(d: &Data, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    let mut mem = Bars::new(
        "Memory by configuration (bytes, engine-accounted)",
        "MiB",
        &["weights", "KV cache", "activations+scratch", "staging"],
    );
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    for h in &d.ran {
        if let Some(Outcome::Memory(rows)) = outcome(h, Scenario::Memory) {
            for m in rows {
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
    bars(
        "memory",
        mem,
        "CPU hosts have no GPU buffers: their bars are weights and the KV held after 16 tokens.",
        missing,
    )
}

/// Decode ms/token at depth 0 with p10-p90 bars.
fn decode(d: &Data, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    let mut dec = Bars::new(
        "Decode latency at depth 0 (median, bar: p10-p90)",
        "ms/token",
        &["ms/token"],
    );
    for h in &d.ran {
        if let Some(Outcome::Latency(rows)) = outcome(h, Scenario::Latency) {
            for c in rows {
                if let Some(x) = c.decode.iter().find(|x| x.depth == 0) {
                    let s = &x.ms_per_token;
                    dec.bars.push((
                        format!("{}/{}", h.name, c.config),
                        vec![s.median],
                        Some((s.p10, s.p90)),
                    ));
                }
            }
        }
    }
    bars("decode", dec, "", missing)
}

/// Prefill tokens/s at the first prompt length, with how each host ran its prompts.
fn prefill(d: &Data, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    let mut pre = Bars::new(
        "Prefill throughput (first prompt length, median, bar: p10-p90)",
        "tokens/s",
        &["tokens/s"],
    );
    // How each host ran its prompts, as it recorded it (batched or token by token).
    let mut methods: Vec<String> = Vec::new();
    for h in &d.ran {
        if let Some(Outcome::Latency(rows)) = outcome(h, Scenario::Latency) {
            for c in rows {
                for p in &c.prefill {
                    let m = format!("{}: {}", h.name, p.method);
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
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
    let note = format!("How prompts ran. {}.", methods.join("; "));
    bars("prefill", pre, &note, missing)
}

/// Mean KL against the oracle per weight configuration (accuracy) and KV type (context).
fn accuracy(d: &Data, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    let mut acc = Bars::new(
        "Accuracy cost: mean KL against the native f32 oracle",
        "nats",
        &["mean KL"],
    );
    for h in &d.ran {
        if let Some(Outcome::Accuracy(rows)) = outcome(h, Scenario::Accuracy) {
            for a in rows {
                acc.push(format!("{}/w:{}", h.name, a.config), a.divergence.mean_kl);
            }
        }
        if let Some(Outcome::Context(c)) = outcome(h, Scenario::Context) {
            for k in &c.rows {
                acc.push(format!("{}/kv:{}", h.name, k.kv), k.divergence.mean_kl);
            }
        }
    }
    bars("accuracy", acc, "Weight configurations are compared with the oracle on the same weights (rounding only); KV types with the f32-KV oracle.", missing)
}

/// |ΔPPL| per KV type against the f32-KV oracle.
fn dppl(d: &Data, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    let mut dppl = Bars::new(
        "Accuracy cost: ΔPPL per KV type against the f32-KV oracle",
        "|ΔPPL|",
        &["|ΔPPL|"],
    );
    for h in &d.ran {
        if let Some(Outcome::Context(c)) = outcome(h, Scenario::Context) {
            for k in &c.rows {
                dppl.push(
                    format!("{}/kv:{}", h.name, k.kv),
                    k.divergence.delta_ppl.abs(),
                );
            }
        }
    }
    bars("dppl", dppl, "", missing)
}

/// Context capacity per KV type in the first host's budget.
fn context(d: &Data, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    let mut ctx = Bars::new("Context capacity in the KV budget", "tokens", &["tokens"]);
    let first = d
        .ran
        .iter()
        .find_map(|h| match outcome(h, Scenario::Context) {
            Some(Outcome::Context(c)) => Some((h, c)),
            _ => None,
        });
    if let Some((h, c)) = first {
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
    bars(
        "context",
        ctx,
        "Token counts follow from the formats' bytes per token, the same on every host.",
        missing,
    )
}

/// A sweep configuration's weights ("weights q4_0/b32 | kv f32" is "q4_0/b32"): the chart holds only
/// f32-KV rows.
fn sweep_label(config: &str) -> String {
    let w = config.split(" | ").next().unwrap_or(config);
    w.trim_start_matches("weights ").to_string()
}

/// Bits per weight against ΔPPL over the sweep grid (native CPU, f32 KV): each configuration a
/// labelled point, the Pareto front drawn through the ones worth choosing.
fn sweep(d: &Data, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    if d.sweep.is_empty() {
        missing.push("quantization sweep chart: the run has no sweep (older results)".into());
        return Ok(None);
    }
    let pts: Vec<(String, f64, f64)> = d
        .sweep
        .iter()
        .filter(|s| s.kv_k == nibble_engine::kv::KvType::F32 && s.window.is_none())
        .map(|s| {
            (
                sweep_label(&s.config),
                s.bits_per_weight,
                s.divergence.delta_ppl,
            )
        })
        .collect();
    Ok(Some(Chart {
        id: "sweep".into(),
        title: "Quantization sweep".into(),
        svg: draw_scatter(
            "Bits per weight against ΔPPL (native CPU, f32 KV)",
            "bits/weight",
            "ΔPPL",
            &pts,
        )?,
        note: "Each point is one weight configuration of the sweep grid, scored against the f32 oracle; \
               the line is the Pareto front (fewest bits for the least |ΔPPL|)."
            .into(),
    }))
}

/// Reload: cold against warm, side by side (not stacked), what a user waits for (load + upload). A
/// second load that was not served from the cache is no warm bar: it goes to `missing` with its path.
fn reload(d: &Data, missing: &mut Vec<String>) -> Result<Option<Chart>> {
    let mut rel = Bars::new(
        "Reload: cold (empty cache) against warm (same profile), load and upload",
        "s",
        &["seconds"],
    );
    for h in &d.ran {
        if let Some(Outcome::Reload(r)) = outcome(h, Scenario::Reload) {
            let label = format!("{}/{}", h.name, nibble_engine::scenario::label(&r.config));
            rel.bars
                .push((format!("{label} cold"), vec![r.cold.ready_s], None));
            match &r.warm {
                Some(w) if w.load.path == "warm" => {
                    rel.bars
                        .push((format!("{label} warm"), vec![w.ready_s], None))
                }
                Some(w) => missing.push(format!(
                    "warm reload, {}: the second load was {}, not served from the cache",
                    h.name, w.load.path
                )),
                None => missing.push(format!(
                    "warm reload, {}: {}",
                    h.name,
                    r.warm_missing.as_deref().unwrap_or("no warm load")
                )),
            }
        }
    }
    bars(
        "reload",
        rel,
        "Cold: fetch, parse, hash, quantize, write the cache, upload. Warm: read and verify the cached \
         components, upload. Both in the same browser profile. Shader compilation and the first token \
         follow either and are in results.json (compile_s, ttft_ms).",
        missing,
    )
}

/// Trend series per gate metric over the runs, one line per host.
pub fn trends(runs: &[RunResults]) -> Result<Vec<Chart>> {
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
