//! Where each requested browser runs: a driver this harness starts (a `PRODUCTS` entry) or a remote
//! endpoint from `--webdriver` or `nibble.toml`.

use super::RunArgs;
use crate::args::bad_input;
use crate::browser::products::{self, Product};
use anyhow::Result;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// `[browsers.NAME]` tables of nibble.toml.
#[derive(serde::Deserialize, Default)]
struct FileConfig {
    #[serde(default)]
    browsers: BTreeMap<String, BrowserConfig>,
}

#[derive(serde::Deserialize, Default, Clone)]
struct BrowserConfig {
    webdriver: Option<String>,
    /// Merged over the product's capability preset.
    capabilities: Option<toml::Value>,
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
        out.push(Target {
            remote: remote.get(&n).cloned(),
            name: n,
            product,
            caps_override: over,
        });
    }
    Ok(out)
}
