//! Progress bars on a terminal, plain lines elsewhere (CI logs), and the closing summary table.

use crate::results::RunResults;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use nibble_engine::scenario::Outcome;
use std::io::IsTerminal;

/// Progress: bars on a terminal, plain lines elsewhere (CI logs).
pub struct Ui {
    mp: Option<MultiProgress>,
}

impl Ui {
    pub fn new() -> Ui {
        Ui {
            mp: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }

    pub fn bar(&self, host: &str, len: u64) -> ProgressBar {
        match &self.mp {
            Some(mp) => {
                let b = mp.add(ProgressBar::new(len));
                b.set_style(
                    ProgressStyle::with_template("{prefix:>12} [{bar:20}] {pos}/{len} {wide_msg}")
                        .unwrap()
                        .progress_chars("=> "),
                );
                b.set_prefix(host.to_string());
                b
            }
            None => ProgressBar::hidden(),
        }
    }

    pub fn line(&self, host: &str, msg: &str) {
        match &self.mp {
            Some(mp) => {
                let _ = mp.println(format!("{host:>12}: {msg}"));
            }
            None => eprintln!("{host:>12}: {msg}"),
        }
    }
}

pub fn print_summary(r: &RunResults) {
    println!(
        "| host | status | seconds | backend | adapter | accuracy | decode q4_0 ms/token | error |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for h in &r.hosts {
        let backend = h
            .capabilities
            .as_ref()
            .map_or("-".into(), |c| c.backend.clone());
        let adapter = crate::results::adapter_kind(h);
        let acc = h
            .scenarios
            .iter()
            .find_map(|s| match &s.outcome {
                Some(Outcome::Accuracy(rows)) => Some(
                    rows.iter()
                        .map(|r| format!("{} {}", r.config, if r.pass { "PASS" } else { "FAIL" }))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                _ => None,
            })
            .unwrap_or_else(|| "not measured".into());
        let dec = h
            .scenarios
            .iter()
            .find_map(|s| match &s.outcome {
                Some(Outcome::Latency(rows)) => rows
                    .iter()
                    .find(|c| c.config == "q4_0")
                    .and_then(|c| c.decode.first())
                    .map(|d| {
                        format!(
                            "{:.3} (p10 {:.3}, p90 {:.3})",
                            d.ms_per_token.median, d.ms_per_token.p10, d.ms_per_token.p90
                        )
                    }),
                _ => None,
            })
            .unwrap_or_else(|| "not measured".into());
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            h.name,
            h.status,
            h.seconds,
            backend,
            adapter,
            acc,
            dec,
            h.error.as_deref().unwrap_or("")
        );
    }
}

/// Every progress line of a host, with `NIBBLE_VERBOSE` set.
pub fn host_progress(ui: &Ui, host: &str, m: &str) {
    if std::env::var_os("NIBBLE_VERBOSE").is_some() {
        ui.line(host, m);
    }
}
