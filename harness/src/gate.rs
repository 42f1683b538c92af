//! Release gates: target metrics from a TOML file, evaluated on a `results.json`. A metric a host did not
//! measure is "not measured" — it fails a required target and is never passed silently.
//! Exit codes: 0 every required target passes, 1 one fails, 2 the input is unusable.

use crate::results::{HostRun, HostStatus, RunResults};
use anyhow::{bail, Context, Result};
use clap::Args;
use nibble_engine::scenario::{Outcome, Scenario};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GateArgs {
    /// A results.json written by `nibble run`.
    results: PathBuf,
    /// Targets file (default: the repository's targets.toml, built into this binary).
    #[arg(long)]
    targets: Option<PathBuf>,
    /// Also write the verdicts as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Target {
    /// One of [`METRICS`].
    pub metric: String,
    /// ">=" or "<=".
    pub op: String,
    pub threshold: f64,
    /// Host names it applies to; empty or ["all"] means every host that ran.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "yes")]
    pub required: bool,
    /// Why this threshold is honest.
    #[serde(default)]
    pub why: String,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct TargetsFile {
    target: Vec<Target>,
}

/// The metrics a target may name, with what they measure.
pub const METRICS: &[(&str, &str)] = &[
    (
        "weight_reduction_q4_0",
        "1 - q4_0 weight bytes / f16 weight bytes (memory scenario)",
    ),
    (
        "decode_speedup_q4_0",
        "f16 decode ms/token / q4_0 decode ms/token at depth 0 (latency scenario)",
    ),
    (
        "kv_context_ratio_q4_0",
        "tokens of q4_0 KV / tokens of f16 KV in the same budget (context scenario)",
    ),
    (
        "accuracy_top1_q4_0",
        "top-1 agreement with the native oracle on q4_0 weights (accuracy scenario)",
    ),
    (
        "accuracy_max_kl",
        "largest mean KL against the native oracle over the accuracy configurations",
    ),
    (
        "accuracy_pass",
        "1 when every accuracy configuration passes its stated tolerance, else 0",
    ),
    (
        "kv_kivi4_kl",
        "mean KL of kivi4 KV against the f32-KV oracle (context scenario)",
    ),
    (
        "window_flat",
        "1 when the sliding-window run held flat KV bytes past the context, else 0",
    ),
    (
        "warm_reload_speedup",
        "cold load time / warm load time (reload scenario)",
    ),
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    pub value: f64,
    /// 95% confidence half-width, where repetitions give one.
    pub ci95: Option<f64>,
}

/// A target's verdict on one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub metric: String,
    pub host: String,
    pub op: String,
    pub threshold: f64,
    pub required: bool,
    pub measured: Option<Measured>,
    /// Why it was not measured.
    pub not_measured: Option<String>,
    /// "pass", "fail" or "not measured".
    pub verdict: String,
}

impl Verdict {
    pub fn failed(&self) -> bool {
        self.verdict != "pass"
    }
}

/// The repository's targets, built into the binary: a nibble installed with `cargo install` or copied
/// onto a runner gates as the checkout it was built from does, and never on another checkout's file.
const BUILTIN_TARGETS: &str = include_str!("../../targets.toml");

/// Targets and where they came from (the gate and the report say which).
pub struct Targets {
    pub list: Vec<Target>,
    pub source: String,
}

/// `--targets FILE`, or the built-in targets.
pub fn load_targets(path: Option<&Path>) -> Result<Targets> {
    match path {
        Some(p) => {
            let s =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let source = p.display().to_string();
            Ok(Targets {
                list: parse_targets(&s, &source)?,
                source,
            })
        }
        None => Ok(Targets {
            list: parse_targets(BUILTIN_TARGETS, "targets.toml")?,
            source: format!(
                "targets.toml built into nibble {}",
                env!("CARGO_PKG_VERSION")
            ),
        }),
    }
}

fn parse_targets(s: &str, name: &str) -> Result<Vec<Target>> {
    let f: TargetsFile = toml::from_str(s).with_context(|| name.to_string())?;
    for t in &f.target {
        if !METRICS.iter().any(|(m, _)| *m == t.metric) {
            bail!(
                "{name}: unknown metric {:?}; known: {}",
                t.metric,
                METRICS
                    .iter()
                    .map(|(m, _)| *m)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if t.op != ">=" && t.op != "<=" {
            bail!(
                "{name}: target {}: op must be >= or <=, not {:?}",
                t.metric,
                t.op
            );
        }
    }
    Ok(f.target)
}

fn scenario(h: &HostRun, name: Scenario) -> std::result::Result<&Outcome, String> {
    let s = h
        .scenarios
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("the {name} scenario did not run on {}", h.name))?;
    match (&s.outcome, &s.status) {
        (Some(o), _) => Ok(o),
        (None, st) => Err(format!(
            "the {name} scenario {st} on {}: {}",
            h.name,
            s.error.as_deref().unwrap_or("no outcome")
        )),
    }
}

/// Computes one metric on one host, or says why it cannot.
pub fn metric(h: &HostRun, name: &str) -> std::result::Result<Measured, String> {
    let exact = |value: f64| Ok(Measured { value, ci95: None });
    match name {
        "weight_reduction_q4_0" => match scenario(h, Scenario::Memory)? {
            Outcome::Memory(rows) => rows
                .iter()
                .find(|r| r.config == "q4_0")
                .map(|r| exact(r.weights.reduction_vs_f16))
                .unwrap_or_else(|| Err("no q4_0 row in the memory scenario".into())),
            _ => Err("memory scenario holds another outcome".into()),
        },
        "decode_speedup_q4_0" => match scenario(h, Scenario::Latency)? {
            Outcome::Latency(rows) => {
                let at0 = |c: &str| {
                    rows.iter()
                        .find(|r| r.config == c)
                        .and_then(|r| r.decode.iter().find(|d| d.depth == 0))
                        .ok_or_else(|| format!("no {c} decode at depth 0"))
                };
                let (f, q) = (at0("f16")?, at0("q4_0")?);
                let value = f.ms_per_token.median / q.ms_per_token.median;
                // Over repetitions (their medians are the samples), relative errors of the two
                // means added in quadrature.
                let ci95 = match (&f.reps_ms_per_token, &q.reps_ms_per_token) {
                    (Some(a), Some(b)) => a.ci95.zip(b.ci95).map(|(ca, cb)| {
                        value * ((ca / a.mean).powi(2) + (cb / b.mean).powi(2)).sqrt()
                    }),
                    _ => None,
                };
                Ok(Measured { value, ci95 })
            }
            _ => Err("latency scenario holds another outcome".into()),
        },
        "kv_context_ratio_q4_0" | "kv_kivi4_kl" | "window_flat" => {
            match scenario(h, Scenario::Context)? {
                Outcome::Context(c) => {
                    let row = |kv: &str| {
                        c.rows
                            .iter()
                            .find(|r| r.kv == kv)
                            .ok_or_else(|| format!("no {kv} row in the context scenario"))
                    };
                    match name {
                        "kv_context_ratio_q4_0" => {
                            let (q, f) = (row("q4_0")?, row("f16")?);
                            match (q.tokens_in_budget, f.tokens_in_budget) {
                                (Some(a), Some(b)) if b > 0 => exact(a as f64 / b as f64),
                                _ => Err("token counts in budget are missing".into()),
                            }
                        }
                        "kv_kivi4_kl" => exact(row("kivi4")?.divergence.mean_kl),
                        _ => c
                            .window
                            .as_ref()
                            .map(|w| exact(if w.flat { 1.0 } else { 0.0 }))
                            .unwrap_or_else(|| Err(no_window(c))),
                    }
                }
                _ => Err("context scenario holds another outcome".into()),
            }
        }
        "accuracy_top1_q4_0" | "accuracy_max_kl" | "accuracy_pass" => {
            match scenario(h, Scenario::Accuracy)? {
                Outcome::Accuracy(rows) if !rows.is_empty() => match name {
                    "accuracy_top1_q4_0" => rows
                        .iter()
                        .find(|r| r.config == "q4_0")
                        .map(|r| exact(r.divergence.top1_agreement))
                        .unwrap_or_else(|| Err("no q4_0 accuracy row".into())),
                    "accuracy_max_kl" => exact(
                        rows.iter()
                            .map(|r| r.divergence.mean_kl)
                            .fold(0.0, f64::max),
                    ),
                    _ => exact(if rows.iter().all(|r| r.pass) {
                        1.0
                    } else {
                        0.0
                    }),
                },
                _ => Err("the accuracy scenario has no rows".into()),
            }
        }
        "warm_reload_speedup" => match scenario(h, Scenario::Reload)? {
            Outcome::Reload(r) => match (r.speedup, &r.warm_missing) {
                (Some(v), _) if r.warm.as_ref().is_some_and(|w| w.load.path == "warm") => exact(v),
                (Some(_), _) => Err(format!(
                    "the second load was not served from the cache ({})",
                    r.warm.as_ref().map_or("?".into(), |w| w.load.path.clone())
                )),
                (None, why) => Err(format!(
                    "no warm load: {}",
                    why.as_deref().unwrap_or("not recorded")
                )),
            },
            _ => Err("reload scenario holds another outcome".into()),
        },
        other => Err(format!("unknown metric {other}")),
    }
}

/// Evaluates every target on every host it applies to. A host that was asked for but could not run
/// (not installed) is not measured, and so fails a required target; a host a target names that is
/// absent from the run fails it too, unless the run was asked not to include it.
pub fn evaluate(r: &RunResults, targets: &[Target]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for t in targets {
        let all = t.hosts.is_empty() || t.hosts.iter().any(|h| h == "all");
        let mut judge = |host: &str, m: std::result::Result<Measured, String>| {
            let verdict = match &m {
                Err(_) => "not measured",
                Ok(v)
                    if (t.op == ">=" && v.value >= t.threshold)
                        || (t.op == "<=" && v.value <= t.threshold) =>
                {
                    "pass"
                }
                Ok(_) => "fail",
            };
            out.push(Verdict {
                metric: t.metric.clone(),
                host: host.to_string(),
                op: t.op.clone(),
                threshold: t.threshold,
                required: t.required,
                not_measured: m.as_ref().err().cloned(),
                measured: m.ok(),
                verdict: verdict.into(),
            });
        };
        for h in r.hosts.iter().filter(|h| all || t.hosts.contains(&h.name)) {
            let m = match h.status {
                HostStatus::NotInstalled => Err(format!(
                    "{} was asked for but is not installed: {}",
                    h.name,
                    h.error.as_deref().unwrap_or("no reason recorded")
                )),
                _ => metric(h, &t.metric),
            };
            judge(&h.name, m);
        }
        let absent = t.hosts.iter().filter(|n| {
            *n != "all" && !r.hosts.iter().any(|h| &h.name == *n) && !r.excluded.contains(n)
        });
        for n in absent {
            judge(
                n,
                Err(format!(
                    "{n} is named by the target but took no part in the run, which was not asked to \
                     leave it out"
                )),
            );
        }
    }
    // Failures first: required, then advisory.
    out.sort_by_key(|v| (!(v.failed() && v.required), !v.failed()));
    out
}

/// Exit code for a set of verdicts.
pub fn exit_code(v: &[Verdict]) -> i32 {
    if v.iter().any(|v| v.required && v.failed()) {
        crate::args::EXIT_TARGET_FAILED
    } else {
        0
    }
}

pub fn table(v: &[Verdict]) -> String {
    let mut s = String::from(
        "| target | host | measured | 95% CI | threshold | required | verdict |\n|---|---|---|---|---|---|---|\n",
    );
    for x in v {
        let measured = match (&x.measured, &x.not_measured) {
            (Some(m), _) => format!("{:.4}", m.value),
            (None, Some(why)) => format!("not measured: {why}"),
            _ => "not measured".into(),
        };
        let ci = x
            .measured
            .as_ref()
            .and_then(|m| m.ci95)
            .map_or("n/a".into(), |c| format!("± {c:.4}"));
        s += &format!(
            "| {} | {} | {} | {} | {} {} | {} | {} |\n",
            x.metric,
            x.host,
            measured,
            ci,
            x.op,
            x.threshold,
            if x.required { "required" } else { "advisory" },
            x.verdict.to_uppercase()
        );
    }
    s
}

/// Loads, evaluates and prints; answers the exit code (2 for unusable input).
pub fn gate(a: GateArgs) -> i32 {
    let run = || -> Result<(Vec<Verdict>, String)> {
        let r = crate::results::load(&a.results)?;
        let t = load_targets(a.targets.as_deref())?;
        Ok((evaluate(&r, &t.list), t.source))
    };
    match run() {
        Ok((v, source)) => {
            println!("targets: {source}");
            print!("{}", table(&v));
            if let Some(j) = &a.json {
                if let Err(e) = std::fs::write(j, serde_json::to_vec_pretty(&v).unwrap_or_default())
                {
                    eprintln!("error: writing {}: {e}", j.display());
                    return crate::args::EXIT_FAILED;
                }
            }
            let code = exit_code(&v);
            eprintln!(
                "gate: {} verdicts, {} required failing",
                v.len(),
                v.iter().filter(|v| v.required && v.failed()).count()
            );
            code
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::args::EXIT_BAD_INPUT
        }
    }
}

/// Why a context scenario holds no sliding-window run.
fn no_window(c: &nibble_engine::scenario::Context) -> String {
    let why = c.window_not_run.as_deref();
    why.unwrap_or("no sliding-window run").into()
}
