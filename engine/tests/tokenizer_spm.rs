//! SentencePiece vocabularies with special tokens, held to llama.cpp's `llama-tokenize`
//! (`testdata/spm-special.json`, written by `scripts/spm-special.py`): control, user-defined and
//! unknown tokens written in the text encode whole (the longest first), the dummy-prefix space
//! goes before each fragment that follows one unless `tokenizer.ggml.add_space_prefix` is false
//! (Gemma's files), and a vocabulary named Phi-3 strips the whitespace after its special tokens.

mod common;

use common::models_dir;
use nibble_engine::gguf::{self, Gguf, Value, ValueType};
use nibble_engine::tokenizer::Tokenizer;
use serde_json::Value as Json;

/// The base file's vocabulary with the fixture's replacements, named and prefixed as `variant` says.
fn vocabulary(r: &Json, variant: &Json) -> Tokenizer {
    let bytes = std::fs::read(models_dir().join(r["base"].as_str().unwrap())).unwrap();
    let g = Gguf::parse(&bytes, "base").unwrap();
    let mut md: Vec<(String, Value)> = g
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") || k == "general.architecture")
        .cloned()
        .collect();
    for (k, v) in md.iter_mut() {
        let Value::Array(_, items) = v else { continue };
        for rep in r["replaced"].as_array().unwrap() {
            let i = rep[0].as_u64().unwrap() as usize;
            match k.as_str() {
                "tokenizer.ggml.tokens" => {
                    items[i] = Value::String(rep[1].as_str().unwrap().to_string())
                }
                "tokenizer.ggml.token_type" => {
                    items[i] = Value::I32(rep[2].as_i64().unwrap() as i32)
                }
                _ => {}
            }
        }
    }
    let name = variant["general_name"].as_str().unwrap().to_string();
    md.push(("general.name".into(), Value::String(name)));
    if let Some(b) = variant["add_space_prefix"].as_bool() {
        md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
    }
    assert!(md
        .iter()
        .any(|(k, v)| k == "tokenizer.ggml.tokens"
            && matches!(v, Value::Array(ValueType::String, _))));
    let file = gguf::write(&md, &[]).unwrap();
    Tokenizer::from_gguf(&Gguf::parse(&file, "vocab.gguf").unwrap(), "vocab.gguf").unwrap()
}

#[test]
fn special_tokens_and_the_space_prefix_encode_as_llama_cpp() {
    let path = models_dir().join("spm-special.json");
    let r: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts = r["texts"].as_array().unwrap();
    let mut differ = Vec::new();
    for variant in r["variants"].as_array().unwrap() {
        let t = vocabulary(&r, variant);
        // Through the component cache's bytes too: the settings must survive them.
        let mut b = Vec::new();
        t.to_bytes(&mut b);
        let cached = Tokenizer::from_bytes(&b, "entry").unwrap();
        for (text, want) in texts.iter().zip(variant["ids"].as_array().unwrap()) {
            let text = text.as_str().unwrap();
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            for (how, tok) in [("parsed", &t), ("cached", &cached)] {
                let got = tok.encode(text, false, false).unwrap();
                if got != want {
                    differ.push(format!(
                        "{} {how} {text:?}: {got:?} where llama.cpp gives {want:?}",
                        variant["label"]
                    ));
                }
            }
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
