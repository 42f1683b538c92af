//! The compatibility matrix: host × feature, each cell full, limited or unavailable with its reason.
//! Each feature is one function in [`FEATURES`].

use super::charts::outcome;
use crate::results::{HostRun, HostStatus, RunResults};
use nibble_engine::scenario::{Context, Outcome, Reload, Scenario};
use serde::Serialize;

#[derive(Serialize)]
pub struct Cell {
    level: String,
    reason: String,
}

fn cell(level: &str, reason: String) -> Cell {
    Cell {
        level: level.into(),
        reason,
    }
}

/// A column: its heading and how a host's record fills it.
type Feature = (&'static str, fn(&HostRun) -> Cell);

const FEATURES: [Feature; 9] = [
    ("GPU adapter", gpu_adapter),
    ("4-bit inference", four_bit),
    ("f16 activations", f16_activations),
    ("quantized KV cache", quantized_kv),
    ("sliding window", sliding_window),
    ("component cache", component_cache),
    ("OPFS", opfs),
    ("Cache API", cache_api),
    ("memory API", memory_api),
];

/// Browser × feature: full, limited or unavailable, each with its reason.
pub fn matrix(r: &RunResults) -> (Vec<String>, Vec<(String, Vec<Cell>)>) {
    let rows = r
        .hosts
        .iter()
        .map(|h| {
            let cells = FEATURES
                .iter()
                .map(|(_, f)| match h.status {
                    HostStatus::NotInstalled => cell(
                        "unavailable",
                        format!("not installed: {}", h.install.join("; ")),
                    ),
                    _ => f(h),
                })
                .collect();
            (h.name.clone(), cells)
        })
        .collect();
    (FEATURES.iter().map(|(n, _)| n.to_string()).collect(), rows)
}

/// Hardware or software: a software adapter's figures are about a rasteriser on the CPU.
fn gpu_adapter(h: &HostRun) -> Cell {
    let kind = crate::results::adapter_kind(h);
    let level = if kind.starts_with("hardware") {
        "full"
    } else if kind.starts_with("software") {
        "limited"
    } else {
        "unavailable"
    };
    cell(level, kind)
}

fn four_bit(h: &HostRun) -> Cell {
    let backend = h
        .capabilities
        .as_ref()
        .map_or("?".to_string(), |c| c.backend.clone());
    match outcome(h, Scenario::Accuracy) {
        Some(Outcome::Accuracy(a)) if a.iter().any(|x| x.config == "q4_0" && x.pass) => {
            if backend == "wasm-cpu" || backend == "cpu" {
                cell(
                    "limited",
                    format!("q4_0 passes on the {backend} path (no WebGPU)"),
                )
            } else {
                cell("full", format!("q4_0 passes on {backend}"))
            }
        }
        Some(Outcome::Accuracy(_)) => {
            cell("unavailable", "q4_0 accuracy failed its tolerance".into())
        }
        _ => cell("unavailable", "accuracy not measured".into()),
    }
}

fn f16_activations(h: &HostRun) -> Cell {
    let caps = h.capabilities.as_ref();
    match caps.and_then(|c| c.activations.as_deref()) {
        Some("f16") => cell("full", "shader-f16".into()),
        Some("q8") => cell(
            "unavailable",
            format!(
                "no GPU: {} (the CPU backend's 8-bit activations)",
                caps.and_then(|c| c.gpu_unavailable.clone())
                    .unwrap_or_default()
            ),
        ),
        Some(_) => cell(
            "unavailable",
            "the adapter has no shader-f16: f32 activations".into(),
        ),
        None => cell(
            "unavailable",
            format!(
                "no GPU: {}",
                caps.and_then(|c| c.gpu_unavailable.clone())
                    .unwrap_or_default()
            ),
        ),
    }
}

fn context_of(h: &HostRun) -> Option<&Context> {
    match outcome(h, Scenario::Context) {
        Some(Outcome::Context(c)) => Some(c),
        _ => None,
    }
}

fn quantized_kv(h: &HostRun) -> Cell {
    match context_of(h) {
        Some(c) if c.rows.iter().any(|r| r.kv != "f16") => cell(
            "full",
            format!(
                "{} measured",
                c.rows
                    .iter()
                    .map(|r| r.kv.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        _ => cell("unavailable", "context scenario not measured".into()),
    }
}

fn sliding_window(h: &HostRun) -> Cell {
    match context_of(h).and_then(|c| c.window.as_ref()) {
        Some(w) if w.flat => cell(
            "full",
            format!(
                "{} positions, KV flat at {} B",
                w.positions_decoded, w.kv_bytes_at_end
            ),
        ),
        Some(w) => cell(
            "limited",
            format!(
                "KV grew from {} to {} B",
                w.kv_bytes_at_window, w.kv_bytes_at_end
            ),
        ),
        None => cell(
            "unavailable",
            context_of(h)
                .and_then(|c| c.window_not_run.clone())
                .unwrap_or_else(|| "not measured".into()),
        ),
    }
}

fn reload_of(h: &HostRun) -> Option<&Reload> {
    match outcome(h, Scenario::Reload) {
        Some(Outcome::Reload(r)) => Some(r),
        _ => None,
    }
}

/// From the reload scenario: a warm load served from the cache is full; a second load that was cold
/// or uncached is limited, with what the load recorded.
fn component_cache(h: &HostRun) -> Cell {
    let Some(r) = reload_of(h) else {
        return cell(
            "unavailable",
            "not measured: the reload scenario did not run".into(),
        );
    };
    let store = r.cold.load.store.as_deref().unwrap_or("no store");
    match &r.warm {
        Some(w) if w.load.path == "warm" => cell(
            "full",
            format!(
                "warm reload from {store}: {} of {} components from the cache, {:.1}x faster than cold",
                w.load.from_cache.len(),
                w.load.components,
                r.speedup.unwrap_or(f64::NAN)
            ),
        ),
        Some(w) => cell(
            "limited",
            format!(
                "the second load was {} ({}): {store} kept nothing across the page reload",
                w.load.path,
                w.load.uncached.as_deref().unwrap_or("no entry found")
            ),
        ),
        None => cell(
            "unavailable",
            format!(
                "no warm load: {}",
                r.warm_missing.as_deref().unwrap_or("not recorded")
            ),
        ),
    }
}

/// A browser storage API: exercised when the reload scenario stored the cache in it, else only seen.
fn storage_api(h: &HostRun, k: &str, store_prefix: &str) -> Cell {
    let caps = h.capabilities.as_ref();
    let used = reload_of(h).filter(|r| {
        r.cold
            .load
            .store
            .as_deref()
            .is_some_and(|s| s.starts_with(store_prefix))
    });
    match (caps.and_then(|c| c.apis.get(k)), used) {
        (_, Some(r)) => match &r.warm {
            Some(w) if w.load.path == "warm" => cell(
                "full",
                format!(
                    "the reload scenario's cache: written cold, read warm ({} bytes)",
                    w.load.cache_bytes_read
                ),
            ),
            _ => cell(
                "limited",
                "the reload scenario wrote the cache here, but the warm load did not read it back"
                    .into(),
            ),
        },
        (Some(a), None) if a.available => cell(
            "limited",
            format!(
                "present ({}); not exercised in this run (the reload scenario used another store or did not run)",
                a.detail
            ),
        ),
        (Some(a), None) => cell("unavailable", format!("absent ({})", a.detail)),
        (None, None) => cell("unavailable", "not a browser".into()),
    }
}

fn opfs(h: &HostRun) -> Cell {
    storage_api(h, "opfs", "OPFS")
}

fn cache_api(h: &HostRun) -> Cell {
    storage_api(h, "cache_api", "Cache API")
}

fn memory_api(h: &HostRun) -> Cell {
    match &h.page_memory {
        Some(m) => {
            let has = |k: &str| m.get(k).is_some();
            let why = m["not_available"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            match (
                has("performance_memory_usedJSHeapSize"),
                has("ua_specific_memory_bytes"),
            ) {
                (true, true) => cell(
                    "full",
                    "performance.memory and measureUserAgentSpecificMemory".into(),
                ),
                (true, false) | (false, true) => cell("limited", why),
                _ => cell("unavailable", why),
            }
        }
        None if h.kind == "native" => cell("full", "native: peak RSS".into()),
        None => cell("unavailable", "not measured".into()),
    }
}
