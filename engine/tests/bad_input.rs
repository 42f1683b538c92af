//! Bad input gives a clear error naming the file and the field; never a panic or an absurd allocation.

mod common;
use common::*;
use nibble_engine::gguf::{self, Gguf, TensorOut, Value};
use nibble_engine::tokenizer::Tokenizer;
use nibble_engine::{Model, Preset};

fn err_gguf(bytes: &[u8]) -> String {
    Model::from_gguf(bytes, "bad.gguf").unwrap_err().to_string()
}

fn stories_gguf() -> Vec<u8> {
    let mut b = Vec::new();
    stories().write_gguf(&mut b).unwrap();
    b
}

#[test]
fn llama2c_truncated_at_every_boundary() {
    let bytes = std::fs::read(models_dir().join("stories260K.bin")).unwrap();
    // Every header int, then every section boundary of stories260K (dim 64, hidden 172, 5 layers,
    // kv_dim 32, vocab 512, seq 512, head 8), plus one byte into each section.
    let mut cuts: Vec<usize> = (0..=28).collect();
    let sections = [
        512 * 64,
        5 * 64,
        5 * 64 * 64,
        5 * 64 * 32,
        5 * 64 * 32,
        5 * 64 * 64,
        5 * 64,
        5 * 64 * 172,
        5 * 172 * 64,
        5 * 64 * 172,
        64,
        512 * 4,
        512 * 4,
    ];
    let mut at = 28;
    for n in sections {
        cuts.push(at + 1);
        at += n * 4;
        cuts.push(at);
    }
    assert_eq!(at, bytes.len(), "the section list matches the file");
    cuts.pop();
    for n in cuts {
        let e = Model::from_llama2c(&bytes[..n], "cut.bin")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cut.bin: "), "{n}: {e}");
        assert!(e.contains("truncated") || n < 28, "{n}: {e}");
    }
    // One extra byte contradicts the header.
    let mut long = bytes.clone();
    long.push(0);
    let e = Model::from_llama2c(&long, "long.bin")
        .unwrap_err()
        .to_string();
    assert!(e.contains("long.bin: size:"), "{e}");
}

#[test]
fn llama2c_absurd_header_does_not_allocate() {
    let mut b = Vec::new();
    for v in [65536i32, 262144, 1024, 1, 1, -1_000_000, 4_000_000] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&[0u8; 64]);
    let e = Model::from_llama2c(&b, "huge.bin").unwrap_err().to_string();
    assert!(
        e.contains("huge.bin: token_embedding_table: file is truncated"),
        "{e}"
    );
    let mut b2 = b.clone();
    b2[12..16].copy_from_slice(&3i32.to_le_bytes()); // 65536 not divisible by 3 heads
    let e = Model::from_llama2c(&b2, "h.bin").unwrap_err().to_string();
    assert!(e.contains("h.bin: n_heads:"), "{e}");
}

#[test]
fn gguf_truncated_at_every_header_boundary() {
    let bytes = stories_gguf();
    let g = Gguf::parse(&bytes, "x").unwrap();
    let data_offset = g.data_offset as usize;
    // Every byte of the header and tensor table, then every tensor's start and end.
    let mut cuts: Vec<usize> = (0..data_offset).step_by(1).collect();
    for t in &g.tensors {
        cuts.push(data_offset + t.offset as usize + 1);
        cuts.push(data_offset + (t.offset + t.n_bytes()) as usize - 1);
    }
    for n in cuts {
        let e = err_gguf(&bytes[..n]);
        assert!(e.starts_with("bad.gguf: "), "{n}: {e}");
    }
}

#[test]
fn gguf_wrong_magic_version_and_tensor_type() {
    let mut b = stories_gguf();
    b[3] = b'X';
    assert!(err_gguf(&b).contains("bad.gguf: magic:"));
    // Through the file loader, a .gguf with a bad magic reports the magic too.
    let dir = scratch("bad_magic");
    let p = dir.join("m.gguf");
    std::fs::write(&p, &b).unwrap();
    let e = Model::load(&p, None).unwrap_err().to_string();
    assert!(e.contains("m.gguf: magic:"), "{e}");

    let mut b = stories_gguf();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(err_gguf(&b).contains("version: GGUF version 1 is not supported"));

    // Write a file whose tensor says IQ2_XXS (16), a type nibble does not read: patch the first tensor.
    let b = stories_gguf();
    let name = b"token_embd.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let ty_at = at + 4 + 2 * 8;
    let mut b2 = b.clone();
    b2[ty_at..ty_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let e = err_gguf(&b2);
    assert!(
        e.contains("tensor \"token_embd.weight\".type") && e.contains("IQ2_XXS"),
        "{e}"
    );
}

fn tiny_gguf(md_patch: impl Fn(&mut Vec<(String, Value)>), offset_patch: Option<u64>) -> Vec<u8> {
    let m = Model::synthetic(Preset::Tiny, 1);
    let mut b = Vec::new();
    m.write_gguf(&mut b).unwrap();
    let g = Gguf::parse(&b, "x").unwrap();
    let mut md = g.metadata.clone();
    md_patch(&mut md);
    let mut out = gguf::write(&md, &tensors_except(&g, "")).unwrap();
    if let Some(off) = offset_patch {
        // Point the last tensor's offset past the end of the file.
        let last = g.tensors.last().unwrap();
        let name = last.name.as_bytes();
        let at = out.windows(name.len()).rposition(|w| w == name).unwrap() + name.len();
        let off_at = at + 4 + 8 * last.dims.len() + 4;
        out[off_at..off_at + 8].copy_from_slice(&off.to_le_bytes());
    }
    out
}

/// The tensors of `g` to write again, all but the one named `skip`.
fn tensors_except<'a>(g: &Gguf<'a>, skip: &str) -> Vec<TensorOut<'a>> {
    g.tensors
        .iter()
        .filter(|t| t.name != skip)
        .map(|t| TensorOut {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            data: g.tensor_data(t),
        })
        .collect()
}

fn set(md: &mut [(String, Value)], key: &str, v: Value) {
    md.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

#[test]
fn gguf_data_past_end_and_contradicting_dims() {
    let e = err_gguf(&tiny_gguf(|_| {}, Some(1 << 40)));
    assert!(e.contains("runs past the end of the file"), "{e}");

    let e = err_gguf(&tiny_gguf(
        |md| {
            set(md, "llama.embedding_length", Value::U32(128));
            set(md, "llama.rope.dimension_count", Value::U32(16));
            set(md, "llama.attention.key_length", Value::U32(16));
            set(md, "llama.attention.value_length", Value::U32(16));
        },
        None,
    ));
    assert!(
        e.contains("dims") && e.contains("contradict the metadata"),
        "{e}"
    );

    let e = err_gguf(&tiny_gguf(
        |md| set(md, "llama.block_count", Value::U32(3)),
        None,
    ));
    assert!(
        e.contains("tensor \"blk.2.attn_norm.weight\": missing"),
        "{e}"
    );

    let e = err_gguf(&tiny_gguf(
        |md| set(md, "llama.attention.head_count", Value::U32(7)),
        None,
    ));
    assert!(e.contains("n_heads"), "{e}");

    let e = err_gguf(&tiny_gguf(
        |md| set(md, "llama.context_length", Value::I64(-5)),
        None,
    ));
    assert!(e.contains("llama.context_length"), "{e}");

    // Dimensions whose product overflows u64.
    let big = vec![1u8; 4];
    let e = Gguf::parse(
        &gguf::write(
            &[],
            &[TensorOut {
                name: "t".into(),
                dims: vec![4],
                ty: nibble_engine::quant::GgmlType::F32,
                data: &[0u8; 16],
            }],
        )
        .map(|mut b| {
            // n_dims 4 with huge dims cannot be written through the writer; patch dims[0].
            let at = b.windows(1).position(|w| w == b"t").unwrap() + 1;
            b[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
            b.splice(at + 4..at + 12, u64::MAX.to_le_bytes());
            b.splice(at + 12..at + 12, u64::MAX.to_le_bytes());
            b.extend_from_slice(&big);
            b
        })
        .unwrap(),
        "ovf.gguf",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ovf.gguf: tensor \"t\""), "{e}");
}

/// The new families' failures: a Q4_K super-block whose scale is NaN, a Qwen2 file without one of its
/// biases, a Qwen3 file whose value head size differs from its key head size.
#[test]
fn corrupt_k_blocks_and_missing_family_tensors_name_file_and_field() {
    use nibble_engine::arch::{Arch, Config};
    use nibble_engine::measure::{self, RunConfig};
    let (m, _) = measure::prepare(
        &Model::synthetic(Preset::Qwen3Tiny, 2),
        &RunConfig::parse("weights=q4_k").unwrap(),
    )
    .unwrap();
    let mut b = Vec::new();
    m.write_gguf(&mut b).unwrap();
    let g = Gguf::parse(&b, "x").unwrap();
    let t = g.tensor("blk.1.attn_v.weight").unwrap();
    // Super-block 3's d (its first two bytes) becomes an f16 NaN.
    let at = g.tensor_data(t).as_ptr() as usize - b.as_ptr() as usize + 3 * 144;
    let mut bad = b.clone();
    bad[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    let e = err_gguf(&bad);
    assert!(
        e.contains("bad.gguf")
            && e.contains("\"blk.1.attn_v.weight\"")
            && e.contains("block 3 (Q4_K): its scale d is NaN"),
        "{e}"
    );
    // The value length (a u32 after its key and type) no longer matches the key length.
    let mut v = b.clone();
    let key = b"qwen3.attention.value_length";
    let at = v.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    v[at..at + 4].copy_from_slice(&64u32.to_le_bytes());
    let e = err_gguf(&v);
    assert!(
        e.contains("qwen3.attention.value_length") && e.contains("key length (head size) is 128"),
        "{e}"
    );
    let qwen2 = Model::synthetic_config(
        Config {
            arch: Arch::Qwen2,
            ..Preset::Tiny.config()
        },
        3,
    );
    let mut b = Vec::new();
    qwen2.write_gguf(&mut b).unwrap();
    let g = Gguf::parse(&b, "x").unwrap();
    let tensors = tensors_except(&g, "blk.1.attn_k.bias");
    let e = err_gguf(&gguf::write(&g.metadata, &tensors).unwrap());
    assert!(
        e.contains("bad.gguf") && e.contains("tensor \"blk.1.attn_k.bias\": missing"),
        "{e}"
    );
}

#[test]
fn tokenizer_that_does_not_match_the_model() {
    let d = models_dir();
    // The built-in model has 259 tokens; tok512.bin has 512.
    let e = Model::load(&d.join("stories260K.bin"), Some(&d.join("stories260K.bin")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("stories260K.bin: "), "{e}");
    let tb = std::fs::read(d.join("tok512.bin")).unwrap();
    let e = Tokenizer::from_llama2c(&tb, 259, "tok512.bin")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tok512.bin: vocabulary:") && e.contains("does not match"),
        "{e}"
    );
    let e = Tokenizer::from_llama2c(&tb, 1000, "tok512.bin")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tok512.bin: token[512]") && e.contains("does not match"),
        "{e}"
    );
    let mut m = Model::builtin();
    let t = Tokenizer::from_llama2c(&tb, 512, "tok512.bin").unwrap();
    let e = m.set_tokenizer(t, "tok512.bin").unwrap_err().to_string();
    assert!(
        e.contains("tok512.bin: vocabulary: 512 tokens") && e.contains("259"),
        "{e}"
    );
}

/// A cheap, deterministic stand-in for the fuzzer that runs in CI: thousands of corrupted files, no panic.
#[test]
fn random_corruption_never_panics() {
    let g = stories_gguf();
    let bin = std::fs::read(models_dir().join("stories260K.bin")).unwrap();
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for i in 0..3000 {
        let src = if i % 2 == 0 { &g } else { &bin };
        let mut b = src.clone();
        // Corrupt bytes near the front, where headers and tables live.
        let span = if i % 2 == 0 { 16 * 1024 } else { 64 };
        for _ in 0..1 + rnd() % 4 {
            let at = (rnd() as usize) % span.min(b.len());
            b[at] = rnd() as u8;
        }
        if rnd() % 4 == 0 {
            b.truncate((rnd() as usize) % b.len());
        }
        let r = std::panic::catch_unwind(|| {
            let _ = Model::from_gguf(&b, "f.gguf");
            let _ = Model::from_llama2c(&b, "f.bin");
        });
        assert!(r.is_ok(), "panic on corruption case {i}");
    }
}
