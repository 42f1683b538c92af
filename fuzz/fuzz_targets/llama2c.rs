#![no_main]
//! Any bytes as a llama2.c checkpoint, and as a tokenizer.bin for a 512-token model.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nibble_engine::Model::from_llama2c(data, "fuzz.bin");
    let _ = nibble_engine::tokenizer::Tokenizer::from_llama2c(data, 512, "fuzz-tok.bin");
});
