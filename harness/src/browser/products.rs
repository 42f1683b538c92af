//! Browsers as configuration (wptrunner's "products"): which driver starts them, the W3C capabilities
//! that turn WebGPU on, and how to install what is missing. No browser has its own code path.
//! The facts come from ../shared/docs/browsers.md (measured on the project's machines).

use super::discover::{self, Found, Given, Layout, Os, Places};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// How a local driver is started; the browser and driver executables are found by [`discover`].
#[derive(Debug, Clone)]
pub struct LocalDriver {
    /// Arguments, with `{port}` replaced.
    pub args: &'static [&'static str],
    /// Extra environment for the driver (and so the browser it starts).
    pub env: &'static [(&'static str, &'static str)],
    /// Runs under an Xvfb the harness starts (no headless mode).
    pub needs_display: bool,
    /// Prints the browser's and the driver's versions where `--version` on the found executable does
    /// not (WebKitGTK's).
    pub version_cmd: Option<&'static [&'static str]>,
}

#[derive(Debug, Clone)]
pub struct Product {
    pub name: &'static str,
    pub display: &'static str,
    /// How its driver starts here; a product is also reachable through a remote endpoint
    /// (`--webdriver NAME=URL` or nibble.toml).
    pub local: Option<LocalDriver>,
    /// Where its browser and driver are found on each platform.
    pub places: Option<Places>,
    /// Exact commands that install it here (Debian/Ubuntu, as root), or how to reach it.
    pub install: &'static [&'static str],
    /// Arguments that give it a hardware WebGPU adapter on Linux (`--gpu`, `gpu = true`); elsewhere
    /// its defaults already do.
    pub gpu_args: &'static [&'static str],
}

/// Chromium's WebGPU on Linux runs on Vulkan only with these (measured with Chromium 148 on an
/// NVIDIA H200: without them it finds no hardware adapter, or a SwiftShader one).
const CHROMIUM_GPU_ARGS: &[&str] = &[
    "--enable-features=Vulkan,VulkanFromANGLE,DefaultANGLEVulkan",
    "--use-gl=angle",
    "--use-angle=vulkan",
    "--use-vulkan=native",
    "--ignore-gpu-blocklist",
    "--disable-vulkan-surface",
];

/// chromedriver and msedgedriver take the same arguments.
const CHROMIUM_DRIVER: LocalDriver = LocalDriver {
    args: &["--port={port}"],
    env: &[],
    needs_display: false,
    version_cmd: None,
};

const LAVAPIPE_ICD: &str = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";

pub const PRODUCTS: &[Product] = &[
    Product {
        name: "chrome",
        display: "Chromium",
        local: Some(CHROMIUM_DRIVER),
        places: Some(Places {
            // Debian's /usr/bin/chromium is a wrapper script: its binary lives under /usr/lib.
            names: &["google-chrome", "google-chrome-stable", "chromium-browser"],
            places: &[
                (Os::Linux, "/usr/lib/chromium/chromium"),
                (Os::Linux, "/opt/google/chrome/chrome"),
                (Os::Mac, "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"),
                (Os::Mac, "/Applications/Chromium.app/Contents/MacOS/Chromium"),
                (Os::Windows, "/Program Files/Google/Chrome/Application/chrome.exe"),
                (Os::Windows, "/Program Files (x86)/Google/Chrome/Application/chrome.exe"),
            ],
            driver_names: &["chromedriver"],
            driver_dir_env: Some("CHROMEWEBDRIVER"),
        }),
        install: &["DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver"],
        gpu_args: CHROMIUM_GPU_ARGS,
    },
    Product {
        name: "firefox",
        display: "Firefox",
        local: Some(LocalDriver {
            args: &["--port", "{port}", "--host", "127.0.0.1"],
            // geckodriver must carry the Vulkan ICD itself; moz:firefoxOptions.env has no effect.
            env: &[("VK_ICD_FILENAMES", LAVAPIPE_ICD)],
            needs_display: false,
            version_cmd: None,
        }),
        places: Some(Places {
            // Debian's /usr/bin/firefox is a wrapper script; firefox-esr links to the executable.
            names: &["firefox-esr", "firefox"],
            places: &[
                (Os::Linux, "/usr/lib/firefox-esr/firefox-esr"),
                (Os::Linux, "/usr/lib/firefox/firefox"),
                (Os::Mac, "/Applications/Firefox.app/Contents/MacOS/firefox"),
                (Os::Windows, "/Program Files/Mozilla Firefox/firefox.exe"),
            ],
            driver_names: &["geckodriver"],
            driver_dir_env: Some("GECKOWEBDRIVER"),
        }),
        install: &[
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends firefox-esr mesa-vulkan-drivers",
            "cargo install --locked geckodriver --version 0.37.1",
        ],
        gpu_args: &[],
    },
    Product {
        name: "webkit",
        display: "WebKitGTK MiniBrowser",
        local: Some(LocalDriver {
            args: &["--port={port}", "--host=local"],
            // Without it the global SharedArrayBuffer is missing even when cross-origin isolated.
            env: &[("JSC_useSharedArrayBuffer", "true")],
            needs_display: true,
            // Neither has --version; the package's version is both.
            version_cmd: Some(&["dpkg-query", "-W", "-f=${Version}", "webkit2gtk-driver"]),
        }),
        places: Some(Places {
            names: &[],
            places: &[
                (Os::Linux, "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser"),
                (Os::Linux, "/usr/lib/aarch64-linux-gnu/webkit2gtk-4.1/MiniBrowser"),
            ],
            driver_names: &["WebKitWebDriver"],
            driver_dir_env: None,
        }),
        install: &["DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends webkit2gtk-driver xvfb xauth"],
        gpu_args: &[],
    },
    Product {
        name: "edge",
        display: "Microsoft Edge",
        local: Some(CHROMIUM_DRIVER),
        places: Some(Places {
            names: &["msedge", "microsoft-edge", "microsoft-edge-stable"],
            places: &[
                (Os::Linux, "/opt/microsoft/msedge/msedge"),
                (Os::Mac, "/Applications/Microsoft Edge.app/Contents/MacOS/Microsoft Edge"),
                (Os::Windows, "/Program Files (x86)/Microsoft/Edge/Application/msedge.exe"),
                (Os::Windows, "/Program Files/Microsoft/Edge/Application/msedge.exe"),
            ],
            driver_names: &["msedgedriver"],
            driver_dir_env: Some("EDGEWEBDRIVER"),
        }),
        install: &["GitHub's Windows, macOS and Ubuntu runners carry Edge and msedgedriver ($EDGEWEBDRIVER); elsewhere install Microsoft Edge and the msedgedriver of the same version, or pass --webdriver edge=http://HOST:PORT"],
        gpu_args: CHROMIUM_GPU_ARGS,
    },
    Product {
        name: "safari",
        display: "Safari",
        local: Some(LocalDriver {
            args: &["-p", "{port}"],
            env: &[],
            needs_display: false,
            // Running Safari's executable would open a window; safaridriver names the version.
            version_cmd: Some(&["safaridriver", "--version"]),
        }),
        places: Some(Places {
            names: &[],
            places: &[(Os::Mac, "/Applications/Safari.app/Contents/MacOS/Safari")],
            driver_names: &["safaridriver"],
            driver_dir_env: None,
        }),
        install: &["macOS only: run `sudo safaridriver --enable` once (GitHub's macOS runners have it enabled), or pass --webdriver safari=http://HOST:PORT"],
        gpu_args: &[],
    },
];

pub fn find(name: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.name == name)
}

/// The capabilities preset for a product; `profile` is a fresh directory for this session and
/// `binary` the browser found here (named in the options where the driver takes one); `gpu` adds the
/// product's arguments for a hardware adapter on Linux.
pub fn capabilities(name: &str, profile: &Path, binary: Option<&Path>, gpu: bool) -> Value {
    let mut c = preset(name, profile);
    let key = match name {
        "chrome" => "goog:chromeOptions",
        "firefox" => "moz:firefoxOptions",
        "edge" => "ms:edgeOptions",
        "webkit" => "webkitgtk:browserOptions",
        _ => return c,
    };
    if let (Some(b), Some(o)) = (binary, c.get_mut(key)) {
        o["binary"] = json!(b.display().to_string());
    }
    let extra = find(name).map_or(&[][..], |p| p.gpu_args);
    if gpu && cfg!(target_os = "linux") && !extra.is_empty() {
        if let Some(args) = c[key]["args"].as_array_mut() {
            args.extend(extra.iter().map(|a| json!(a)));
        }
    }
    c
}

fn preset(name: &str, profile: &Path) -> Value {
    let profile = profile.display().to_string();
    match name {
        "chrome" => json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
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

/// Where this product's browser and driver are on this machine, `given` (nibble.toml) first.
pub fn locate(p: &Product, given: &Given) -> Found {
    match &p.places {
        Some(pl) => discover::find(pl, given, &Layout::current()),
        None => Found::default(),
    }
}

/// What is missing for a local product, in words.
pub fn missing(p: &Product, f: &Found) -> Vec<String> {
    let Some(l) = &p.local else {
        return vec![];
    };
    let mut m = Vec::new();
    if f.browser.is_none() {
        m.push(match &p.places {
            Some(pl) if f.browser_how.is_empty() => format!(
                "browser not found (looked for {} on PATH and in {})",
                pl.names.join(", "),
                pl.places
                    .iter()
                    .map(|(_, p)| *p)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => format!("browser not found ({})", f.browser_how),
        });
    }
    if f.driver.is_none() {
        let names = p
            .places
            .as_ref()
            .map_or(String::new(), |pl| pl.driver_names.join(", "));
        m.push(if f.driver_how.is_empty() {
            format!("driver {names} not found")
        } else {
            format!("driver not found ({})", f.driver_how)
        });
    }
    if l.needs_display && which("Xvfb").is_none() {
        m.push("Xvfb not found".into());
    }
    m
}

/// The browser's and the driver's versions, as they print them.
pub fn versions(p: &Product, f: &Found) -> (Option<String>, Option<String>) {
    let run = |bin: &Path| version_line(bin, &["--version"]);
    match p.local.as_ref().and_then(|l| l.version_cmd) {
        Some(cmd) => (version_of(cmd), version_of(cmd)),
        None => (
            f.browser.as_deref().and_then(run),
            f.driver.as_deref().and_then(run),
        ),
    }
}

/// A command's first output line, for versions.
pub fn version_of(cmd: &[&str]) -> Option<String> {
    let (bin, args) = cmd.split_first()?;
    version_line(&which(bin)?, args)
}

fn version_line(bin: &Path, args: &[&str]) -> Option<String> {
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
