//! Browsers as configuration (wptrunner's "products"): which driver starts them, the W3C capabilities
//! that turn WebGPU on, and how to install what is missing. No browser has its own code path.
//! The facts come from ../shared/docs/browsers.md (measured on the project's machines).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// How a local driver is started.
#[derive(Debug, Clone)]
pub struct LocalDriver {
    /// Driver executable, looked up on PATH and in ~/.cargo/bin.
    pub binary: &'static str,
    /// Arguments, with `{port}` replaced.
    pub args: &'static [&'static str],
    /// Extra environment for the driver (and so the browser it starts).
    pub env: &'static [(&'static str, &'static str)],
    /// Runs under an Xvfb the harness starts (no headless mode).
    pub needs_display: bool,
    /// The browser binary the capabilities name; its absence means "not installed".
    pub browser_binary: &'static str,
    /// Prints the browser's version.
    pub version_cmd: &'static [&'static str],
    /// Prints the driver's version.
    pub driver_version_cmd: &'static [&'static str],
}

#[derive(Debug, Clone)]
pub struct Product {
    pub name: &'static str,
    pub display: &'static str,
    /// `None`: reachable only through a remote endpoint (`--webdriver NAME=URL` or nibble.toml).
    pub local: Option<LocalDriver>,
    /// Exact commands that install it here (Debian/Ubuntu, as root), or how to reach it.
    pub install: &'static [&'static str],
}

const LAVAPIPE_ICD: &str = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";

pub const PRODUCTS: &[Product] = &[
    Product {
        name: "chrome",
        display: "Chromium",
        local: Some(LocalDriver {
            binary: "chromedriver",
            args: &["--port={port}"],
            env: &[],
            needs_display: false,
            browser_binary: "/usr/lib/chromium/chromium",
            version_cmd: &["/usr/lib/chromium/chromium", "--version"],
            driver_version_cmd: &["chromedriver", "--version"],
        }),
        install: &["DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver"],
    },
    Product {
        name: "firefox",
        display: "Firefox",
        local: Some(LocalDriver {
            binary: "geckodriver",
            args: &["--port", "{port}", "--host", "127.0.0.1"],
            // geckodriver must carry the Vulkan ICD itself; moz:firefoxOptions.env has no effect.
            env: &[("VK_ICD_FILENAMES", LAVAPIPE_ICD)],
            needs_display: false,
            browser_binary: "/usr/lib/firefox-esr/firefox-esr",
            version_cmd: &["/usr/lib/firefox-esr/firefox-esr", "--version"],
            driver_version_cmd: &["geckodriver", "--version"],
        }),
        install: &[
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends firefox-esr mesa-vulkan-drivers",
            "cargo install --locked geckodriver --version 0.37.1",
        ],
    },
    Product {
        name: "webkit",
        display: "WebKitGTK MiniBrowser",
        local: Some(LocalDriver {
            binary: "WebKitWebDriver",
            args: &["--port={port}", "--host=local"],
            // Without it the global SharedArrayBuffer is missing even when cross-origin isolated.
            env: &[("JSC_useSharedArrayBuffer", "true")],
            needs_display: true,
            browser_binary: "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser",
            version_cmd: &["dpkg-query", "-W", "-f=${Version}", "webkit2gtk-driver"],
            // WebKitWebDriver has no --version; the package's version is the driver's.
            driver_version_cmd: &["dpkg-query", "-W", "-f=${Version}", "webkit2gtk-driver"],
        }),
        install: &["DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends webkit2gtk-driver xvfb xauth"],
    },
    Product {
        name: "edge",
        display: "Microsoft Edge",
        local: None,
        install: &["remote only: run msedgedriver on a Windows runner and pass --webdriver edge=http://HOST:PORT (or [browsers.edge] webdriver in nibble.toml)"],
    },
    Product {
        name: "safari",
        display: "Safari",
        local: None,
        install: &["remote only: on a Mac run `safaridriver --enable` once, then `safaridriver -p 4444`, and pass --webdriver safari=http://HOST:4444"],
    },
];

pub fn find(name: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.name == name)
}

/// The capabilities preset for a product; `profile` is a fresh directory for this session.
pub fn capabilities(name: &str, profile: &Path) -> Value {
    let profile = profile.display().to_string();
    match name {
        "chrome" => json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/lib/chromium/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                    "--disable-dev-shm-usage", "--enable-unsafe-webgpu",
                    "--enable-webgpu-developer-features",
                    "--enable-blink-features=ForceEagerMeasureMemory",
                    format!("--user-data-dir={profile}"),
                ]
            }
        }),
        "firefox" => json!({
            "browserName": "firefox",
            "moz:firefoxOptions": {
                "binary": "/usr/lib/firefox-esr/firefox-esr",
                "args": ["-headless", "-profile", profile],
                "prefs": {
                    "dom.webgpu.enabled": true, "gfx.webgpu.ignore-blocklist": true,
                    "network.captive-portal-service.enabled": false,
                    "network.connectivity-service.enabled": false,
                    "app.update.disabledForTesting": true,
                    "datareporting.policy.dataSubmissionEnabled": false,
                    "toolkit.telemetry.enabled": false,
                    "browser.safebrowsing.malware.enabled": false,
                    "browser.safebrowsing.phishing.enabled": false,
                    "extensions.update.enabled": false,
                    "services.settings.server": "http://127.0.0.1:9/",
                    "browser.startup.homepage": "about:blank"
                }
            }
        }),
        "webkit" => json!({
            "browserName": "MiniBrowser",
            "webkitgtk:browserOptions": {
                "binary": "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser",
                "args": ["--automation"]
            }
        }),
        "edge" => json!({
            "browserName": "MicrosoftEdge",
            "ms:edgeOptions": {
                "args": ["--headless=new", "--enable-unsafe-webgpu", "--no-first-run",
                         "--enable-blink-features=ForceEagerMeasureMemory"]
            }
        }),
        "safari" => json!({ "browserName": "safari" }),
        // A product named only in nibble.toml brings its own capabilities.
        _ => json!({}),
    }
}

/// Finds an executable on PATH or in ~/.cargo/bin.
pub fn which(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return p.exists().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

/// What is missing for a local product, as the commands that would install it.
pub fn missing(p: &Product) -> Vec<String> {
    let Some(l) = &p.local else {
        return vec![];
    };
    let mut m = Vec::new();
    if !Path::new(l.browser_binary).exists() {
        m.push(format!("browser {} not found", l.browser_binary));
    }
    if which(l.binary).is_none() {
        m.push(format!("driver {} not found", l.binary));
    }
    if l.needs_display && which("Xvfb").is_none() {
        m.push("Xvfb not found".into());
    }
    if p.name == "firefox" && !Path::new(LAVAPIPE_ICD).exists() {
        m.push("lavapipe Vulkan driver (mesa-vulkan-drivers) not found".into());
    }
    m
}

/// A command's first output line, for versions.
pub fn version_of(cmd: &[&str]) -> Option<String> {
    let (bin, args) = cmd.split_first()?;
    let bin = which(bin)?;
    let out = std::process::Command::new(bin).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().next()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}

/// Merges `over` into `base` (objects key by key, anything else replaced).
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}
