//! GGUF interop with llama.cpp's `gguf` Python package, in both directions, and block-exact quantizers.

mod common;
use common::*;
use nibble_engine::model::{Class, TensorId};
use nibble_engine::quant::{QMatrix, WType};
use nibble_engine::Model;
use serde_json::Value;

fn checksum(v: &[f32]) -> (f64, f64) {
    (
        v.iter().map(|&x| x as f64).sum(),
        v.iter().map(|&x| (x as f64).abs()).sum(),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

fn tensor_values(m: &Model, id: TensorId) -> Vec<f32> {
    if id.class() == Class::Norm {
        m.weights.norm(id).to_vec()
    } else {
        m.weights.matrix(id).to_f32()
    }
}

/// nibble writes (f32, and every quantized type), gguf-py reads the same metadata and values.
#[test]
fn nibble_written_gguf_reads_in_gguf_py() {
    let dir = scratch("interop_read");
    let mut m = stories();
    // Quantize the 64-wide matrices so the file holds Q4_0, Q4_1, Q8_0 and F16 tensors.
    for (l, ty) in [
        (0, WType::Q4_0),
        (1, WType::Q4_1),
        (2, WType::Q8_0),
        (3, WType::F16),
    ] {
        let w = m.weights.matrix_mut(TensorId::Wq(l));
        *w = QMatrix::quantize(ty, 32, w.rows, w.cols, &w.to_f32());
    }
    let path = dir.join("nibble.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    m.write_gguf(&mut f).unwrap();
    drop(f);
    let json = dir.join("read.json");
    python(&["read", path.to_str().unwrap(), json.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let md = &v["metadata"];
    assert_eq!(md["general.architecture"], "llama");
    assert_eq!(md["llama.embedding_length"], 64);
    assert_eq!(md["llama.block_count"], 5);
    assert_eq!(md["llama.feed_forward_length"], 172);
    assert_eq!(md["llama.attention.head_count"], 8);
    assert_eq!(md["llama.attention.head_count_kv"], 4);
    assert_eq!(md["llama.context_length"], 512);
    assert_eq!(md["tokenizer.ggml.model"], "llama");
    assert_eq!(md["tokenizer.ggml.tokens"]["array_len"], 512);
    assert_eq!(md["tokenizer.ggml.bos_token_id"], 1);
    let tok = m.tokenizer.as_ref().unwrap();
    for (i, t) in v["tokens"].as_array().unwrap().iter().enumerate() {
        let want = String::from_utf8(tok.pieces[i].clone())
            .unwrap()
            .replace(' ', "\u{2581}");
        assert_eq!(t.as_str().unwrap(), want);
    }
    let tensors = v["tensors"].as_object().unwrap();
    let ids = TensorId::all(&m.config, true);
    assert_eq!(tensors.len(), ids.len());
    for id in ids {
        let t = &tensors[&id.gguf_name()];
        let (s, a) = checksum(&tensor_values(&m, id));
        assert!(close(t["sum"].as_f64().unwrap(), s), "{}", id.gguf_name());
        assert!(
            close(t["abs_sum"].as_f64().unwrap(), a),
            "{}",
            id.gguf_name()
        );
    }
    assert_eq!(tensors["blk.0.attn_q.weight"]["type"], "Q4_0");
    assert_eq!(tensors["blk.1.attn_q.weight"]["type"], "Q4_1");
    assert_eq!(tensors["blk.2.attn_q.weight"]["type"], "Q8_0");
    assert_eq!(tensors["blk.3.attn_q.weight"]["type"], "F16");
}

/// gguf-py writes a llama with every tensor type nibble reads (Q5_0, Q5_1 and BF16 among them);
/// nibble loads it, values match, and it runs.
#[test]
fn gguf_py_written_gguf_loads_in_nibble() {
    let dir = scratch("interop_write");
    let path = dir.join("py.gguf");
    let json = dir.join("py.json");
    python(&["write", path.to_str().unwrap(), json.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let m = Model::load(&path, None).unwrap();
    assert_eq!(m.name, "gguf-py-written");
    assert_eq!(m.config.n_kv_heads, 2);
    assert!(!m.tied());
    let tok = m.tokenizer.as_ref().unwrap();
    assert_eq!(tok.vocab_size(), v["vocab"].as_u64().unwrap() as usize);
    // "▁cat" is stored with a space in memory and encodes as one token.
    let cat = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t == "\u{2581}cat")
        .unwrap();
    assert_eq!(tok.encode("cat", false, false).unwrap(), vec![cat as u32]);
    for id in TensorId::all(&m.config, false) {
        let t = &v["tensors"][id.gguf_name()];
        let vals = tensor_values(&m, id);
        let (s, a) = checksum(&vals);
        assert!(
            close(t["sum"].as_f64().unwrap(), s),
            "{}: {} vs {s}",
            id.gguf_name(),
            t["sum"]
        );
        assert!(
            close(t["abs_sum"].as_f64().unwrap(), a),
            "{}",
            id.gguf_name()
        );
        if id.class() != Class::Norm {
            // Q5_0 is kept as Q8_0 (the same values), Q5_1 and BF16 as F32; the others as they are.
            let stored = match t["type"].as_str().unwrap() {
                "Q5_0" => "q8_0".to_string(),
                "Q5_1" | "BF16" => "f32".to_string(),
                ty => ty.to_lowercase(),
            };
            assert_eq!(m.weights.matrix(id).ty.name(), stored, "{}", id.gguf_name());
        }
    }
    let logits = forced_logits(&m, &tok.encode("the dog", true, false).unwrap());
    assert!(logits.iter().all(|x| x.is_finite()));
}

/// Q4_0, Q4_1 and Q8_0 blocks from nibble's quantizer equal gguf-py's, including edge-case blocks.
#[test]
fn quantized_blocks_equal_gguf_py() {
    let dir = scratch("interop_quant");
    let mut data: Vec<f32> = Vec::new();
    let mut s = 12345u32;
    for _ in 0..64 * 32 {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        data.push((s >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0);
    }
    data.extend([0.0f32; 32]); // all zero
    let mut outlier = [0.01f32; 32];
    outlier[5] = 1000.0;
    data.extend(outlier);
    let mut neg = [0.5f32; 32];
    neg[31] = -3.0;
    data.extend(neg);
    data.extend((0..32).map(|i| i as f32 / 8.0 - 2.0)); // exact halves: rounding ties
    let rows = data.len() / 64;
    let raw = dir.join("data.f32");
    std::fs::write(&raw, bytemuck::cast_slice(&data)).unwrap();
    python(&["quant", raw.to_str().unwrap(), dir.to_str().unwrap()]);
    for (ty, name) in [
        (WType::Q4_0, "Q4_0"),
        (WType::Q4_1, "Q4_1"),
        (WType::Q8_0, "Q8_0"),
    ] {
        let ours = QMatrix::quantize(ty, 32, rows, 64, &data)
            .to_ggml()
            .unwrap();
        let theirs = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        let first_diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{name}: first differing byte");
    }
}

/// Every family's forward pass on the CPU oracle against `py/gguf_interop.py forward`, a numpy
/// transcription of Hugging Face's Llama and Qwen3 modelling code run in float64 on the weights
/// gguf-py dequantizes from the same file: the Llama 2 layout (adjacent RoPE), and Qwen3's per-head
/// Q/K norms, NeoX RoPE and heads of 128 over a 256-wide residual (Q 512 wide), in f32 and Q4_K.
///
/// Tolerance: the oracle computes in f32 from the same weights, so its error is rounding alone, a
/// relative ~sqrt(n)·2^-24 per dot product (n <= 512: ~1.3e-6) compounded over 2 layers and the
/// classifier; as in tests/gpu.rs the bound is 2e-4 x (1 + max |logit|), with every top-1 equal.
#[test]
fn every_family_matches_a_numpy_transcription_of_transformers() {
    use nibble_engine::measure::{self, RunConfig};
    use nibble_engine::synth::Preset;
    let dir = scratch("interop_forward");
    let ids: Vec<u32> = (0..20).map(|i| 3 + (i * 37 % 250) as u32).collect();
    let csv: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    for (preset, spec) in [
        (Preset::Tiny, "weights=f32"),
        (Preset::Qwen3Tiny, "weights=f32"),
        (Preset::Qwen3Tiny, "weights=q4_k"),
    ] {
        let base = Model::synthetic(preset, 7);
        let (m, _) = measure::prepare(&base, &RunConfig::parse(spec).unwrap()).unwrap();
        let path = dir.join(format!("{}-{spec}.gguf", preset.name()));
        let mut f = std::fs::File::create(&path).unwrap();
        m.write_gguf(&mut f).unwrap();
        drop(f);
        let m = Model::load(&path, None).unwrap();
        assert_eq!(m.config, base.config, "{spec}: the config survives GGUF");
        let out = dir.join("logits.f32");
        python(&[
            "forward",
            path.to_str().unwrap(),
            &csv.join(","),
            out.to_str().unwrap(),
        ]);
        let want: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let got = forced_logits(&m, &ids);
        assert_eq!(got.len(), want.len());
        let v = m.config.vocab_size;
        let mut worst = 0f32;
        for (p, (a, b)) in got.chunks(v).zip(want.chunks(v)).enumerate() {
            let scale = b.iter().fold(0f32, |s, x| s.max(x.abs()));
            let d = a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
            assert!(
                d <= 2e-4 * (1.0 + scale),
                "{} {spec} position {p}: max |dlogit| {d} (logits up to {scale})",
                preset.name()
            );
            let top = |l: &[f32]| (0..v).max_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap();
            assert_eq!(top(a), top(b), "{} {spec} position {p}", preset.name());
            worst = worst.max(d);
        }
        println!("{} {spec}: max |dlogit| {worst:.3e}", preset.name());
    }
}
