//! `nibble setup` (install what the local suite needs, idempotently) and `nibble browsers` (what is
//! installed, and whether WebGPU really works in it, by requesting an adapter).

use super::products::{self, PRODUCTS};
use anyhow::{bail, Context, Result};
use clap::Args;
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

pub fn setup(a: SetupArgs) -> Result<()> {
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
    let has_wasm = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown"))
        .unwrap_or(false);
    if has_wasm {
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
}

pub async fn browsers(a: BrowsersArgs) -> Result<()> {
    let logs = std::env::temp_dir().join(format!("nibble-browsers-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let files = super::server::Files::default();
    let server = if a.no_probe {
        None
    } else {
        let dir = tokio::task::block_in_place(|| super::bundle::build(false))?;
        files.add_dir("/", &dir)?;
        Some(super::server::Server::start(files).await?)
    };
    for p in PRODUCTS {
        println!("{} ({})", p.display, p.name);
        let Some(l) = &p.local else {
            println!("  {}", p.install.join("; "));
            continue;
        };
        let missing = products::missing(p);
        let bver = products::version_of(l.version_cmd);
        let dver = products::version_of(l.driver_version_cmd);
        println!("  browser: {}", bver.as_deref().unwrap_or("not installed"));
        println!(
            "  driver:  {} {}",
            l.binary,
            dver.as_deref().unwrap_or("not installed")
        );
        if !missing.is_empty() {
            println!("  missing: {}", missing.join("; "));
            for c in p.install {
                println!("  install: {c}");
            }
            continue;
        }
        let Some(server) = &server else { continue };
        match probe(p, server, &logs).await {
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
    let (_proc, url) = super::driver::start_driver(p.name, l, display.as_deref(), logs).await?;
    let profile = logs.join(format!("{}-profile", p.name));
    std::fs::create_dir_all(&profile)?;
    let mut s =
        super::executor::connect(&url, &products::capabilities(p.name, &profile), &t).await?;
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
