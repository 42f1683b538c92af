//! `nibble setup` (install what the local suite needs, idempotently) and `nibble browsers` (what is
//! installed, and whether WebGPU really works in it, by requesting an adapter).

use super::discover::Given;
use super::products::{self, PRODUCTS};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::Path;
use std::process::Command;

/// Debian packages the local suite needs.
const PACKAGES: &[&str] = &[
    "chromium",
    "chromium-driver",
    "firefox-esr",
    "webkit2gtk-driver",
    "xvfb",
    "xauth",
    "mesa-vulkan-drivers",
    "libvulkan1",
];
const GECKODRIVER: &str = "0.37.1";

#[derive(Args)]
pub struct SetupArgs {
    /// Print the commands without running them.
    #[arg(long)]
    dry_run: bool,
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn has_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn sh(cmd: &str) -> Result<()> {
    eprintln!("setup: $ {cmd}");
    let s = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !s.success() {
        bail!("`{cmd}` failed ({s})");
    }
    Ok(())
}

/// The distribution's id from /etc/os-release ("debian", "ubuntu", ...), if any.
fn os_id() -> Option<String> {
    let s = std::fs::read_to_string("/etc/os-release").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("ID="))
        .map(|v| v.trim_matches('"').to_string())
}

/// Elsewhere than Debian (Ubuntu has Chromium only as a snap and no firefox-esr; macOS and Windows
/// have no apt): what was found, and what to install by hand. Never fails.
fn advise(os: &str) {
    println!("# {os}: nibble setup installs only on Debian; here is what it found");
    for p in PRODUCTS {
        let Some(pl) = &p.places else { continue };
        let f = products::locate(p, &Given::default());
        let missing = products::missing(p, &f);
        if missing.is_empty() {
            println!(
                "# {}: found {} and {}",
                p.display,
                f.browser.as_deref().unwrap_or(Path::new("?")).display(),
                f.driver.as_deref().unwrap_or(Path::new("?")).display()
            );
            continue;
        }
        let var = pl
            .driver_dir_env
            .map_or(String::new(), |v| format!(" or in the folder ${v} names"));
        println!(
            "# {}: {}; install the browser ({} on PATH, or in {}) and {} of the same version (on PATH{var}), \
             or name them in nibble.toml ([browsers.{}] binary and driver)",
            p.display,
            missing.join("; "),
            pl.names.join(" / "),
            pl.places.iter().map(|(_, p)| *p).collect::<Vec<_>>().join(", "),
            pl.driver_names.join(" / "),
            p.name
        );
    }
}

pub fn setup(a: SetupArgs) -> Result<()> {
    let id = os_id().unwrap_or_else(|| std::env::consts::OS.to_string());
    if id != "debian" {
        advise(&id);
        if !has_wasm_target() {
            println!("rustup target add wasm32-unknown-unknown");
        }
        return Ok(());
    }
    let debian = products::which("apt-get").is_some() && products::which("dpkg-query").is_some();
    let can_run = debian && is_root() && !a.dry_run;
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !debian || !installed(p))
        .collect();
    let mut steps: Vec<String> = Vec::new();
    for p in PACKAGES {
        if missing.contains(p) {
            eprintln!("setup: {p}: missing");
        } else {
            eprintln!("setup: {p}: present, skipped");
        }
    }
    if !missing.is_empty() {
        steps.push("apt-get update".into());
        steps.push(format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        ));
    }
    if products::which("geckodriver").is_none() {
        steps.push(format!(
            "cargo install --locked geckodriver --version {GECKODRIVER}"
        ));
    } else {
        eprintln!("setup: geckodriver: present, skipped");
    }
    if has_wasm_target() {
        eprintln!("setup: wasm32-unknown-unknown target: present, skipped");
    } else {
        steps.push("rustup target add wasm32-unknown-unknown".into());
    }
    if steps.is_empty() {
        eprintln!("setup: everything is present");
        return Ok(());
    }
    if !can_run {
        let why = if a.dry_run {
            "dry run"
        } else if !debian {
            "not a Debian/Ubuntu machine"
        } else {
            "not root"
        };
        println!("# {why}: run these yourself");
        for s in &steps {
            println!("{s}");
        }
        return Ok(());
    }
    for s in &steps {
        sh(s)?;
    }
    eprintln!("setup: done");
    Ok(())
}

#[derive(Args)]
pub struct BrowsersArgs {
    /// Only list; do not start each browser to request a WebGPU adapter.
    #[arg(long)]
    no_probe: bool,
    /// Binaries and drivers named per browser (`[browsers.NAME] binary`, `driver`).
    #[arg(long, default_value = "nibble.toml")]
    config: std::path::PathBuf,
}

pub async fn browsers(a: BrowsersArgs) -> Result<()> {
    let logs = std::env::temp_dir().join(format!("nibble-browsers-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let files = super::server::Files::default();
    let server = if a.no_probe {
        None
    } else {
        let dir = tokio::task::block_in_place(|| super::bundle::locate(None))?;
        files.add_dir("/", &dir)?;
        Some(super::server::Server::start(files).await?)
    };
    let given = crate::run::targets::given(&a.config)?;
    for p in PRODUCTS {
        println!("{} ({})", p.display, p.name);
        let f = products::locate(p, given.get(p.name).unwrap_or(&Given::default()));
        let missing = products::missing(p, &f);
        let (bver, dver) = products::versions(p, &f);
        let at = |path: &Option<std::path::PathBuf>, how: &str| match path {
            Some(x) => format!("{} ({how})", x.display()),
            None => "not found".into(),
        };
        println!(
            "  browser: {} {}",
            at(&f.browser, &f.browser_how),
            bver.as_deref().unwrap_or("")
        );
        println!(
            "  driver:  {} {}",
            at(&f.driver, &f.driver_how),
            dver.as_deref().unwrap_or("")
        );
        if !missing.is_empty() {
            println!("  missing: {}", missing.join("; "));
            for c in p.install {
                println!("  install: {c}");
            }
            continue;
        }
        let Some(server) = &server else { continue };
        match probe(p, &f, server, &logs).await {
            Ok(c) => {
                match &c.adapter {
                    Some(ad) => {
                        println!(
                            "  WebGPU:  works: {} ({}, {}), shader-f16 {}, maxStorageBufferBindingSize {}, \
                             activations {}",
                            ad.name,
                            ad.backend,
                            ad.device_type,
                            ad.shader_f16,
                            ad.limits.max_storage_buffer_binding_size,
                            c.activations.as_deref().unwrap_or("?")
                        );
                        println!("  features: {}", ad.features.join(", "));
                    }
                    None => println!(
                        "  WebGPU:  unavailable ({}); the engine runs on wasm-cpu",
                        c.gpu_unavailable.as_deref().unwrap_or("?")
                    ),
                }
                let apis: Vec<String> = c
                    .apis
                    .iter()
                    .map(|(k, v)| format!("{k}={}", if v.available { "yes" } else { "no" }))
                    .collect();
                println!("  apis:    {}", apis.join(" "));
            }
            Err(e) => println!("  probe failed: {e:#}"),
        }
    }
    let _ = std::fs::remove_dir_all(&logs);
    Ok(())
}

async fn probe(
    p: &products::Product,
    f: &super::discover::Found,
    server: &super::server::Server,
    logs: &std::path::Path,
) -> Result<nibble_engine::scenario::Capabilities> {
    let l = p.local.as_ref().context("remote product")?;
    let t = super::executor::Timeouts {
        session: std::time::Duration::from_secs(90),
        page: std::time::Duration::from_secs(90),
        load: std::time::Duration::from_secs(90),
        scenario: std::time::Duration::from_secs(90),
        poll: std::time::Duration::from_secs(30),
    };
    let mut _x = None;
    let display = if l.needs_display {
        let x = super::driver::start_xvfb(logs).await?;
        let d = x.display.clone();
        _x = Some(x);
        Some(d)
    } else {
        None
    };
    let bin = f.driver.as_deref().context("no driver")?;
    let (_proc, url) =
        super::driver::start_driver(p.name, l, bin, display.as_deref(), logs).await?;
    let profile = logs.join(format!("{}-profile", p.name));
    std::fs::create_dir_all(&profile)?;
    let mut s = super::executor::connect(
        &url,
        &products::capabilities(p.name, &profile, f.browser.as_deref(), false),
        &t,
    )
    .await?;
    let r = async {
        s.open_page(&server.url("/index.html"), &t).await?;
        let v = s
            .call("open", vec![serde_json::json!("{}")], t.page, &t, |_| {})
            .await?;
        let c: nibble_engine::scenario::Capabilities =
            serde_json::from_str(v.as_str().context("no text")?)?;
        Ok(c)
    }
    .await;
    s.close().await;
    r
}
