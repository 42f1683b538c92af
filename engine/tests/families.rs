//! The model-family fixtures (`$NIBBLE_FAMILIES`, see `common::families_dir`): real Llama 3 and Qwen2
//! vocabularies and architectures, converted and quantized by llama.cpp, with references from Hugging
//! Face `tokenizers` and `transformers`.

mod common;
use common::*;
use nibble_engine::gguf::Gguf;
use nibble_engine::tokenizer::bpe::Pre;
use nibble_engine::tokenizer::Tokenizer;
use nibble_engine::Decoder;
use serde_json::Value;
use std::path::Path;

const FIXTURES: [(&str, &str); 2] = [
    ("llama3-tiny", "llama3-tiny-Q4_K_M.gguf"),
    ("qwen2-tiny", "qwen2-tiny-Q4_K_M.gguf"),
];

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizer(dir: &Path, file: &str) -> Tokenizer {
    let bytes = std::fs::read(dir.join(file)).unwrap();
    Tokenizer::from_gguf(&Gguf::parse(&bytes, file).unwrap(), file).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every string of each tokenizer fixture encodes to Hugging Face's ids (special tokens written in the
/// text matched whole) and decodes back to Hugging Face's text.
#[test]
fn bpe_vocabularies_encode_and_decode_as_hugging_face() {
    let Some(fam) = families_dir("bpe_vocabularies_encode_and_decode_as_hugging_face") else {
        return;
    };
    for (dir, file) in FIXTURES {
        let dir = fam.join(dir);
        let tok = tokenizer(&dir, file);
        assert_eq!(tok.model_name(), "gpt2");
        let cases = json(&dir.join("tokens.json"));
        let cases = cases["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 35);
        let mut bad = Vec::new();
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want = ids(&c["ids"]);
            let got = tok.encode(text, false, false).unwrap();
            if got != want {
                bad.push(format!("{text:?}: {got:?} != {want:?}"));
            }
            let decoded = tok.decode(&want);
            if decoded != c["decoded"].as_str().unwrap() {
                bad.push(format!("decode {text:?}: {decoded:?}"));
            }
        }
        assert!(bad.is_empty(), "{file}:\n{}", bad.join("\n"));
        // The vocabulary survives the component cache's encoding.
        let mut b = Vec::new();
        tok.to_bytes(&mut b);
        let back = Tokenizer::from_bytes(&b, file).unwrap();
        let s = cases[1]["text"].as_str().unwrap();
        assert_eq!(
            back.encode(s, true, false).unwrap(),
            tok.encode(s, true, false).unwrap()
        );
        assert_eq!(back.add_bos, tok.add_bos);
    }
}

/// BOS as each file says: Llama 3 starts a sequence with it, Qwen does not.
#[test]
fn bos_follows_add_bos_token() {
    let Some(fam) = families_dir("bos_follows_add_bos_token") else {
        return;
    };
    for (dir, file) in FIXTURES {
        let dir = fam.join(dir);
        let tok = tokenizer(&dir, file);
        let logits = json(&dir.join("logits.json"));
        let text = logits["prompt"]["text"].as_str().unwrap();
        let want = ids(&logits["prompt"]["ids"]);
        let got = tok.encode(text, true, false).unwrap();
        assert_eq!(&got[..want.len()], &want[..], "{file}");
    }
}

/// Every `tokenizer.ggml.pre` name nibble takes beyond the fixtures' own, on a fixture's
/// vocabulary, encodes as llama.cpp's llama-tokenize does (`testdata/pre-tokenizers.json`, written by
/// `scripts/pre-tokenizers.py`): llama.cpp names the pre-tokenizers in GGUF files, so it is the
/// authority on what each name means. The name is kept when the vocabulary is written back.
#[test]
fn pre_tokenizer_names_encode_as_llama_cpp() {
    let Some(fam) = families_dir("pre_tokenizer_names_encode_as_llama_cpp") else {
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/pre-tokenizers.json");
    let reference = json(&path);
    let mut names = Vec::new();
    let mut bad = Vec::new();
    for run in reference["runs"].as_array().unwrap() {
        let (fixture, file) = (
            run["fixture"].as_str().unwrap(),
            run["file"].as_str().unwrap(),
        );
        let pre = run["pre"].as_str().unwrap();
        let bytes = std::fs::read(fam.join(fixture).join(file)).unwrap();
        // Where the name means the fixture's own pre-tokenizer, nibble follows Hugging Face on the
        // texts where llama.cpp does not (tokens.json lists them: Qwen2's NFC normalizer, which
        // llama.cpp does not apply, on a decomposed accent).
        let mut g = Gguf::parse(&bytes, file).unwrap();
        let own = Tokenizer::from_gguf(&g, file).unwrap().bpe().unwrap().pre;
        let cases = json(&fam.join(fixture).join("tokens.json"));
        let differ = cases["disagreements"].as_array().unwrap();
        let follows_hf =
            |text: &str| Pre::parse(pre) == Some(own) && differ.iter().any(|d| d == text);
        let entry = g
            .metadata
            .iter_mut()
            .find(|(k, _)| k == "tokenizer.ggml.pre");
        entry.unwrap().1 = nibble_engine::gguf::Value::String(pre.into());
        let tok = Tokenizer::from_gguf(&g, file).unwrap();
        for c in run["cases"].as_array().unwrap() {
            let text = c["text"].as_str().unwrap();
            let got = tok.encode(text, false, false).unwrap();
            if follows_hf(text) {
                assert_ne!(
                    got,
                    ids(&c["ids"]),
                    "{fixture} as {pre}: {text:?} now agrees"
                );
                continue;
            }
            if got != ids(&c["ids"]) {
                bad.push(format!(
                    "{fixture} as {pre}: {text:?}: {got:?} != {}",
                    c["ids"]
                ));
            }
        }
        let mut b = Vec::new();
        tok.to_bytes(&mut b);
        let back = Tokenizer::from_bytes(&b, file).unwrap();
        assert_eq!(back.bpe().unwrap().pre_name, pre);
        names.push(pre.to_string());
    }
    assert!(
        bad.is_empty(),
        "{} texts differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
    // Every name nibble takes is held to llama.cpp here or by the fixtures' own tokens.json.
    for (name, _) in nibble_engine::tokenizer::bpe::PRE_NAMES {
        assert!(
            names.iter().any(|n| n == name) || ["llama-bpe", "qwen2"].contains(&name),
            "{name} has no llama.cpp reference"
        );
    }
}

/// Forced decoding of the reference prompt; per position, the largest |difference| from the reference
/// over logsumexp, the 16 fixed logits and the top-5 logits, and whether the top-1 agrees.
fn against_reference(logits: &[Vec<f32>], short: &Value, fixed_ids: &[u32]) -> (f64, usize) {
    let mut worst = 0.0f64;
    let mut top1 = 0;
    for (p, l) in logits.iter().enumerate() {
        let lse = nibble_engine::eval::log_sum_exp(l);
        worst = worst.max((lse - short["logsumexp"][p].as_f64().unwrap()).abs());
        for (k, &id) in fixed_ids.iter().enumerate() {
            let want = short["fixed_logits"][p][k].as_f64().unwrap();
            worst = worst.max((l[id as usize] as f64 - want).abs());
        }
        let ids5 = ids(&short["top5_ids"][p]);
        for (k, &id) in ids5.iter().enumerate() {
            let want = short["top5_logits"][p][k].as_f64().unwrap();
            worst = worst.max((l[id as usize] as f64 - want).abs());
        }
        let argmax = (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
        top1 += (argmax as u32 == ids5[0]) as usize;
    }
    (worst, top1)
}

fn forced(dec: &mut dyn nibble_engine::Decoder, tokens: &[u32]) -> Vec<Vec<f32>> {
    tokens
        .iter()
        .enumerate()
        .map(|(pos, &t)| nibble_engine::block_on(dec.step(t, pos)).unwrap().to_vec())
        .collect()
}

/// The CPU oracle runs Llama 3 (grouped-query attention, RoPE divisors, tied Q6_K classifier) and
/// Qwen2 (Q/K/V biases, NeoX RoPE) Q4_K_M files as Hugging Face transformers does in float32 on the
/// same dequantized weights.
///
/// Tolerance: both sides compute in f32 from bit-identical weights, so only summation order and
/// transcendental functions differ. A dot product of n <= 768 terms carries a relative error of order
/// sqrt(n) * 2^-24 (~2e-6) of the sum of |terms|, compounded through two layers and the 128K-256K-row
/// classifier, whose logits reach ~40: an error of order 1e-4. The test allows 1e-3 (the fixtures'
/// README gives ~1e-3 for an f32 engine), and requires every top-1 equal, which the fixtures' smallest
/// top-1 margin (0.053) makes meaningful at that tolerance.
#[test]
fn the_cpu_oracle_matches_transformers_on_llama3_and_qwen2() {
    let Some(fam) = families_dir("the_cpu_oracle_matches_transformers_on_llama3_and_qwen2") else {
        return;
    };
    for (dir, file) in FIXTURES {
        let dir = fam.join(dir);
        let m = nibble_engine::Model::load(&dir.join(file), None).unwrap();
        let r = json(&dir.join("logits.json"));
        let prompt = ids(&r["prompt"]["ids"]);
        let fixed = ids(&r["fixed_ids"]);
        let short = &r["files"][file]["short"];
        let mut dec = nibble_engine::cpu::CpuDecoder::new(&m);
        let logits = forced(&mut dec, &prompt);
        let (worst, top1) = against_reference(&logits, short, &fixed);
        eprintln!(
            "{file}: CPU oracle vs transformers max |dlogit| {worst:.2e}, top-1 {top1}/{}",
            prompt.len()
        );
        assert!(worst <= 1e-3, "{file}: max |dlogit| {worst}");
        assert_eq!(top1, prompt.len(), "{file}: top-1");
    }
}

/// The fixtures' long probe: 1024 positions of TinyStories text (no BOS), where RoPE at long range and
/// a long KV cache show. The CPU oracle against transformers at the stored positions (every 64th and
/// the last 4: logsumexp, the 16 fixed logits, the top-5 logits; top-1 where the reference's top-2 gap
/// exceeds twice the tolerance) and on the mean NLL over all 1023 next-token predictions (the PPL).
///
/// Tolerance: the short prompt's 1e-3 on logits and on the mean NLL. Attention sums over up to 1024
/// positions add rounding of order sqrt(1024)·2^-24 (~2e-6) relative, far inside it; the fixtures'
/// README measures an f32 engine (llama.cpp's F32 file) at 4.2e-4 from transformers over this probe.
#[test]
fn the_long_probe_matches_transformers_over_1024_positions() {
    let Some(fam) = families_dir("the_long_probe_matches_transformers_over_1024_positions") else {
        return;
    };
    const TOL: f64 = 1e-3;
    for (dir, file) in FIXTURES {
        let dir = fam.join(dir);
        let m = nibble_engine::Model::load(&dir.join(file), None).unwrap();
        let r = json(&dir.join("logits.json"));
        let long = ids(&r["long_prompt"]["ids"]);
        let fixed = ids(&r["fixed_ids"]);
        let refl = &r["files"][file]["long"];
        let stored = ids(&refl["positions"]);
        let mut dec = nibble_engine::cpu::CpuDecoder::new(&m);
        let (mut nll, mut worst, mut k) = (0.0f64, 0.0f64, 0);
        for (pos, &t) in long.iter().enumerate() {
            let l = nibble_engine::block_on(dec.step(t, pos)).unwrap();
            let lse = nibble_engine::eval::log_sum_exp(l);
            if let Some(&next) = long.get(pos + 1) {
                nll += lse - l[next as usize] as f64;
            }
            if stored.get(k) != Some(&(pos as u32)) {
                continue;
            }
            let mut d = (lse - refl["logsumexp"][k].as_f64().unwrap()).abs();
            for (j, &id) in fixed.iter().enumerate() {
                d = d.max(
                    (l[id as usize] as f64 - refl["fixed_logits"][k][j].as_f64().unwrap()).abs(),
                );
            }
            let top5 = ids(&refl["top5_ids"][k]);
            let top5_logits = &refl["top5_logits"][k];
            for (j, &id) in top5.iter().enumerate() {
                d = d.max((l[id as usize] as f64 - top5_logits[j].as_f64().unwrap()).abs());
            }
            let gap = top5_logits[0].as_f64().unwrap() - top5_logits[1].as_f64().unwrap();
            let argmax = (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap() as u32;
            assert!(
                gap <= 2.0 * TOL || argmax == top5[0],
                "{file} position {pos}: top-1"
            );
            worst = worst.max(d);
            k += 1;
        }
        assert_eq!(k, stored.len(), "{file}: every stored position visited");
        let mean = nll / (long.len() - 1) as f64;
        let want = refl["mean_nll"].as_f64().unwrap();
        eprintln!(
            "{file}: long probe, {} positions: max |dlogit| {worst:.2e} at {k} stored positions; \
             mean NLL {mean:.6} (reference {want:.6}), PPL {:.4e} (reference {:.4e})",
            long.len(),
            mean.exp(),
            want.exp()
        );
        assert!(worst <= TOL, "{file}: max |dlogit| {worst}");
        assert!(
            (mean - want).abs() <= TOL,
            "{file}: mean NLL {mean} vs {want}"
        );
    }
}

/// The GPU kernels (lavapipe, f32 activations) run both families as the CPU oracle does: Q/K/V biases,
/// NeoX and adjacent RoPE with Llama 3's divisors, grouped-query attention, the decode kernels step by
/// step and the batched prefill kernels over the whole prompt, on the files' own Q4_K/Q5_K/Q6_K
/// super-blocks (kquant.wgsl).
///
/// Tolerance as in tests/gpu.rs (f32 on both sides, summation order only): max |Δlogit| <= 2e-4 * (1 +
/// max |logit|), and every top-1 equal.
#[test]
fn the_gpu_runs_llama3_and_qwen2_as_the_oracle_does() {
    let Some(fam) = families_dir("the_gpu_runs_llama3_and_qwen2_as_the_oracle_does") else {
        return;
    };
    use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions};
    let gpu = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe)");
    for (dir, file) in FIXTURES {
        let dir = fam.join(dir);
        let m = nibble_engine::Model::load(&dir.join(file), None).unwrap();
        let prompt = ids(&json(&dir.join("logits.json"))["prompt"]["ids"]);
        let mut g = GpuDecoder::new(&gpu, &m, Default::default()).unwrap();
        let on_gpu = forced(&mut g, &prompt);
        let last = nibble_engine::block_on(g.prefill(&prompt, 0))
            .unwrap()
            .to_vec();
        let want = forced(&mut nibble_engine::cpu::CpuDecoder::new(&m), &prompt);
        let mut rows: Vec<(&str, &[f32], &[f32])> = on_gpu
            .iter()
            .zip(&want)
            .map(|(a, b)| ("step", a.as_slice(), b.as_slice()))
            .collect();
        rows.push(("prefill", &last, want.last().unwrap()));
        for (p, (path, a, b)) in rows.into_iter().enumerate() {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                d <= 2e-4 * (1.0 + scale),
                "{file} {path} position {p}: max |dlogit| {d} (logits up to {scale})"
            );
            let top = |l: &[f32]| (0..l.len()).max_by(|&i, &j| l[i].total_cmp(&l[j]));
            assert_eq!(top(a), top(b), "{file} {path} position {p}: top-1");
        }
    }
}

/// Each fixture's `tokenizer.chat_template` renders as transformers' `apply_chat_template` renders it
/// (Jinja2 with its settings, run by `py/gguf_interop.py chat`) for single and multi-turn conversations,
/// a system prompt, a reasoning block the Qwen template strips, and non-ASCII text; the rendered
/// prompt's control tokens encode whole, and the turn's end token ends generation.
#[test]
fn chat_templates_render_as_transformers_does() {
    let Some(fam) = families_dir("chat_templates_render_as_transformers_does") else {
        return;
    };
    use nibble_engine::tokenizer::chat::Message;
    let m = Message::new;
    let cases = vec![
        vec![m("user", "Hello")],
        vec![m("system", "You are terse."), m("user", "What is 2+2?")],
        vec![
            m("user", "Hi"),
            m("assistant", "Hello! How can I help?"),
            m("user", "Tell me a story."),
        ],
        vec![
            m("user", "Q"),
            m("assistant", "<think>\nhmm\n</think>\n\nA"),
            m("user", "again"),
        ],
        vec![m("user", "  café 日本語 🙂 \n")],
    ];
    let dir = scratch("chat_templates");
    let cases_path = dir.join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(&cases).unwrap()).unwrap();
    for ((sub, file), (turn_start, turn_end)) in FIXTURES.into_iter().zip([
        ("<|start_header_id|>", "<|eot_id|>"),
        ("<|im_start|>", "<|im_end|>"),
    ]) {
        let path = fam.join(sub).join(file);
        let out = dir.join(format!("{sub}.json"));
        python(&[
            "chat",
            path.to_str().unwrap(),
            cases_path.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let want: Vec<String> = serde_json::from_value(json(&out)).unwrap();
        let tok = tokenizer(&fam.join(sub), file);
        let id = |s: &str| tok.encode(s, false, false).unwrap();
        assert_eq!(id(turn_start).len(), 1, "{turn_start} is one control token");
        for (msgs, want) in cases.iter().zip(&want) {
            assert_eq!(&tok.chat_prompt(msgs).unwrap(), want, "{file}: {msgs:?}");
            let ids = tok.encode_chat(msgs).unwrap();
            assert_eq!(ids, tok.encode(want, false, false).unwrap());
            assert!(ids.contains(&id(turn_start)[0]), "{file}: {ids:?}");
        }
        assert!(tok.end_of_turn().contains(&id(turn_end)[0]), "{file}");
    }
}
