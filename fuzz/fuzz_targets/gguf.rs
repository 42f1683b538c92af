#![no_main]
//! Any bytes: parse as GGUF and, when the header parses, load as a model. Errors are fine; panics,
//! overflows and runaway allocations are bugs.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if nibble_engine::gguf::Gguf::parse(data, "fuzz.gguf").is_ok() {
        let _ = nibble_engine::Model::from_gguf(data, "fuzz.gguf");
    }
});
