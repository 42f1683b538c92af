//! The component cache: warm loads, integrity, precision changes, failed writes.

mod common;
use common::*;
use nibble_engine::block_on;
use nibble_engine::cache::{
    self, Bytes, InMemory, Key, LoadReport, MemStore, Opened, Source, Store,
};
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::model::TensorId;
use nibble_engine::{Decoder, Fut, Model};

/// stories260K from its files: a real parse on the cold path.
struct Files {
    inner: Option<Bytes>,
    fetches: usize,
}

impl Source for Files {
    fn identity(&self) -> String {
        "stories260K.bin+tok512.bin (test)".into()
    }
    fn open(&mut self) -> Fut<'_, Opened> {
        self.fetches += 1;
        let d = models_dir();
        self.inner = Some(Bytes {
            id: self.identity(),
            name: "stories260K.bin".into(),
            model: std::fs::read(d.join("stories260K.bin")).unwrap(),
            tokenizer: Some((
                std::fs::read(d.join("tok512.bin")).unwrap(),
                "tok512.bin".into(),
            )),
            chunk: 100_000,
            at: 0,
        });
        self.inner.as_mut().unwrap().open()
    }
    fn next_chunk(&mut self) -> Fut<'_, Option<Vec<u8>>> {
        self.inner.as_mut().unwrap().next_chunk()
    }
}

fn builtin() -> InMemory {
    InMemory {
        id: "builtin tiny seed 0 (test)".into(),
        make: Box::new(Model::builtin),
    }
}

fn load(src: &mut dyn Source, spec: &str, store: &dyn Store) -> (Model, LoadReport) {
    let cfg = RunConfig::parse(spec).unwrap();
    let l = block_on(cache::load(src, &cfg.weights, Some(store), &mut |_| {})).unwrap();
    (l.model, l.report)
}

/// The breakdown's parts are disjoint slices of the load.
fn parts_within_total(r: &LoadReport) {
    assert!(
        r.cache_read_s + r.upload_s <= r.total_s,
        "cache read {} + upload {} > total {}",
        r.cache_read_s,
        r.upload_s,
        r.total_s
    );
}

/// Logits of a few positions, to compare models bit for bit.
fn logits(m: &Model) -> Vec<u32> {
    let mut d = CpuDecoder::new(m);
    let mut out = Vec::new();
    for (p, t) in [1u32, 50, 77, 3, 200].into_iter().enumerate() {
        out.extend(block_on(d.step(t, p)).unwrap().iter().map(|v| v.to_bits()));
    }
    out
}

#[test]
fn warm_load_reads_every_component_and_matches_the_cold_one() {
    let store = MemStore::default();
    let mut src = Files {
        inner: None,
        fetches: 0,
    };
    let (cold, r) = load(&mut src, "weights=q4_0", &store);
    assert_eq!(r.path, "cold");
    assert_eq!(r.built.len(), r.components);
    // Embedding, 5 layers x 2, head, tokenizer.
    assert_eq!(r.components, 13);
    assert!(r.cache_bytes_written > 0 && r.parse_s > 0.0);
    let (warm, w) = load(&mut src, "weights=q4_0", &store);
    assert_eq!(w.path, "warm", "{w:?}");
    assert_eq!(src.fetches, 1, "a warm load must not fetch the source");
    assert_eq!(w.from_cache.len(), 13);
    assert!(w.built.is_empty() && w.corrupt.is_empty());
    assert_eq!((w.fetch_s, w.parse_s, w.quantize_s), (0.0, 0.0, 0.0));
    parts_within_total(&w);
    // The same weights as preparing the parsed model directly, and the same logits.
    let (want, fb) =
        measure::prepare(&stories(), &RunConfig::parse("weights=q4_0").unwrap()).unwrap();
    assert_eq!(
        cold.weights.matrix(TensorId::Down(0)),
        want.weights.matrix(TensorId::Down(0))
    );
    assert_eq!(
        warm.weights.matrix(TensorId::Wq(4)),
        want.weights.matrix(TensorId::Wq(4))
    );
    assert_eq!(logits(&warm), logits(&want));
    assert_eq!(logits(&cold), logits(&want));
    assert_eq!(
        warm.tokenizer
            .as_ref()
            .unwrap()
            .encode("Once upon a time", true, false)
            .unwrap(),
        want.tokenizer
            .as_ref()
            .unwrap()
            .encode("Once upon a time", true, false)
            .unwrap()
    );
    // stories260K's 172-wide ffn_down falls back to f16; the fallbacks survive the cache.
    let l = block_on(cache::load(
        &mut src,
        &RunConfig::parse("weights=q4_0").unwrap().weights,
        Some(&store),
        &mut |_| {},
    ))
    .unwrap();
    assert_eq!(l.fallbacks, fb);
}

#[test]
fn a_corrupt_or_truncated_entry_is_dropped_and_rebuilt() {
    let store = MemStore::default();
    let mut src = builtin();
    let (want, _) = load(&mut src, "weights=q4_0", &store);
    let want = logits(&want);
    for damage in ["flip", "truncate"] {
        // The largest entry is the embedding; damage one attention entry instead (found by size rank).
        let key = {
            let e = store.entries.borrow();
            let mut v: Vec<_> = e.iter().map(|(k, b)| (b.len(), k.clone())).collect();
            v.sort();
            v[v.len() / 2].1.clone()
        };
        {
            let mut e = store.entries.borrow_mut();
            let b = e.get_mut(&key).unwrap();
            match damage {
                "flip" => {
                    let n = b.len();
                    b[n - 7] ^= 0x40;
                }
                _ => b.truncate(b.len() / 2),
            }
        }
        let (m, r) = load(&mut src, "weights=q4_0", &store);
        assert_eq!(r.corrupt.len(), 1, "{damage}: {:?}", r.corrupt);
        let reason = &r.corrupt[0];
        assert!(
            reason.contains(if damage == "flip" {
                "hash mismatch"
            } else {
                "truncated"
            }),
            "{damage}: {reason}"
        );
        assert_eq!(
            r.built.len(),
            1,
            "{damage}: only the damaged component is rebuilt"
        );
        assert!(reason.starts_with(&r.built[0]), "{reason} vs {:?}", r.built);
        assert_eq!(r.from_cache.len(), r.components - 1);
        assert_eq!(logits(&m), want, "{damage}: rebuilt logits differ");
        // And the next load is warm again.
        assert_eq!(load(&mut src, "weights=q4_0", &store).1.path, "warm");
    }
}

#[test]
fn changing_one_class_precision_recreates_only_its_components() {
    let store = MemStore::default();
    let mut src = builtin();
    load(&mut src, "weights=q4_0", &store);
    let (m, r) = load(&mut src, "weights=q4_0,precision=ffn=q8_0", &store);
    assert_eq!(r.path, "cold");
    let ffn: Vec<String> = (0..m.config.n_layers)
        .map(|l| format!("blk.{l}.ffn"))
        .collect();
    assert_eq!(r.built, ffn, "only the feed-forward components are new");
    assert_eq!(r.from_cache.len(), r.components - ffn.len());
    let (want, _) = measure::prepare(
        &Model::builtin(),
        &RunConfig::parse("weights=q4_0,precision=ffn=q8_0").unwrap(),
    )
    .unwrap();
    assert_eq!(logits(&m), logits(&want));
    // Back to the first configuration: its manifest is still there, nothing is rebuilt.
    assert_eq!(load(&mut src, "weights=q4_0", &store).1.path, "warm");
}

#[test]
fn failed_writes_still_load_uncached_and_say_why() {
    let store = MemStore::default();
    store.fail_writes.set(true);
    let mut src = builtin();
    let (m, r) = load(&mut src, "weights=q4_0", &store);
    assert_eq!(r.path, "uncached");
    assert!(
        r.uncached
            .as_deref()
            .unwrap()
            .contains("QuotaExceededError"),
        "{r:?}"
    );
    assert_eq!(r.cache_bytes_written, 0);
    let (want, _) = measure::prepare(
        &Model::builtin(),
        &RunConfig::parse("weights=q4_0").unwrap(),
    )
    .unwrap();
    assert_eq!(logits(&m), logits(&want));
    assert!(store.entries.borrow().is_empty());
}

#[test]
fn unseal_refuses_every_cut_and_a_foreign_key() {
    let k = Key([7; 32]);
    let sealed = cache::seal(&k, b"some packed component bytes");
    assert_eq!(
        cache::unseal(&k, &sealed).unwrap(),
        b"some packed component bytes"
    );
    for n in 0..sealed.len() {
        assert!(
            cache::unseal(&k, &sealed[..n]).is_err(),
            "a cut at {n} verified"
        );
    }
    assert!(cache::unseal(&Key([8; 32]), &sealed)
        .unwrap_err()
        .contains("another key"));
}

/// A model file whose stream stops after `stop` bytes although its length says more (a dropped
/// connection).
struct Cut {
    inner: Bytes,
    stop: usize,
}

impl Source for Cut {
    fn identity(&self) -> String {
        self.inner.identity()
    }
    fn open(&mut self) -> Fut<'_, Opened> {
        self.inner.open()
    }
    fn next_chunk(&mut self) -> Fut<'_, Option<Vec<u8>>> {
        if self.inner.at >= self.stop {
            return Box::pin(std::future::ready(Ok(None)));
        }
        self.inner.next_chunk()
    }
}

fn builtin_gguf(chunk: usize) -> Bytes {
    let mut file = Vec::new();
    Model::builtin().write_gguf(&mut file).unwrap();
    Bytes {
        id: "builtin.gguf (test)".into(),
        name: "builtin.gguf".into(),
        model: file,
        tokenizer: None,
        chunk,
        at: 0,
    }
}

#[test]
fn a_gguf_streams_component_by_component() {
    let chunk = 16 << 10;
    let mut src = builtin_gguf(chunk);
    let file_len = src.model.len();
    let store = MemStore::default();
    let mut said = Vec::new();
    let cfg = RunConfig::parse("weights=q4_0").unwrap();
    let l = block_on(cache::load(
        &mut src,
        &cfg.weights,
        Some(&store),
        &mut |m| said.push(m),
    ))
    .unwrap();
    let r = &l.report;
    assert!(r.streamed && r.not_streamed.is_none(), "{r:?}");
    assert_eq!(r.bytes_fetched, file_len as u64);
    // The window holds one component's source bytes (the feed-forward, the largest: three f32
    // 256x512 matrices and a norm) plus a chunk, never the 5 MB file.
    let ffn = (3 * 256 * 512 + 256) * 4;
    assert!(
        r.peak_buffered_bytes >= ffn as u64
            && r.peak_buffered_bytes <= (ffn + 2 * chunk + 4096) as u64,
        "peak {} bytes buffered of a {file_len}-byte file",
        r.peak_buffered_bytes
    );
    // Progress names components and bytes as they arrive.
    assert!(
        said.iter()
            .any(|m| m.contains("components") && m.contains("MB fetched")),
        "{said:?}"
    );
    // The same model as parsing the whole file, then preparing it.
    let whole = Model::from_gguf(&src.model, "builtin.gguf").unwrap();
    let (want, _) = measure::prepare(&whole, &cfg).unwrap();
    assert_eq!(logits(&l.model), logits(&want));
    // And the next load is warm, with nothing fetched.
    let (warm, w) = load(&mut src, "weights=q4_0", &store);
    assert_eq!((w.path.as_str(), w.bytes_fetched), ("warm", 0));
    parts_within_total(&w);
    assert_eq!(logits(&warm), logits(&want));
}

#[test]
fn a_stream_cut_short_is_a_clear_error() {
    let file_len = builtin_gguf(1).model.len();
    // Inside the header, then inside a layer's tensors.
    for stop in [100, file_len / 2] {
        let mut src = Cut {
            inner: builtin_gguf(4096),
            stop,
        };
        let cfg = RunConfig::parse("weights=q4_0").unwrap();
        let e = block_on(cache::load(&mut src, &cfg.weights, None, &mut |_| {}))
            .err()
            .unwrap_or_else(|| panic!("a stream cut at {stop} loaded"))
            .to_string();
        assert!(
            e.starts_with("builtin.gguf: ") && e.contains("truncated"),
            "cut at {stop}: {e}"
        );
    }
}

/// Phi-3's fused tensors stream too: each role's rows are cut from the file's `attn_qkv` and
/// `ffn_up` as their bytes arrive, giving the model a whole parse gives, then a warm load.
#[test]
fn a_phi3_file_streams_its_fused_rows() {
    let file = std::fs::read(models_dir().join("phi3-tiny.gguf")).unwrap();
    let mut src = Bytes {
        id: "phi3-tiny.gguf (test)".into(),
        name: "phi3-tiny.gguf".into(),
        model: file,
        tokenizer: None,
        chunk: 4096,
        at: 0,
    };
    let store = MemStore::default();
    let (cold, r) = load(&mut src, "weights=f16", &store);
    assert!(r.streamed && r.path != "warm", "{r:?}");
    let whole = Model::from_gguf(&src.model, "phi3-tiny.gguf").unwrap();
    let (want, _) = measure::prepare(&whole, &RunConfig::parse("weights=f16").unwrap()).unwrap();
    assert_eq!(logits(&cold), logits(&want));
    let (warm, w) = load(&mut src, "weights=f16", &store);
    assert_eq!(w.path, "warm");
    assert_eq!(logits(&warm), logits(&want));
}
