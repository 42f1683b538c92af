//! `nibble run` end to end in real browsers (Chromium and Firefox on WebGPU, WebKitGTK on the wasm CPU
//! path) on the built-in model, the remote-endpoint path, and a browser killed mid-scenario.
//! These need the browsers and drivers `.ci/run` installs; they run one at a time (a lock), since two
//! browsers on a 2-core machine would only slow each other down.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Small figures: every scenario runs for real, but briefly.
const QUICK: &[&str] = &[
    "--reps",
    "1",
    "--max-tokens",
    "32",
    "--prompts",
    "16",
    "--depths",
    "0,32",
    "--decode-tokens",
    "8",
    "--past-context",
    "16",
    "--no-native-gpu",
];

/// Runs `nibble run` and checks its exit code is exactly `want` (0: every required target passes, 1: a
/// required target failed; 2 and 3 would be bad input and a run that could not be carried out);
/// answers results.json.
fn run(out: &Path, extra: &[&str], want: i32) -> Value {
    let o = nibble_run(out, extra, None);
    let err = String::from_utf8_lossy(&o.stderr);
    let gate = std::fs::read_to_string(out.join("gate.json")).unwrap_or_default();
    assert_eq!(
        o.status.code(),
        Some(want),
        "nibble run {extra:?}:\n{err}\ngate: {gate}"
    );
    results(out)
}

/// `nibble run` with the quick figures, `extra` arguments and, if given, one environment variable.
fn nibble_run(out: &Path, extra: &[&str], env: Option<(&str, &str)>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nibble"));
    c.arg("run").args(QUICK).args(extra).arg("--out").arg(out);
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.output().expect("run nibble")
}

fn results(out: &Path) -> Value {
    let b = std::fs::read(out.join("results.json")).expect("results.json written");
    serde_json::from_slice(&b).expect("results.json parses")
}

fn host<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name}"))
}

fn scenario<'a>(h: &'a Value, name: &str) -> &'a Value {
    h["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{}: no scenario {name}", h["name"]))
}

/// The backend Firefox's page runs on: WebGPU on lavapipe in the releases `../shared/docs/browsers.md`
/// measured (153 ESR). ESR 140, which some Debian mirrors still serve, keeps `navigator.gpu` out of
/// workers (measured 2026-12-03 with 140.10.2esr), so there the page runs on the CPU and says why.
fn firefox_backend(h: &Value) -> &'static str {
    let major = h["browser_version"]
        .as_str()
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        .expect("Firefox reports its version");
    if major > 140 {
        return "webgpu";
    }
    let why = h["capabilities"]["gpu_unavailable"].as_str().unwrap_or("");
    assert!(
        why.contains("navigator.gpu"),
        "Firefox {major} without WebGPU: {why}"
    );
    "wasm-cpu"
}

/// Every scenario ran and the accuracy rows pass against the native oracle.
fn assert_complete(h: &Value, backend: &str) {
    assert_eq!(h["status"], "ok", "{}: {}", h["name"], h["error"]);
    assert_eq!(h["capabilities"]["backend"], backend, "{}", h["name"]);
    assert!(h["browser_version"].as_str().is_some_and(|v| !v.is_empty()));
    for s in ["accuracy", "latency", "memory", "context", "reload"] {
        let sc = scenario(h, s);
        assert_eq!(sc["status"], "ok", "{} {s}: {}", h["name"], sc["error"]);
    }
    let rows = scenario(h, "accuracy")["outcome"]["data"]
        .as_array()
        .unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(
            r["pass"], true,
            "{} accuracy {}: {}",
            h["name"], r["config"], r["failure"]
        );
        assert!(r["divergence"]["tokens"].as_u64().unwrap() >= 32);
    }
    // Latency: real timings for every configuration.
    for c in scenario(h, "latency")["outcome"]["data"]
        .as_array()
        .unwrap()
    {
        let d = c["decode"][0]["ms_per_token"]["median"].as_f64().unwrap();
        assert!(d > 0.0 && d.is_finite(), "{}: decode {d}", h["name"]);
    }
    // Context: four KV types with measured token counts, and a window run past the context that
    // stayed flat.
    let ctx = &scenario(h, "context")["outcome"]["data"];
    assert_eq!(ctx["rows"].as_array().unwrap().len(), 4);
    let w = &ctx["window"];
    assert!(w["positions_decoded"].as_u64().unwrap() > w["model_context"].as_u64().unwrap());
    assert_eq!(w["flat"], true);
    // Reload: the first load in this fresh profile built and stored every component.
    let rl = &scenario(h, "reload")["outcome"]["data"];
    let cold = &rl["cold"]["load"];
    assert_eq!(cold["path"], "cold", "{}: {rl}", h["name"]);
    assert_eq!(cold["built"].as_array().unwrap().len(), 7);
    assert!(cold["cache_bytes_written"].as_u64().unwrap() > 0);
    // Streamed: the page read the served GGUF as the network delivered it and held about one
    // component of it at a time, never the whole file.
    assert_eq!(cold["streamed"], true, "{}: {cold}", h["name"]);
    let (held, fetched) = (
        cold["peak_buffered_bytes"].as_u64().unwrap(),
        cold["bytes_fetched"].as_u64().unwrap(),
    );
    assert!(
        held > 0 && held < fetched / 2,
        "{}: held {held} bytes of a {fetched}-byte file",
        h["name"]
    );
    // The page's own memory reading, not a placeholder: wasm memory never shrinks, and it held at
    // least the window of file bytes the load buffered.
    let mem = |k: &str| cold[k]["wasm_memory_bytes"].as_u64();
    let (before, after) = (mem("host_before").unwrap(), mem("host_after").unwrap());
    assert!(
        after >= before && after >= held,
        "{}: wasm memory {before} -> {after} bytes around a load that held {held}",
        h["name"]
    );
}

/// After the page reload the model came from the cache, every component verified, and the weights
/// were on the device sooner than cold, with the same first token.
fn assert_warm_reload(h: &Value) {
    let rl = &scenario(h, "reload")["outcome"]["data"];
    let (cold, warm) = (&rl["cold"], &rl["warm"]);
    assert_eq!(warm["load"]["path"], "warm", "{}: {rl}", h["name"]);
    assert_eq!(warm["load"]["from_cache"].as_array().unwrap().len(), 7);
    assert_eq!(warm["load"]["bytes_fetched"], 0);
    assert_eq!(warm["first_token"], cold["first_token"]);
    let (c, w) = (
        cold["ready_s"].as_f64().unwrap(),
        warm["ready_s"].as_f64().unwrap(),
    );
    assert!(
        w < c,
        "{}: warm {w} s is not faster than cold {c} s",
        h["name"]
    );
    println!(
        "{}: reload cold {c:.4} s, warm {w:.4} s ({:.2}x)",
        h["name"],
        c / w
    );
}

#[test]
fn chrome_firefox_webkit_run_every_scenario_on_the_builtin_model() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("run-local");
    // Safari is asked for but not installed here, so its required targets are not measured and the
    // gate says 1; every required target of targets.toml passes on every host that ran.
    let r = run(&out, &["--browsers", "chrome,firefox,webkit,safari"], 1);
    let verdicts: Value =
        serde_json::from_slice(&std::fs::read(out.join("gate.json")).unwrap()).unwrap();
    let failing: Vec<&Value> = verdicts
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["required"] == true && v["verdict"] != "pass")
        .collect();
    assert!(!failing.is_empty());
    for v in &failing {
        assert_eq!(v["host"], "safari", "a required target failed: {v}");
        assert_eq!(v["verdict"], "not measured", "{v}");
    }
    assert_eq!(host(&r, "native-cpu")["status"], "ok");
    let chrome = host(&r, "chrome");
    assert_complete(chrome, "webgpu");
    // Chromium's SwiftShader has no shader-f16: f32 activations, chosen automatically.
    assert_eq!(chrome["capabilities"]["activations"], "f32");
    let firefox = host(&r, "firefox");
    assert_complete(firefox, firefox_backend(firefox));
    // lavapipe has shader-f16; the CPU path's activations are 8-bit blocks.
    let act = if firefox_backend(firefox) == "webgpu" {
        "f16"
    } else {
        "q8"
    };
    assert_eq!(firefox["capabilities"]["activations"], act);
    assert_warm_reload(chrome);
    assert_warm_reload(firefox);
    let webkit = host(&r, "webkit");
    assert_complete(webkit, "wasm-cpu");
    // WebKitGTK's Cache API keeps entries within a page but not across a reload under WebKitWebDriver:
    // the second load is recorded as it happened (cold), and the gate says it is not a warm figure.
    let wk = &scenario(webkit, "reload")["outcome"]["data"];
    assert!(wk["warm"]["load"]["path"].is_string(), "{wk}");
    assert!(
        webkit["capabilities"]["gpu_unavailable"]
            .as_str()
            .is_some_and(|s| s.contains("navigator.gpu")),
        "{}",
        webkit["capabilities"]
    );
    // Chromium has performance.memory; the page reports it, Firefox says it lacks it.
    assert!(
        chrome["page_memory"]["performance_memory_usedJSHeapSize"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(firefox["page_memory"]["not_available"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s.as_str().unwrap().contains("performance.memory")));
    // Safari is remote-only here: recorded as not installed, with how to reach it.
    let safari = host(&r, "safari");
    assert_eq!(safari["status"], "not installed");
    assert!(safari["install"][0]
        .as_str()
        .unwrap()
        .contains("safaridriver"));
}

/// The OPFS store (`--cache opfs`) in Chromium and Firefox, and a forced quota failure: the model
/// still loads and runs, uncached, and the record says why.
#[test]
fn opfs_store_and_a_full_quota() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("run-opfs");
    // Only reload runs, so the targets of the other scenarios are not measured: the gate says 1.
    let r = run(
        &out,
        &[
            "--browsers",
            "chrome,firefox",
            "--scenarios",
            "reload",
            "--cache",
            "opfs",
        ],
        1,
    );
    for b in ["chrome", "firefox"] {
        let h = host(&r, b);
        assert_warm_reload(h);
        let store = &scenario(h, "reload")["outcome"]["data"]["warm"]["load"]["store"];
        assert!(store.as_str().unwrap().starts_with("OPFS"), "{b}: {store}");
    }
    let out = scratch("run-quota");
    let o = Command::new(env!("CARGO_BIN_EXE_nibble"))
        .arg("run")
        .args(QUICK)
        .args(["--browsers", "chrome", "--scenarios", "reload", "--out"])
        .arg(&out)
        .env("NIBBLE_CACHE_FAIL_WRITES", "1")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = results(&out);
    for name in ["chrome", "native-cpu"] {
        let rl = &scenario(host(&r, name), "reload")["outcome"]["data"];
        for k in ["cold", "warm"] {
            let l = &rl[k]["load"];
            assert_eq!(l["path"], "uncached", "{name} {k}: {rl}");
            assert!(
                l["uncached"].as_str().unwrap().contains("forced"),
                "{name}: {l}"
            );
        }
        assert_eq!(rl["cold"]["first_token"], rl["warm"]["first_token"]);
    }
}

/// The new families in every browser: Qwen3's layout (the `qwen3-tiny` preset: per-head Q/K norms,
/// heads of 128 over a 256-wide residual), Gemma 3's (`testdata/gemma3-tiny.gguf`: the embedding's
/// scale, GELU gating, sliding-window layers bound to their own steps and RoPE table), Gemma 2's
/// (soft-capped scores and logits) and a model
/// people download, the Qwen2 fixture (`$NIBBLE_FAMILIES`; Q4_K_M super-blocks, byte-level BPE,
/// Q/K/V biases, NeoX RoPE), run the accuracy scenario in Chromium and Firefox (WebGPU, the K-quant
/// kernels) and WebKitGTK (wasm on the CPU), and every accuracy row passes against the native
/// oracle. The fixture half is skipped with the reason where `NIBBLE_FAMILIES` is unset.
#[test]
fn the_new_families_are_accurate_in_every_browser() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let testdata = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let file = |name: &str| {
        vec![
            "--model".to_string(),
            testdata.join(name).display().to_string(),
        ]
    };
    let mut models = vec![
        (
            "qwen3-tiny",
            vec!["--preset".to_string(), "qwen3-tiny".into()],
        ),
        ("gemma3-tiny", file("gemma3-tiny.gguf")),
        ("gemma2-tiny", file("gemma2-tiny.gguf")),
    ];
    match std::env::var_os("NIBBLE_FAMILIES").map(PathBuf::from) {
        Some(fam) => {
            let model = fam.join("qwen2-tiny/qwen2-tiny-Q4_K_M.gguf");
            models.push(("qwen2", vec!["--model".into(), model.display().to_string()]));
        }
        None => {
            eprintln!("SKIPPED the Qwen2 fixture: NIBBLE_FAMILIES is not set (.ci/run sets it)")
        }
    }
    for (what, model) in models {
        let out = scratch(&format!("run-{what}"));
        let mut args: Vec<&str> = model.iter().map(String::as_str).collect();
        args.extend([
            "--browsers",
            "chrome,firefox,webkit",
            "--scenarios",
            "accuracy",
        ]);
        // Only accuracy runs, so targets needing other scenarios are "not measured": the gate says 1.
        let r = run(&out, &args, 1);
        for (name, backend) in [
            ("chrome", "webgpu"),
            ("firefox", firefox_backend(host(&r, "firefox"))),
            ("webkit", "wasm-cpu"),
        ] {
            let h = host(&r, name);
            assert_eq!(h["status"], "ok", "{what} {name}: {}", h["error"]);
            assert_eq!(h["capabilities"]["backend"], backend, "{what} {name}");
            // Every kernel module went through the browser's own shader compiler, those this model
            // never runs included.
            if backend == "webgpu" {
                let modules = h["capabilities"]["shader_modules"].as_str().unwrap_or("");
                assert!(modules.starts_with("all "), "{what} {name}: {modules:?}");
            }
            let sc = scenario(h, "accuracy");
            assert_eq!(sc["status"], "ok", "{what} {name}: {}", sc["error"]);
            let rows = sc["outcome"]["data"].as_array().unwrap();
            assert_eq!(rows.len(), 2, "{what} {name}");
            for row in rows {
                assert_eq!(
                    row["pass"], true,
                    "{what} {name} {}: {}",
                    row["config"], row["failure"]
                );
                assert!(
                    row["divergence"]["tokens"].as_u64().unwrap() >= 32,
                    "{what} {name}: {row}"
                );
            }
        }
    }
}

#[test]
fn a_remote_endpoint_is_driven_like_a_local_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("run-remote");
    // A chromedriver this test starts plays the remote grid.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver installed");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let url = format!("chrome=http://127.0.0.1:{port}");
    // Only accuracy runs, so targets needing other scenarios are "not measured": the gate says 1.
    let r = run(
        &out,
        &[
            "--browsers",
            "chrome",
            "--webdriver",
            &url,
            "--scenarios",
            "accuracy",
        ],
        1,
    );
    let _ = driver.kill();
    let _ = driver.wait();
    let chrome = host(&r, "chrome");
    assert_eq!(chrome["kind"], "remote");
    assert_eq!(chrome["status"], "ok", "{}", chrome["error"]);
    assert_eq!(chrome["webdriver_url"], format!("http://127.0.0.1:{port}"));
    assert_eq!(scenario(chrome, "accuracy")["status"], "ok");
}

#[test]
fn a_browser_killed_mid_scenario_is_recorded_and_the_run_goes_on() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("run-kill");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nibble"))
        .arg("run")
        .args(QUICK)
        .args([
            "--browsers",
            "chrome,webkit",
            "--scenarios",
            "accuracy,context",
        ])
        .arg("--out")
        .arg(&out)
        .env("NIBBLE_VERBOSE", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut killed = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log += &line;
        log.push('\n');
        // Once Chromium is inside the context scenario, kill every process of its profile.
        if !killed && line.contains("chrome: context") {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let s = Command::new("pkill")
                .args(["-KILL", "-f", "chrome-profile"])
                .status()
                .unwrap();
            assert!(s.success(), "no Chromium process to kill");
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "never saw the context scenario start:\n{log}");
    // The run finished and gated: Chromium's context figures are not measured, so a required target fails.
    assert_eq!(status.code(), Some(1), "the run did not go on:\n{log}");
    let r = results(&out);
    let chrome = host(&r, "chrome");
    assert_eq!(chrome["status"], "failed");
    assert!(chrome["error"].as_str().is_some_and(|e| !e.is_empty()));
    // What it had measured before the kill is kept; the killed scenario says it failed.
    assert_eq!(scenario(chrome, "accuracy")["status"], "ok");
    assert_eq!(scenario(chrome, "context")["status"], "failed");
    assert!(chrome["last_progress"].as_str().is_some());
    // The next browser still ran.
    let webkit = host(&r, "webkit");
    assert_eq!(webkit["status"], "ok", "{}", webkit["error"]);
}

#[test]
fn ctrl_c_stops_every_driver_and_browser_and_keeps_the_results() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("run-interrupt");
    let pids = |pat: &str| -> Vec<String> {
        let o = Command::new("pgrep").args(["-f", pat]).output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    // Drivers of other runs on this machine are not ours.
    let before = pids("chromedriver");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nibble"))
        .arg("run")
        .args(QUICK)
        .args(["--browsers", "chrome,firefox"])
        .arg("--out")
        .arg(&out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let mut log = String::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        log += &line;
        let hit = line.contains("chrome: accuracy");
        line.clear();
        if hit {
            break;
        }
    }
    assert!(log.contains("chrome: accuracy"), "{log}");
    let alive = |pat: &str| {
        Command::new("pgrep")
            .args(["-f", pat])
            .status()
            .unwrap()
            .success()
    };
    assert!(alive("chrome-profile"), "Chromium should be running");
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(!alive("chrome-profile"), "Chromium outlived the run");
    let left: Vec<String> = pids("chromedriver")
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(left.is_empty(), "chromedriver {left:?} outlived the run");
    // What was measured before is kept; the browsers that did not finish say so.
    let r = results(&out);
    assert_eq!(host(&r, "native-cpu")["status"], "ok");
    assert_eq!(host(&r, "firefox")["status"], "interrupted");
}

/// `nibble run` with test hooks in the environment; answers results.json and the exit code.
fn run_hooked(out: &Path, extra: &[&str], env: (&str, &str)) -> (Value, Option<i32>, String) {
    let o = nibble_run(out, extra, Some(env));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (results(out), o.status.code(), err)
}

#[test]
fn a_page_that_never_answers_times_out_and_the_next_browser_runs() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("run-hang");
    // Every page hangs in latency (the hook is the harness's environment); accuracy runs first.
    // The timeout covers both: Chromium's accuracy takes ~16 s here (SwiftShader compiles every
    // pipeline), so 60 s leaves a slower 2-core runner its margin and still ends the hang.
    let (r, code, err) = run_hooked(
        &out,
        &[
            "--browsers",
            "chrome,webkit",
            "--scenarios",
            "accuracy,latency",
            "--scenario-timeout",
            "60",
        ],
        ("NIBBLE_TEST_HANG", "latency"),
    );
    assert_eq!(code, Some(1), "{err}");
    for b in ["chrome", "webkit"] {
        let h = host(&r, b);
        assert_eq!(h["status"], "failed", "{b}: {h}");
        let acc = scenario(h, "accuracy");
        assert_eq!(acc["status"], "ok", "{b}: earlier results kept: {acc}");
        let lat = scenario(h, "latency");
        assert_eq!(lat["status"], "failed", "{b}: {lat}");
        let why = lat["error"].as_str().unwrap();
        assert!(
            why.contains("timed out") || why.contains("timeout"),
            "{b}: {why}"
        );
        assert!(
            h["last_progress"]
                .as_str()
                .is_some_and(|p| p.contains("never answers")),
            "{b}: the last progress line is kept: {h}"
        );
    }
}

#[test]
fn a_gpu_lost_mid_scenario_is_recorded_without_a_hang() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("run-lost-gpu");
    let (r, code, err) = run_hooked(
        &out,
        &["--browsers", "chrome", "--scenarios", "accuracy,latency"],
        ("NIBBLE_TEST_LOSE_GPU", "latency"),
    );
    assert_eq!(code, Some(1), "{err}");
    let h = host(&r, "chrome");
    assert_eq!(h["capabilities"]["backend"], "webgpu", "{h}");
    assert_eq!(
        scenario(h, "accuracy")["status"],
        "ok",
        "earlier results kept"
    );
    let lat = scenario(h, "latency");
    assert_eq!(lat["status"], "failed", "{lat}");
    // The GPU's own error is the reason (Chromium reports the failed readback; the device-lost
    // reason, when it arrives in time, replaces it).
    let why = lat["error"].as_str().unwrap();
    assert!(why.starts_with("GPU: "), "{why}");
    // The run went on to gate and report.
    assert!(out.join("gate.json").exists() && out.join("report.html").exists());
}
