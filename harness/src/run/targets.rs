//! Where each requested browser runs: a driver this harness starts (a `PRODUCTS` entry) or a remote
//! endpoint from `--webdriver` or `nibble.toml`.

use super::RunArgs;
use crate::args::bad_input;
use crate::browser::discover::{Found, Given};
use crate::browser::products::{self, Product};
use anyhow::Result;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `[browsers.NAME]` tables of nibble.toml.
#[derive(serde::Deserialize, Default)]
struct FileConfig {
    #[serde(default)]
    browsers: BTreeMap<String, BrowserConfig>,
}

#[derive(serde::Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct BrowserConfig {
    webdriver: Option<String>,
    /// Merged over the product's capability preset.
    capabilities: Option<toml::Value>,
    /// The browser executable, instead of searching for it.
    binary: Option<PathBuf>,
    /// The driver executable, instead of searching for it.
    driver: Option<PathBuf>,
    /// Ask for a hardware adapter (the product's GPU arguments on Linux), as `--gpu` does.
    #[serde(default)]
    gpu: bool,
}

/// The binary and driver `nibble.toml` names for each browser.
pub fn given(config: &Path) -> Result<BTreeMap<String, Given>> {
    Ok(read_config(config)?
        .browsers
        .into_iter()
        .map(|(k, b)| {
            let g = Given {
                binary: b.binary,
                driver: b.driver,
            };
            (k, g)
        })
        .collect())
}

fn read_config(path: &Path) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(s) => toml::from_str(&s).map_err(|e| bad_input(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(bad_input(format!("reading {}: {e}", path.display()))),
    }
}

/// Where a browser runs: a driver this harness starts, or a remote endpoint.
pub struct Target {
    pub name: String,
    pub product: Option<&'static Product>,
    pub remote: Option<String>,
    pub caps_override: Option<Value>,
    /// Where its browser and driver were found here (empty for a remote endpoint).
    pub found: Found,
    /// Its capabilities ask for a hardware adapter.
    pub gpu: bool,
}

pub fn targets(a: &RunArgs) -> Result<Vec<Target>> {
    let cfg = read_config(&a.config)?;
    let mut remote: BTreeMap<String, String> = cfg
        .browsers
        .iter()
        .filter_map(|(k, v)| v.webdriver.clone().map(|u| (k.clone(), u)))
        .collect();
    for w in &a.webdriver {
        let (n, u) = w
            .split_once('=')
            .ok_or_else(|| bad_input(format!("--webdriver {w}: expected NAME=URL")))?;
        remote.insert(n.to_string(), u.to_string());
    }
    let mut names: Vec<String> = Vec::new();
    for b in &a.browsers {
        match b.as_str() {
            "all" => names.extend(products::PRODUCTS.iter().map(|p| p.name.to_string())),
            "none" => {}
            n => names.push(n.to_string()),
        }
    }
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let product = products::find(&n);
        let over = cfg
            .browsers
            .get(&n)
            .and_then(|b| b.capabilities.clone())
            .map(serde_json::to_value)
            .transpose()?;
        if product.is_none() && !remote.contains_key(&n) {
            return Err(bad_input(format!(
                "unknown browser {n:?}: expected chrome, firefox, webkit, edge, safari, all, or a \
                 name with --webdriver {n}=URL"
            )));
        }
        let remote = remote.get(&n).cloned();
        let found = match (product, &remote) {
            (Some(p), None) => {
                let g = cfg.browsers.get(&n).map_or(Given::default(), |b| Given {
                    binary: b.binary.clone(),
                    driver: b.driver.clone(),
                });
                products::locate(p, &g)
            }
            _ => Found::default(),
        };
        let gpu = a.gpu || cfg.browsers.get(&n).is_some_and(|b| b.gpu);
        out.push(Target {
            remote,
            name: n,
            product,
            caps_override: over,
            found,
            gpu,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn nibble_toml_points_a_browser_at_a_remote_endpoint_with_merged_capabilities() {
        let dir = std::env::temp_dir().join(format!("nibble-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("nibble.toml");
        std::fs::write(
            &cfg,
            r#"
[browsers.chrome]
webdriver = "http://grid.example:4444"

[browsers.chrome.capabilities."goog:chromeOptions"]
binary = "/opt/chrome/chrome"

[browsers.mygrid]
webdriver = "http://other.example:4444"
"#,
        )
        .unwrap();
        let a = Cli::parse_from([
            "t",
            "--browsers",
            "chrome,firefox,mygrid",
            "--config",
            cfg.to_str().unwrap(),
            "--webdriver",
            "firefox=http://ff.example:4444",
        ])
        .run;
        let t = targets(&a).unwrap();
        let by = |n: &str| t.iter().find(|x| x.name == n).unwrap();
        assert_eq!(
            by("chrome").remote.as_deref(),
            Some("http://grid.example:4444")
        );
        assert_eq!(
            by("firefox").remote.as_deref(),
            Some("http://ff.example:4444")
        );
        assert_eq!(
            by("mygrid").remote.as_deref(),
            Some("http://other.example:4444")
        );
        assert!(by("mygrid").product.is_none());
        // The file's capabilities merge over the preset: the binary is replaced, the args are kept.
        let mut caps = products::capabilities("chrome", &dir, None, false);
        products::merge(&mut caps, by("chrome").caps_override.as_ref().unwrap());
        let opts = &caps["goog:chromeOptions"];
        assert_eq!(opts["binary"], "/opt/chrome/chrome");
        assert!(opts["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--enable-unsafe-webgpu"));
        // A name that is neither a product nor a configured endpoint is bad input.
        let a = Cli::parse_from([
            "t",
            "--browsers",
            "nosuch",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .run;
        let e = targets(&a).err().unwrap();
        assert!(e.is::<crate::args::BadInput>(), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gpu_asks_each_browser_for_a_hardware_adapter_by_its_own_flags() {
        let dir = std::env::temp_dir().join(format!("nibble-gpu-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("nibble.toml");
        std::fs::write(&cfg, "[browsers.chrome]\ngpu = true\n").unwrap();
        let parse = |extra: &[&str]| {
            let mut v = vec!["t", "--browsers", "chrome,firefox,edge", "--config"];
            v.push(cfg.to_str().unwrap());
            v.extend(extra);
            targets(&Cli::parse_from(v).run).unwrap()
        };
        let gpu_of = |t: &[Target]| -> Vec<(String, bool)> {
            t.iter().map(|x| (x.name.clone(), x.gpu)).collect()
        };
        // The file asks for Chromium only; --gpu asks for every browser.
        let file = parse(&[]);
        assert_eq!(
            gpu_of(&file),
            [
                ("chrome".into(), true),
                ("firefox".into(), false),
                ("edge".into(), false)
            ]
        );
        assert!(parse(&["--gpu"]).iter().all(|t| t.gpu));
        let args = |name: &str, gpu: bool| -> Vec<String> {
            let c = products::capabilities(name, &dir, None, gpu);
            let key = if name == "edge" {
                "ms:edgeOptions"
            } else {
                "goog:chromeOptions"
            };
            c[key]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect()
        };
        for name in ["chrome", "edge"] {
            let (soft, hard) = (args(name, false), args(name, true));
            assert!(!soft.iter().any(|a| a == "--use-angle=vulkan"), "{soft:?}");
            if cfg!(target_os = "linux") {
                assert!(hard.iter().any(|a| a == "--use-angle=vulkan"), "{hard:?}");
                assert_eq!(
                    hard.len(),
                    soft.len() + products::find(name).unwrap().gpu_args.len()
                );
            } else {
                assert_eq!(hard, soft);
            }
        }
        // Firefox's prefs already turn WebGPU on; asking for the GPU changes nothing there.
        let ff = |gpu| products::capabilities("firefox", &dir, None, gpu);
        assert_eq!(ff(true), ff(false));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
