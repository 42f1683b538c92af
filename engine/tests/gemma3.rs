//! Gemma 3 as llama.cpp's converter writes it (norms stored as 1 + w, sliding-window layers with
//! their own RoPE base, linear RoPE scaling of the global layers) against Hugging Face
//! transformers' logits on the same weights (`testdata/gemma3-tiny.*`, written by
//! `scripts/gemma3-tiny.py`), then every backend against the oracle, and the file written back.

mod common;

use common::tiny::{self, fixture, prompt};
use nibble_engine::config::{Arch, Swa};
use nibble_engine::kv::KvConfig;

/// The oracle runs the file as transformers runs the model in float32: the embedding scaled by
/// sqrt(64) = 8, Q/K head norms, NeoX RoPE at base 1e6 / 8 on the global layers and 1e4 on the
/// local ones, which attend the last 8 positions of the 32-token prompt, post-attention and
/// post-feed-forward norms, GELU (tanh) gating, a tied classifier. Tolerance: the harness's f32
/// rule (`tiny::oracle_matches_transformers`), L 4, n 128.
#[test]
fn the_oracle_matches_transformers_on_gemma3() {
    let (m, r) = fixture("gemma3-tiny");
    let c = &m.config;
    assert_eq!(c.arch, Arch::Gemma3);
    let swa = Swa {
        window: 8,
        period: 2,
        rope_theta: 10000.0,
    };
    assert_eq!((c.swa, c.rope_scale, c.head_size()), (Some(swa), 8.0, 32));
    assert!(m.tied());
    tiny::oracle_matches_transformers("gemma3-tiny", &m, &r);
}

/// Gemma 3 adds kernels (the embedding's scale, GELU gating) and binds the attention and RoPE
/// kernels to the local layers' own steps and table; the GPU runs them as the oracle does, step
/// by step (split attention over a window) and in a prompt batch.
#[test]
fn every_backend_runs_gemma3_as_the_oracle_does() {
    let (m, r) = fixture("gemma3-tiny");
    tiny::every_backend_matches_the_oracle("gemma3-tiny", &m, prompt(&r));
}

/// nibble writes the keys llama.cpp reads for the windows, their period and base, and the
/// scaling; read back, the model computes the same logits bit for bit.
#[test]
fn a_written_gemma3_reads_back_the_same() {
    let (m, r) = fixture("gemma3-tiny");
    let bytes = tiny::written_reads_back_the_same(&m, &prompt(&r));
    let g = nibble_engine::gguf::Gguf::parse(&bytes, "written.gguf").unwrap();
    for key in [
        "gemma3.attention.sliding_window",
        "gemma3.attention.sliding_window_pattern",
        "gemma3.rope.freq_base_swa",
        "gemma3.rope.scaling.factor",
    ] {
        assert!(g.get(key).is_some(), "{key} written");
    }
}

/// A KV window ring on a model whose layers already attend windows is refused, by every backend's
/// check, with the reason.
#[test]
fn a_kv_window_on_gemma3_is_refused_with_the_reason() {
    let (m, _) = fixture("gemma3-tiny");
    let kv = KvConfig {
        window: Some(16),
        ..Default::default()
    };
    let e = kv.validate(&m.config).unwrap_err().to_string();
    assert!(
        e.contains("--window 16") && e.contains("sliding windows of 8"),
        "{e}"
    );
    assert!(nibble_engine::cpu::CpuDecoder::with_kv(&m, kv).is_err());
}
