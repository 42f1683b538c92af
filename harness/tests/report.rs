//! `nibble gate` and `nibble report` on a recorded results.json that a real `nibble run` produced
//! (tests/fixtures/results.json: the built-in model natively and in Chromium, Firefox and WebKitGTK).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn nibble(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nibble"))
        .args(args)
        .output()
        .expect("run nibble")
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/results.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn target(metric: &str, op: &str, threshold: f64, required: bool, hosts: &str) -> String {
    format!(
        "[[target]]\nmetric = \"{metric}\"\nop = \"{op}\"\nthreshold = {threshold}\nrequired = {required}\nhosts = [{hosts}]\n"
    )
}

fn gate(results: &str, targets: &str) -> (i32, String) {
    let o = nibble(&["gate", results, "--targets", targets]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn gates_pass_fail_not_measured_and_advisory() {
    let d = scratch("gate");
    // The recorded run asked for Safari, which was not installed; as a run that left it out, it is
    // the base of the checks below (Safari's own verdicts are checked after them).
    let mut r = fixture();
    r["hosts"]
        .as_array_mut()
        .unwrap()
        .retain(|h| h["name"] != "safari");
    r["excluded"] = serde_json::json!(["safari", "edge"]);
    let res = &write(&d, "no-safari.json", &r.to_string());
    // The repository's targets pass on the recorded run, but for the reload speed-up: the run was
    // recorded before the reload scenario existed, so that required target is not measured and fails.
    let (code, out) = gate(res, concat!(env!("CARGO_MANIFEST_DIR"), "/../targets.toml"));
    assert_eq!(code, 1, "{out}");
    for l in out
        .lines()
        .filter(|l| l.contains("| required |") && !l.starts_with("| target |"))
    {
        if l.contains("warm_reload_speedup") {
            assert!(l.contains("NOT MEASURED"), "{l}");
        } else {
            assert!(l.contains("PASS"), "{l}");
        }
    }
    // Measured 0.717: passes at 0.70, fails at 0.72.
    let t = write(
        &d,
        "pass.toml",
        &target("weight_reduction_q4_0", ">=", 0.70, true, ""),
    );
    assert_eq!(gate(res, &t).0, 0);
    let t = write(
        &d,
        "fail.toml",
        &target("weight_reduction_q4_0", ">=", 0.72, true, ""),
    );
    let (code, out) = gate(res, &t);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL"));
    // The same failure as advisory does not fail the gate.
    let t = write(
        &d,
        "adv.toml",
        &target("weight_reduction_q4_0", ">=", 0.72, false, ""),
    );
    assert_eq!(gate(res, &t).0, 0);
    // "<=" in both directions, limited to one host.
    let t = write(
        &d,
        "le.toml",
        &target("accuracy_max_kl", "<=", 1e-3, true, "\"chrome\""),
    );
    let (code, out) = gate(res, &t);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("| firefox |"), "{out}");
    let t = write(
        &d,
        "le2.toml",
        &target("accuracy_max_kl", "<=", 0.0, true, "\"chrome\""),
    );
    // Same weights as the oracle, but rounding leaves a KL above exactly zero.
    assert_eq!(gate(res, &t).0, 1);
    // A metric nobody measured: not measured fails a required target, never passes silently...
    let t = write(
        &d,
        "nm.toml",
        &target("warm_reload_speedup", ">=", 1.0, true, ""),
    );
    let (code, out) = gate(res, &t);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT MEASURED"));
    // ...and is only reported when advisory.
    let t = write(
        &d,
        "nm-adv.toml",
        &target("warm_reload_speedup", ">=", 1.0, false, ""),
    );
    assert_eq!(gate(res, &t).0, 0);
    // A scenario missing from one host makes its metrics not measured there.
    let mut r = fixture();
    for h in r["hosts"].as_array_mut().unwrap() {
        if h["name"] == "firefox" {
            h["scenarios"]
                .as_array_mut()
                .unwrap()
                .retain(|s| s["name"] != "memory");
        }
    }
    let partial = write(&d, "partial.json", &r.to_string());
    let t = write(
        &d,
        "p.toml",
        &target("weight_reduction_q4_0", ">=", 0.70, true, ""),
    );
    let (code, out) = gate(&partial, &t);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the memory scenario did not run on firefox"),
        "{out}"
    );
    // Unusable input: exit 2 with the file named.
    let bad = write(&d, "bad.json", "{\"schema\": 1, \"hosts\": [");
    let (code, out) = gate(&bad, &t);
    assert_eq!(code, 2);
    assert!(out.contains("bad.json"), "{out}");
    assert_eq!(gate("/nonexistent/results.json", &t).0, 2);
    let unknown = write(&d, "u.toml", &target("speed_of_light", ">=", 1.0, true, ""));
    let (code, out) = gate(res, &unknown);
    assert_eq!(code, 2);
    assert!(out.contains("unknown metric"), "{out}");
}

#[test]
fn report_renders_charts_gates_and_matrix_and_chromium_shows_it() {
    let d = scratch("report");
    let res = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/results.json");
    let out = d.join("out");
    let o = nibble(&["report", res, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Self-contained: no network references.
    for bad in ["src=\"http", "href=\"http", "<script src", "@import"] {
        assert!(
            !html.contains(bad),
            "report loads something from outside: {bad}"
        );
    }
    assert!(html.contains("id=\"gates\""));
    assert!(html.contains("id=\"matrix\""));
    // Every chart is an inline SVG with data marks (bars or points beyond the frame).
    let charts: Vec<&str> = html.split("<div class=\"chart\"").skip(1).collect();
    assert!(charts.len() >= 5, "{} charts", charts.len());
    for c in &charts {
        let svg = &c[c.find("<svg").expect("chart without svg")..];
        let marks = svg.matches("<rect").count()
            + svg.matches("<circle").count()
            + svg.matches("<polyline").count();
        assert!(
            marks > 3,
            "chart with {marks} marks: {}",
            &c[..80.min(c.len())]
        );
    }
    // The recorded run predates the reload scenario: the cold/warm chart is listed as not measured.
    assert!(html.contains("Reload: cold (empty cache) against warm (same profile), load and upload: no host measured it"));
    // CSV and summary.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.starts_with("host,scenario,config,metric,value"));
    assert!(csv.lines().count() > 50);
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| chrome | webgpu | q4_0 | tg@d0 |"), "{md}");
    // Each host says whether its adapter was hardware or software (SwiftShader in this recording).
    let chrome = md.lines().find(|l| l.starts_with("| chrome | ")).unwrap();
    assert!(chrome.contains("| software (SwiftShader"), "{chrome}");
    // Headless Chromium opens it and takes a screenshot that is not blank.
    let png = d.join("report.png");
    let profile = d.join("profile");
    let s = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1200,3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", out.join("report.html").display()))
        .output()
        .expect("chromium installed");
    assert!(png.exists(), "{}", String::from_utf8_lossy(&s.stderr));
    // A blank 1200x3000 page compresses to a few KB; tables and charts make it hundreds.
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 60_000, "screenshot of {size} bytes looks blank");
}

#[test]
fn partial_and_malformed_results_give_a_marked_report_or_a_clear_error() {
    let d = scratch("report-partial");
    // A run killed mid-browser: Firefox has no scenarios and no capabilities.
    let mut r = fixture();
    for h in r["hosts"].as_array_mut().unwrap() {
        if h["name"] == "firefox" {
            let o = h.as_object_mut().unwrap();
            o.remove("capabilities");
            o.insert("scenarios".into(), Value::Array(vec![]));
            o.insert("status".into(), "interrupted".into());
        }
    }
    let p = write(&d, "partial.json", &r.to_string());
    let out = d.join("out");
    let o = nibble(&["report", &p, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("the accuracy scenario did not run on firefox"),
        "missing parts are marked"
    );
    // Malformed: a clear error naming the file, no panic.
    for (name, text) in [
        ("trunc.json", "{\"schema\": 1, \"hos"),
        ("empty.json", ""),
        ("wrong.json", "[1,2,3]"),
    ] {
        let p = write(&d, name, text);
        let o = nibble(&["report", &p, "--out", d.join("x").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: bad input: {err}");
        assert!(err.contains(name), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn history_adds_trend_charts_per_metric() {
    let d = scratch("report-history");
    let mut dirs = Vec::new();
    for (i, day) in [0u64, 1, 2].iter().enumerate() {
        let mut r = fixture();
        r["started_unix"] = (r["started_unix"].as_u64().unwrap() + day * 86400).into();
        let dir = d.join(format!("run{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("results.json"), r.to_string()).unwrap();
        dirs.push(dir.to_string_lossy().into_owned());
    }
    let out = d.join("out");
    let mut args = vec!["report", "--out", out.to_str().unwrap(), "--history"];
    args.extend(dirs.iter().map(String::as_str));
    let o = nibble(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Trends cover 3 runs"));
    for m in [
        "weight_reduction_q4_0",
        "decode_speedup_q4_0",
        "accuracy_max_kl",
    ] {
        let id = format!("id=\"chart-trend-{m}\"");
        let at = html
            .find(&id)
            .unwrap_or_else(|| panic!("no trend chart for {m}"));
        // One point per run and host.
        let chart = &html[at..];
        let chart = &chart[..chart.find("</div>").unwrap()];
        assert!(chart.matches("<circle").count() >= 3, "{m}");
    }
}

/// A recorded reload-only run (tests/fixtures/reload-results.json: the built-in model natively and in
/// Chromium, Firefox and WebKitGTK): the cold/warm chart is drawn, the speed-up is measured where the
/// second load came from the cache, and WebKitGTK's is "not measured" with the reason.
#[test]
fn reload_chart_and_speedup_gate_from_a_recorded_run() {
    let d = scratch("report-reload");
    let res = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reload-results.json"
    );
    let out = d.join("out");
    let o = nibble(&["report", res, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let chart = html
        .split("<div class=\"chart\"")
        .find(|c| c.contains("Reload: cold"))
        .expect("a reload chart");
    assert!(
        chart.matches("<rect").count() > 8,
        "cold and warm bars per host"
    );
    // WebKitGTK's second load was cold: no warm bar for it, and the report says why.
    assert!(
        html.contains("warm reload, webkit: the second load was cold, not served from the cache"),
        "webkit's cold second load is not plotted as warm"
    );
    // The repository's targets: the speed-up is required where the cache survives a page reload,
    // and WebKitGTK is excluded by name.
    let (_, repo) = gate(res, concat!(env!("CARGO_MANIFEST_DIR"), "/../targets.toml"));
    let rows: Vec<&str> = repo
        .lines()
        .filter(|l| l.contains("warm_reload_speedup"))
        .collect();
    assert!(rows.iter().all(|l| !l.contains("| webkit |")), "{repo}");
    for h in ["chrome", "firefox", "native-cpu", "native-gpu"] {
        let line = rows
            .iter()
            .find(|l| l.contains(&format!("| {h} |")))
            .unwrap_or_else(|| panic!("no {h} row in {repo}"));
        assert!(
            line.contains("PASS") && line.contains("| required |"),
            "{line}"
        );
    }
    let t = write(
        &d,
        "r.toml",
        &target("warm_reload_speedup", ">=", 1.5, true, ""),
    );
    let (code, out) = gate(res, &t);
    // WebKitGTK's second load was cold, so a required speed-up target is not met there.
    assert_eq!(code, 1, "{out}");
    for h in ["chrome", "firefox", "native-cpu", "native-gpu"] {
        let line = out
            .lines()
            .find(|l| l.contains("warm_reload_speedup") && l.contains(&format!("| {h} |")))
            .unwrap_or_else(|| panic!("no {h} row in {out}"));
        assert!(line.contains("PASS"), "{line}");
    }
    assert!(out.contains("not served from the cache"), "{out}");
    // summary.md: per host and load, whether it streamed and the memory it took, as recorded.
    let md = std::fs::read_to_string(d.join("out").join("summary.md")).unwrap();
    let row = |h: &str, load: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {h} | {load} (")))
            .unwrap_or_else(|| panic!("no {h} {load} row in {md}"))
            .to_string()
    };
    let cold = row("chrome", "cold");
    assert!(cold.contains("| yes |") && cold.contains("wasm "), "{cold}");
    assert!(row("chrome", "warm").contains("none (from the cache)"));
    assert!(row("native-cpu", "cold").contains("peak RSS"));
    assert!(row("native-gpu", "cold").contains("MB |"));
}

/// The matrix row of `host` in report.html: (level, reason) per feature, in column order.
fn matrix_row(html: &str, host: &str) -> Vec<(String, String)> {
    let table = html.split("<table id=\"matrix\">").nth(1).unwrap();
    let table = &table[..table.find("</table>").unwrap()];
    let row = table
        .split("<tr>")
        .find(|r| r.starts_with(&format!("<td>{host}</td>")))
        .unwrap_or_else(|| panic!("no matrix row for {host}"));
    row.split("<td class=\"")
        .skip(1)
        .map(|c| {
            let level = c[..c.find('"').unwrap()].to_string();
            let reason = c.split("<span class=\"note\">").nth(1).unwrap_or("");
            (
                level,
                reason[..reason.find("</span>").unwrap_or(0)].to_string(),
            )
        })
        .collect()
}

#[test]
fn matrix_cache_cells_come_from_the_reload_records() {
    let d = scratch("report-matrix");
    let res = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reload-results.json"
    );
    let out = d.join("out");
    let o = nibble(&["report", res, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let heads: Vec<&str> = html
        .split("<table id=\"matrix\">")
        .nth(1)
        .unwrap()
        .split("<th>")
        .skip(2)
        .map(|h| &h[..h.find("</th>").unwrap()])
        .collect();
    let col = |name: &str| heads.iter().position(|h| *h == name).unwrap();
    let (cache, opfs, api) = (col("component cache"), col("OPFS"), col("Cache API"));
    // Chromium and Firefox reloaded warm from the Cache API; WebKitGTK's second load was cold.
    for h in ["chrome", "firefox"] {
        let r = matrix_row(&html, h);
        assert_eq!(r[cache].0, "full", "{h}: {:?}", r[cache]);
        assert!(
            r[cache].1.contains("warm reload from Cache API"),
            "{h}: {:?}",
            r[cache]
        );
        assert_eq!(r[api].0, "full", "{h}: {:?}", r[api]);
        assert_eq!(
            r[opfs].0, "limited",
            "{h}: present, not exercised: {:?}",
            r[opfs]
        );
    }
    let w = matrix_row(&html, "webkit");
    assert_eq!(w[cache].0, "limited", "{:?}", w[cache]);
    assert!(
        w[cache].1.contains("second load was cold"),
        "{:?}",
        w[cache]
    );
    assert_eq!(w[opfs].0, "unavailable", "{:?}", w[opfs]);
    // Natively the directory store served the warm load; the browser APIs do not apply.
    let n = matrix_row(&html, "native-cpu");
    assert_eq!(n[cache].0, "full", "{:?}", n[cache]);
    assert_eq!(
        n[api],
        ("unavailable".to_string(), "not a browser".to_string())
    );
    assert!(!html.contains("not implemented yet"));
    // The adapter column: Chromium's recorded adapter is SwiftShader, a software one.
    let gpu = col("GPU adapter");
    let c = matrix_row(&html, "chrome");
    assert_eq!(c[gpu].0, "limited", "{:?}", c[gpu]);
    assert!(c[gpu].1.starts_with("software"), "{:?}", c[gpu]);
}

#[test]
fn a_host_asked_for_but_absent_fails_a_required_target() {
    let d = scratch("gate-absent");
    let res = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/results.json");
    // Safari was asked for and is not installed: its required targets are not measured and fail.
    let t = write(
        &d,
        "all.toml",
        &target("weight_reduction_q4_0", ">=", 0.70, true, ""),
    );
    let (code, out) = gate(res, &t);
    assert_eq!(code, 1, "{out}");
    let safari = out
        .lines()
        .find(|l| l.contains("| safari |"))
        .unwrap_or_else(|| panic!("no safari verdict: {out}"));
    assert!(
        safari.contains("NOT MEASURED") && safari.contains("not installed"),
        "{safari}"
    );
    // Every other host passes it.
    assert_eq!(
        out.lines().filter(|l| l.contains("| PASS |")).count(),
        5,
        "{out}"
    );
    // A host the target names that took no part in the run fails, unless the run left it out.
    let t = write(
        &d,
        "named.toml",
        &target(
            "weight_reduction_q4_0",
            ">=",
            0.70,
            true,
            "\"chrome\", \"chromium\"",
        ),
    );
    let (code, out) = gate(res, &t);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("| chromium |") && l.contains("took no part in the run")),
        "{out}"
    );
    let mut r = fixture();
    r["excluded"] = serde_json::json!(["chromium"]);
    let left_out = write(&d, "left-out.json", &r.to_string());
    let (code, out) = gate(&left_out, &t);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("| chromium |"), "{out}");
}

/// The SVG of the chart with `id` in report.html.
fn chart_svg<'a>(html: &'a str, id: &str) -> &'a str {
    let c = html
        .split(&format!("<div class=\"chart\" id=\"chart-{id}\">"))
        .nth(1)
        .unwrap_or_else(|| panic!("no chart {id}"));
    &c[..c.find("</div>").unwrap()]
}

/// The text elements of an SVG.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let t = &t[t.find('>').unwrap() + 1..];
            t[..t.find("</text>").unwrap()].trim().to_string()
        })
        .collect()
}

#[test]
fn every_chart_carries_its_series() {
    let d = scratch("report-series");
    let res = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/results.json");
    let out = d.join("out");
    let o = nibble(&["report", res, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let r = fixture();
    // One labelled bar per data point of the run, for every host that measured it.
    let mut want: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for h in r["hosts"].as_array().unwrap() {
        let name = h["name"].as_str().unwrap();
        for s in h["scenarios"].as_array().unwrap() {
            let data = &s["outcome"]["data"];
            match s["name"].as_str().unwrap() {
                "latency" => {
                    for c in data.as_array().unwrap() {
                        let cfg = c["config"].as_str().unwrap();
                        if c["decode"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|x| x["depth"] == 0)
                        {
                            want.entry("decode")
                                .or_default()
                                .push(format!("{name}/{cfg}"));
                        }
                        if !c["prefill"].as_array().unwrap().is_empty() {
                            want.entry("prefill")
                                .or_default()
                                .push(format!("{name}/{cfg}"));
                        }
                    }
                }
                "memory" => {
                    for m in data.as_array().unwrap() {
                        let cfg = m["config"].as_str().unwrap();
                        want.entry("memory")
                            .or_default()
                            .push(format!("{name}/{cfg}"));
                    }
                }
                "accuracy" => {
                    for a in data.as_array().unwrap() {
                        let cfg = a["config"].as_str().unwrap();
                        want.entry("accuracy")
                            .or_default()
                            .push(format!("{name}/w:{cfg}"));
                    }
                }
                _ => {}
            }
        }
    }
    assert!(want.len() == 4, "{want:?}");
    for (id, labels) in &want {
        let texts = svg_texts(chart_svg(&html, id));
        for l in labels {
            assert_eq!(
                texts.iter().filter(|t| *t == l).count(),
                1,
                "chart {id}: bar {l} is not labelled once among {texts:?}"
            );
        }
    }
    // The sweep: one labelled point per configuration of the grid (f32 KV, no window).
    let sweep = svg_texts(chart_svg(&html, "sweep"));
    for s in r["sweep"].as_array().unwrap() {
        if s["kv_k"] == "f32" && s["window"].is_null() {
            // Labelled by its weights: "weights q4_0/b32 | kv f32" is "q4_0/b32".
            let c = s["config"].as_str().unwrap();
            let w = c
                .split(" | ")
                .next()
                .unwrap()
                .trim_start_matches("weights ");
            assert!(
                sweep.iter().any(|t| t == w),
                "sweep point {c} unlabelled in {sweep:?}"
            );
        }
    }
    // A chart nobody measured is no empty chart: it is listed as not measured.
    assert!(!html.contains("id=\"chart-reload\""));
    assert!(html.contains("no host measured it"));
    // The gate table holds one row per verdict.
    let gates = html.split("<table id=\"gates\">").nth(1).unwrap();
    let gates = &gates[..gates.find("</table>").unwrap()];
    // One row per (target, host) of the repository's targets that applies to this run.
    let verdicts = gates.matches("<tr class=").count();
    assert!(verdicts >= 10, "{verdicts} gate rows");
    let (_, table) = gate(res, concat!(env!("CARGO_MANIFEST_DIR"), "/../targets.toml"));
    let rows = table.lines().filter(|l| l.starts_with("| ")).count() - 1;
    assert_eq!(
        verdicts, rows,
        "the report's gate table against `nibble gate`:\n{table}"
    );
}

#[test]
fn the_defaults_are_built_in_and_the_report_says_which_targets_it_used() {
    // A binary outside any checkout (run from an empty directory here) gates on the targets built
    // into it and renders with its built-in template; the gate and the report name the source.
    let d = scratch("builtin-defaults");
    let res = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/results.json");
    let o = Command::new(env!("CARGO_BIN_EXE_nibble"))
        .args(["gate", res])
        .current_dir(&d)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("targets: targets.toml built into nibble"),
        "{out}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_nibble"))
        .args(["report", res, "--out", "r"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(d.join("r/report.html")).unwrap();
    assert!(html.contains("Gated on targets.toml built into nibble"));
    // --targets and --template replace them, and the report says so.
    let t = write(
        &d,
        "t.toml",
        &target("weight_reduction_q4_0", ">=", 0.7, true, ""),
    );
    let tpl = write(
        &d,
        "tpl.html",
        "custom {{ targets_source }} {{ verdicts|length }}",
    );
    let o = nibble(&[
        "report",
        res,
        "--out",
        d.join("c").to_str().unwrap(),
        "--targets",
        &t,
        "--template",
        &tpl,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(d.join("c/report.html")).unwrap();
    assert_eq!(html, format!("custom {t} 6"));
}
