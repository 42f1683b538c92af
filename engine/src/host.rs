//! What the engine reads about the process it runs in: memory figures, natively from `/proc/self`,
//! in a browser from the wasm memory. The one place besides `web.rs` that touches the host.

use serde::{Deserialize, Serialize};

/// Memory the host reports about itself, where it can.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HostMemory {
    /// The wasm linear memory's size (browser).
    pub wasm_memory_bytes: Option<u64>,
    /// Peak resident set size of the process (native, Linux).
    pub peak_rss_bytes: Option<u64>,
}

impl HostMemory {
    /// Starts a new peak: natively, resets the process's peak RSS (Linux `clear_refs` 5), so the next
    /// reading is this phase's own. A wasm memory never shrinks: its size is already the peak.
    pub fn reset_peak() {
        #[cfg(not(target_arch = "wasm32"))]
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    pub fn now() -> HostMemory {
        #[cfg(target_arch = "wasm32")]
        {
            use wasm_bindgen::JsCast;
            let mem = wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>();
            let buf = mem.buffer().unchecked_into::<js_sys::ArrayBuffer>();
            HostMemory {
                wasm_memory_bytes: Some(buf.byte_length() as u64),
                peak_rss_bytes: None,
            }
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let peak = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                        .map(|kb| kb * 1024)
                });
            HostMemory {
                wasm_memory_bytes: None,
                peak_rss_bytes: peak,
            }
        }
    }
}
