//! Phi-3 as llama.cpp's converter writes it (Q, K and V in one `attn_qkv`, gate and up in one
//! `ffn_up`, LongRoPE's short factors and attention factor) against Hugging Face transformers'
//! logits on the same weights (`testdata/phi3-tiny.*`, written by `scripts/phi3-tiny.py`), then
//! every backend against the oracle as the harness judges them, and the file nibble writes back.

mod common;

use common::models_dir;
use common::tiny::{self, fixture, prompt};
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gguf::Gguf;
use nibble_engine::{block_on, Decoder, Model};

/// The oracle runs the file as transformers runs the model in float32: the fused tensors' rows are
/// found where the converter put them, RoPE pairs halves (NeoX) with each frequency divided by its
/// short factor, and cos and sin carry the attention factor (sqrt(1 + ln 8 / ln 32) = 1.26 here).
/// Tolerance: the harness's f32 rule (`tiny::oracle_matches_transformers`), L 2, n 128.
#[test]
fn the_oracle_matches_transformers_on_phi3() {
    let (m, r) = fixture("phi3-tiny");
    assert_eq!(m.config.arch, nibble_engine::config::Arch::Phi3);
    assert!(m.config.rope_freqs, "rope_factors_short.weight read");
    let f = r["attn_factor"].as_f64().unwrap() as f32;
    assert_eq!(m.config.rope_attn_factor, f);
    tiny::oracle_matches_transformers("phi3-tiny", &m, &r);
}

/// Phi-3.5's files declare 128K positions, but past the original context (32 here) the long factors
/// take over and every cached key's rotation would change: nibble stops at the original context.
#[test]
fn phi3_runs_to_its_original_context() {
    let (m, r) = fixture("phi3-tiny");
    let n = prompt(&r).len();
    assert_eq!(
        m.config.seq_len, n,
        "the original context, not the declared 256"
    );
    let mut dec = CpuDecoder::new(&m);
    block_on(dec.step(1, n - 1)).unwrap();
    let e = block_on(dec.step(1, n)).expect_err("past the context");
    assert!(
        e.to_string().contains("past the model's context of 32"),
        "{e}"
    );
}

/// Phi-3 adds no kernel, only where rows are read and RoPE's table, which the f32 paths cover;
/// the 8-bit and f16 activation paths are the kernels tests/fast.rs and tests/gpu.rs hold to
/// their rules.
#[test]
fn every_backend_runs_phi3_as_the_oracle_does() {
    let (m, r) = fixture("phi3-tiny");
    tiny::every_backend_matches_the_oracle("phi3-tiny", &m, prompt(&r));
}

/// nibble writes a Phi-3 as llama.cpp reads one: gate and up back in one `ffn_up` (gate first),
/// the short factors as `rope_factors_short`, the attention factor and the original context; Q, K
/// and V apart (llama.cpp takes either). Read back, it computes the same logits bit for bit.
#[test]
fn a_written_phi3_reads_back_the_same() {
    let (m, r) = fixture("phi3-tiny");
    let bytes = tiny::written_reads_back_the_same(&m, &prompt(&r));
    let g = Gguf::parse(&bytes, "written.gguf").unwrap();
    let dims = |n: &str| g.tensor(n).map(|t| t.dims.clone());
    let c = &m.config;
    assert_eq!(
        dims("blk.1.ffn_up.weight"),
        Some(vec![c.dim as u64, 2 * c.hidden_dim as u64])
    );
    assert_eq!(dims("blk.1.ffn_gate.weight"), None);
    assert_eq!(
        dims("blk.0.attn_q.weight"),
        Some(vec![c.dim as u64, c.dim as u64])
    );
    assert_eq!(
        dims("rope_factors_short.weight"),
        Some(vec![c.head_size() as u64 / 2])
    );
}

/// A fused tensor whose rows do not add up to Q, K and V is refused by its own name, before any
/// data is read.
#[test]
fn a_fused_tensor_of_the_wrong_shape_names_file_and_tensor() {
    let mut b = std::fs::read(models_dir().join("phi3-tiny.gguf")).unwrap();
    let name = b"blk.0.attn_qkv.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // n_dims (u32), then dims[0] (the row length) and dims[1] (the rows), u64 each.
    let rows = at + 4 + 8;
    assert_eq!(
        u64::from_le_bytes(b[rows..rows + 8].try_into().unwrap()),
        128
    );
    b[rows..rows + 8].copy_from_slice(&96u64.to_le_bytes());
    let e = Model::from_gguf(&b, "bad-phi3.gguf")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bad-phi3.gguf")
            && e.contains("\"blk.0.attn_qkv.weight\"")
            && e.contains("[64, 96]")
            && e.contains("[64, 128]"),
        "{e}"
    );
}
