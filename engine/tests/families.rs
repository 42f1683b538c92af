//! The model-family fixtures (`$NIBBLE_FAMILIES`, see `common::families_dir`): real Llama 3 and Qwen2
//! vocabularies and architectures, converted and quantized by llama.cpp, with references from Hugging
//! Face `tokenizers` and `transformers`.

mod common;
use common::*;
use nibble_engine::gguf::Gguf;
use nibble_engine::tokenizer::Tokenizer;
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
