//! `results.json`: one run, every host (the native references and each browser), every scenario. It is
//! rewritten atomically after every scenario, so a crash or a kill loses nothing already measured.

use crate::bench_cmd::Machine;
use anyhow::Result;
use nibble_engine::scenario::{Capabilities, Params, ScenarioRecord, Status};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub source: String,
    pub params: usize,
    pub vocab_size: usize,
    pub context: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceInfo {
    pub config: String,
    pub ppl: f64,
    pub tokens: usize,
    pub backend: String,
}

/// Where a host's run stands; serialized as the strings `results.json` has always had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostStatus {
    /// Not run yet (a run killed mid-way leaves later hosts so).
    #[default]
    #[serde(rename = "pending")]
    Pending,
    #[serde(rename = "ok")]
    Ok,
    /// The host or one of its scenarios failed.
    #[serde(rename = "failed")]
    Failed,
    #[serde(rename = "not installed")]
    NotInstalled,
    #[serde(rename = "interrupted")]
    Interrupted,
}

impl HostStatus {
    pub fn name(self) -> &'static str {
        match self {
            HostStatus::Pending => "pending",
            HostStatus::Ok => "ok",
            HostStatus::Failed => "failed",
            HostStatus::NotInstalled => "not installed",
            HostStatus::Interrupted => "interrupted",
        }
    }

    /// Ok when every scenario is, else failed.
    pub fn of(scenarios: &[ScenarioRecord]) -> HostStatus {
        if scenarios.iter().all(|s| s.status == Status::Ok) {
            HostStatus::Ok
        } else {
            HostStatus::Failed
        }
    }
}

impl std::fmt::Display for HostStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One host of a run: a native backend or a browser. Missing fields read as absent, so a partial
/// record (a run killed mid-browser) still loads.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HostRun {
    pub name: String,
    pub display: String,
    /// "native", "local" (a driver this harness started) or "remote".
    pub kind: String,
    pub status: HostStatus,
    pub error: Option<String>,
    /// How to install it, when it is not installed.
    #[serde(default)]
    pub install: Vec<String>,
    /// The last progress line the host reported (what it was doing when it failed).
    pub last_progress: Option<String>,
    pub browser_version: Option<String>,
    pub driver: Option<String>,
    pub driver_version: Option<String>,
    pub webdriver_url: Option<String>,
    pub capabilities: Option<Capabilities>,
    /// The engine's load report (fetch and parse times, bytes).
    pub load: Option<Value>,
    /// The page's memory APIs (performance.memory, measureUserAgentSpecificMemory) after the memory
    /// scenario, with the reasons for what is unavailable.
    pub page_memory: Option<Value>,
    #[serde(default)]
    pub scenarios: Vec<ScenarioRecord>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub schema: u32,
    pub nibble_version: String,
    pub command: String,
    pub started_unix: u64,
    pub commit: Option<String>,
    pub machine: Machine,
    pub model: ModelInfo,
    /// The run's parameters; `seqs` holds the token sequences every host scored.
    pub params: Params,
    pub references: Vec<ReferenceInfo>,
    pub hosts: Vec<HostRun>,
    /// The quantization sweep on the native CPU (bits per weight against accuracy).
    #[serde(default)]
    pub sweep: Vec<nibble_engine::measure::SweepRow>,
    /// Hosts the run was asked not to include (browsers not in `--browsers`, the native GPU with
    /// `--no-native-gpu`): a target naming one is not gated on it. Absent in older results.
    #[serde(default)]
    pub excluded: Vec<String>,
}

impl RunResults {
    pub fn host_mut(&mut self, name: &str) -> &mut HostRun {
        let i = self
            .hosts
            .iter()
            .position(|h| h.name == name)
            .expect("host registered before use");
        &mut self.hosts[i]
    }
}

/// Writes `results.json` through a temporary file and a rename.
/// Whether the host's adapter was hardware or software, or why there was none.
pub fn adapter_kind(h: &HostRun) -> String {
    match &h.capabilities {
        None => "not measured".into(),
        Some(c) => match &c.adapter {
            Some(a) => a.kind(),
            None => format!(
                "none ({})",
                c.gpu_unavailable.as_deref().unwrap_or("CPU backend")
            ),
        },
    }
}

pub fn save(path: &Path, r: &RunResults) -> Result<()> {
    crate::files::write_atomic(path, |w| Ok(serde_json::to_writer_pretty(w, r)?))
}

/// Reads a results.json, naming the file and what is wrong with it.
/// Reads a results.json; a missing, malformed or foreign file is the user's input (exit code 2).
pub fn load(path: &Path) -> Result<RunResults> {
    let bad = crate::args::bad_input;
    let b = std::fs::read(path).map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
    let r: RunResults = serde_json::from_slice(&b).map_err(|e| {
        bad(format!(
            "{}: not a nibble results.json: {e}",
            path.display()
        ))
    })?;
    if r.schema != SCHEMA {
        return Err(bad(format!(
            "{}: schema {} (this nibble reads {SCHEMA})",
            path.display(),
            r.schema
        )));
    }
    Ok(r)
}

/// The commit this binary was built from (`build.rs`), "(modified)" when tracked files differed.
pub fn commit() -> Option<String> {
    option_env!("NIBBLE_COMMIT").map(str::to_string)
}
