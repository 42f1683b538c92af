//! The component cache: a model is stored as components (the token embedding, each layer's attention,
//! each layer's feed-forward, the output head, the tokenizer), each in its final packed layout (the
//! planar words, scales and mins the GPU uploads as they are), so a warm load reads, verifies and
//! uploads without parsing, dequantizing or requantizing.
//!
//! Keys are content hashes. A component's key hashes its source tensors (as loaded) and the type and
//! block each ends up with, so changing the feed-forward precision changes only the feed-forward keys.
//! A *manifest*, keyed by the source's cheap identity (name, size, validator) and the whole weight
//! configuration, lists the component keys, so a warm load needs neither the source bytes nor their
//! hash. Every entry is sealed with the SHA-256 of its payload and its own key; a read that does not
//! verify is dropped and rebuilt from the source. Stores write atomically (native: a temporary file
//! renamed into place), so an interrupted write never leaves an entry that verifies.

use crate::model::{Class, Config, Model, Plan, Tensor, TensorId, Weights};
use crate::precision::{self, Fallback, WeightConfig};
use crate::quant::{QMatrix, WType};
use crate::scenario::HostMemory;
use crate::tokenizer::Tokenizer;
use crate::{Error, Fut, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use web_time::Instant;

/// Bumped whenever the packed layout, the key derivation or the quantizers' arithmetic changes, so
/// old entries miss (keys name the target type, not the code that produced it).
pub const FORMAT: u32 = 2;
const MAGIC: [u8; 4] = *b"NCMP";
const HEADER: usize = 4 + 4 + 32 + 8 + 32;

/// A unit of caching and of loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Embedding,
    Attention(usize),
    FeedForward(usize),
    /// Output norm and, when the model has its own, the classifier.
    Head,
    Tokenizer,
}

impl Component {
    /// Every component of a model, in load order.
    pub fn all(c: &Config, tokenizer: bool) -> Vec<Component> {
        let mut v = vec![Component::Embedding];
        for l in 0..c.n_layers {
            v.push(Component::Attention(l));
            v.push(Component::FeedForward(l));
        }
        v.push(Component::Head);
        if tokenizer {
            v.push(Component::Tokenizer);
        }
        v
    }

    pub fn name(self) -> String {
        match self {
            Component::Embedding => "token_embd".into(),
            Component::Attention(l) => format!("blk.{l}.attn"),
            Component::FeedForward(l) => format!("blk.{l}.ffn"),
            Component::Head => "output".into(),
            Component::Tokenizer => "tokenizer".into(),
        }
    }

    /// The tensors it holds; `own_output` says whether the model has a classifier of its own.
    pub fn tensors(self, own_output: bool) -> Vec<TensorId> {
        use TensorId::*;
        match self {
            Component::Embedding => vec![TokEmbd],
            Component::Attention(l) => vec![AttnNorm(l), Wq(l), Wk(l), Wv(l), Wo(l)],
            Component::FeedForward(l) => vec![FfnNorm(l), Gate(l), Up(l), Down(l)],
            Component::Head if own_output => vec![OutNorm, Output],
            Component::Head => vec![OutNorm],
            Component::Tokenizer => vec![],
        }
    }
}

/// A 32-byte content key, shown as hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn of(parts: &[&[u8]]) -> Key {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Key(h.finalize().into())
    }
}

/// Wraps `payload` as a cache entry: magic, format, its key, length and SHA-256, then the payload.
pub fn seal(key: &Key, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of an entry read back for `key`, or why it does not verify.
pub fn unseal<'a>(key: &Key, bytes: &'a [u8]) -> std::result::Result<&'a [u8], String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "truncated: {} bytes, the header alone is {HEADER}",
            bytes.len()
        ));
    }
    if bytes[..4] != MAGIC {
        return Err("bad magic".into());
    }
    let format = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    if format != FORMAT {
        return Err(format!("format {format}, this build reads {FORMAT}"));
    }
    if bytes[8..40] != key.0 {
        return Err("the entry holds another key".into());
    }
    let len = u64::from_le_bytes(bytes[40..48].try_into().unwrap());
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "truncated: payload of {} bytes, the header says {len}",
            payload.len()
        ));
    }
    if Sha256::digest(payload)[..] != bytes[48..80] {
        return Err("payload hash mismatch".into());
    }
    Ok(payload)
}

/// Where entries live: a directory natively, the Cache API or OPFS in a browser, memory in tests.
/// `put` must be atomic: after an interrupted put, `get` answers the old entry or none.
pub trait Store {
    fn describe(&self) -> String;
    fn get<'a>(&'a self, key: &'a str) -> Fut<'a, Option<Vec<u8>>>;
    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> Fut<'a, ()>;
    fn delete<'a>(&'a self, key: &'a str) -> Fut<'a, ()>;
}

/// An in-memory store; `fail_writes` makes every put fail as a full quota would.
#[derive(Default)]
pub struct MemStore {
    pub entries: std::cell::RefCell<HashMap<String, Vec<u8>>>,
    pub fail_writes: std::cell::Cell<bool>,
}

impl Store for MemStore {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn get<'a>(&'a self, key: &'a str) -> Fut<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(Ok(self
            .entries
            .borrow()
            .get(key)
            .cloned())))
    }
    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> Fut<'a, ()> {
        let r = if self.fail_writes.get() {
            Err(Error::Invalid(
                "QuotaExceededError (forced by the test hook)".into(),
            ))
        } else {
            self.entries.borrow_mut().insert(key.into(), bytes.to_vec());
            Ok(())
        };
        Box::pin(std::future::ready(r))
    }
    fn delete<'a>(&'a self, key: &'a str) -> Fut<'a, ()> {
        self.entries.borrow_mut().remove(key);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Where a model comes from. A load first asks for the cheap identity (a warm load needs nothing
/// else), then opens the model and streams its bytes chunk by chunk.
pub trait Source {
    /// Cheap identity: name, size and a validator (mtime, ETag), never a hash of the bytes.
    fn identity(&self) -> String;
    /// Starts reading: what the model is and how long, and the tokenizer file when it is separate.
    fn open(&mut self) -> Fut<'_, Opened>;
    /// The next bytes of the model file, `None` at its end.
    fn next_chunk(&mut self) -> Fut<'_, Option<Vec<u8>>>;
}

/// What [`Source::open`] answers.
pub enum Opened {
    /// A model file to stream. `gguf_name` says the name ends in `.gguf` (a bad magic then gets the
    /// GGUF parser's error); `len` is its size when known (needed to stream a GGUF).
    Stream {
        name: String,
        len: Option<u64>,
        gguf_name: bool,
        tokenizer: Option<(Vec<u8>, String)>,
    },
    /// A model already in memory (the built-in synthetic model): nothing to fetch or parse.
    Model(Box<Model>),
}

/// A model already in memory (the built-in synthetic model): nothing to fetch.
pub struct InMemory {
    pub id: String,
    pub make: Box<dyn Fn() -> Model>,
}

impl Source for InMemory {
    fn identity(&self) -> String {
        self.id.clone()
    }
    fn open(&mut self) -> Fut<'_, Opened> {
        Box::pin(std::future::ready(Ok(Opened::Model(Box::new(
            (self.make)(),
        )))))
    }
    fn next_chunk(&mut self) -> Fut<'_, Option<Vec<u8>>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// Model and tokenizer bytes already in memory, handed out in chunks of `chunk` bytes (tests use
/// small chunks to exercise streaming).
pub struct Bytes {
    pub id: String,
    pub name: String,
    pub model: Vec<u8>,
    pub tokenizer: Option<(Vec<u8>, String)>,
    pub chunk: usize,
    pub at: usize,
}

impl Source for Bytes {
    fn identity(&self) -> String {
        self.id.clone()
    }
    fn open(&mut self) -> Fut<'_, Opened> {
        self.at = 0;
        Box::pin(std::future::ready(Ok(Opened::Stream {
            name: self.name.clone(),
            len: Some(self.model.len() as u64),
            gguf_name: self.name.ends_with(".gguf"),
            tokenizer: self.tokenizer.clone(),
        })))
    }
    fn next_chunk(&mut self) -> Fut<'_, Option<Vec<u8>>> {
        let end = (self.at + self.chunk.max(1)).min(self.model.len());
        let c = (end > self.at).then(|| self.model[self.at..end].to_vec());
        self.at = end;
        Box::pin(std::future::ready(Ok(c)))
    }
}

/// Receives a model as a load delivers it: the plan first, then each tensor in its final type, in
/// whatever order the file holds them. The GPU uploads each at once; the CPU keeps a [`Model`].
pub trait Sink {
    fn begin(&mut self, plan: &Plan) -> Result<()>;
    fn put(&mut self, id: TensorId, t: Tensor) -> Result<()>;
}

/// Assembles the delivered tensors into a [`Model`] (the CPU backend, and every caller that wants
/// the model itself).
#[derive(Default)]
pub struct ModelSink {
    plan: Option<Plan>,
    weights: Option<Weights>,
}

impl Sink for ModelSink {
    fn begin(&mut self, plan: &Plan) -> Result<()> {
        self.weights = Some(Weights::empty(&plan.config, !plan.own_output));
        self.plan = Some(plan.clone());
        Ok(())
    }
    fn put(&mut self, id: TensorId, t: Tensor) -> Result<()> {
        match &mut self.weights {
            Some(w) => w.set(id, t, "load"),
            None => Err(Error::Invalid("a tensor arrived before the plan".into())),
        }
    }
}

impl ModelSink {
    pub fn into_model(self, tokenizer: Option<Tokenizer>) -> Result<Model> {
        match (self.plan, self.weights) {
            (Some(p), Some(weights)) => Ok(Model {
                name: p.name,
                config: p.config,
                weights,
                tokenizer,
            }),
            _ => Err(Error::Invalid("the load delivered no model".into())),
        }
    }
}

/// What a load did and how long each part took; every figure is measured in this load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// "warm" (every component from the cache), "cold" (built from the source), "uncached" (no store,
    /// or its writes failed).
    pub path: String,
    pub store: Option<String>,
    pub source: String,
    pub config: String,
    pub fetch_s: f64,
    pub parse_s: f64,
    /// Hashing the source tensors for their keys (cold loads only).
    pub hash_s: f64,
    pub quantize_s: f64,
    pub cache_read_s: f64,
    pub cache_write_s: f64,
    pub total_s: f64,
    pub bytes_fetched: u64,
    pub cache_bytes_read: u64,
    pub cache_bytes_written: u64,
    pub components: usize,
    /// Components taken from the cache / built from the source.
    pub from_cache: Vec<String>,
    pub built: Vec<String>,
    /// Entries that failed verification ("name: reason"), dropped and rebuilt.
    pub corrupt: Vec<String>,
    /// Why the model runs uncached (a failed write), if it does.
    pub uncached: Option<String>,
    pub largest_component_bytes: u64,
    /// Whether tensors went to the backend as the bytes arrived (layer-streamed), and if not, why.
    #[serde(default)]
    pub streamed: bool,
    #[serde(default)]
    pub not_streamed: Option<String>,
    /// The most model-file bytes held at once while streaming (the window between the first byte
    /// still needed and the last received): about one component when the file is in layer order.
    #[serde(default)]
    pub peak_buffered_bytes: u64,
    /// The largest single buffer handed to the GPU, where a GPU took the tensors.
    #[serde(default)]
    pub largest_staging_bytes: Option<u64>,
    /// Seconds the backend spent taking tensors during the load (GPU upload), inside `total_s`.
    #[serde(default)]
    pub upload_s: f64,
    pub host_before: HostMemory,
    pub host_after: HostMemory,
}

/// The prepared model (weights as `cfg` says), the fallbacks and the report.
pub struct Loaded {
    pub model: Model,
    pub fallbacks: Vec<Fallback>,
    pub report: LoadReport,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    plan: Plan,
    fallbacks: Vec<Fallback>,
    components: Vec<(Component, String)>,
}

fn manifest_key(identity: &str, cfg: &WeightConfig) -> Result<Key> {
    let c = serde_json::to_vec(cfg).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Key::of(&[
        b"nibble manifest",
        &FORMAT.to_le_bytes(),
        identity.as_bytes(),
        &c,
    ]))
}

/// Loads the model `src` describes with weights as `cfg` says, through `store` when there is one,
/// into a [`Model`].
pub async fn load(
    src: &mut dyn Source,
    cfg: &WeightConfig,
    store: Option<&dyn Store>,
    progress: &mut dyn FnMut(String),
) -> Result<Loaded> {
    let mut sink = ModelSink::default();
    let d = load_into(src, cfg, store, &mut sink, progress).await?;
    Ok(Loaded {
        model: sink.into_model(d.tokenizer)?,
        fallbacks: d.fallbacks,
        report: d.report,
    })
}

/// What [`load_into`] gives besides the tensors it handed to the sink.
pub struct Delivered {
    pub tokenizer: Option<Tokenizer>,
    pub fallbacks: Vec<Fallback>,
    pub report: LoadReport,
}

/// Loads `src` component by component into `sink`: from the cache when the manifest and every entry
/// verify (warm), else from the source's bytes as they arrive (cold), taking each component from
/// the cache when its entry verifies and building it otherwise. Every component is handed over and
/// dropped before the next is read, so the CPU holds about one component (plus, when streaming a
/// GGUF, the bytes between the first still needed and the last received).
pub async fn load_into(
    src: &mut dyn Source,
    cfg: &WeightConfig,
    store: Option<&dyn Store>,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(String),
) -> Result<Delivered> {
    cfg.validate()?;
    let t_all = Instant::now();
    let mut l = Loader {
        cfg,
        store,
        writable: store,
        sink,
        r: LoadReport {
            store: store.map(|s| s.describe()),
            source: src.identity(),
            config: cfg.label(),
            host_before: HostMemory::now(),
            ..LoadReport::default()
        },
        plan: None,
        tokenizer: None,
        done: HashMap::new(),
        total: 0,
        progress,
    };
    let mkey = manifest_key(&src.identity(), cfg)?;
    let mut fallbacks = None;
    if let Some(m) = l.read_manifest(&mkey).await? {
        fallbacks = Some(m.fallbacks.clone());
        if l.warm(&m).await? {
            l.r.path = "warm".into();
            l.r.streamed = true;
            return Ok(l.finish(t_all, m.fallbacks));
        }
    }

    // Cold: from the source. Components already delivered from the cache are skipped.
    let t0 = Instant::now();
    let opened = src.open().await?;
    l.r.fetch_s += t0.elapsed().as_secs_f64();
    match opened {
        Opened::Model(m) => {
            l.r.not_streamed = Some("the model is built in memory".into());
            l.deliver_model(*m).await?;
        }
        Opened::Stream {
            name,
            len,
            gguf_name,
            tokenizer,
        } => {
            l.stream(src, &name, len, gguf_name, tokenizer).await?;
        }
    }
    if let Some(s) = l.writable {
        // The manifest goes last: a load interrupted before this point leaves no manifest, so the next
        // load is cold but reuses every component already written.
        let t0 = Instant::now();
        let plan = l.plan.clone().expect("planned");
        let listed: Vec<(Component, String)> = Component::all(&plan.config, l.tokenizer.is_some())
            .into_iter()
            .filter_map(|c| l.done.get(&c).map(|k| (c, k.clone())))
            .collect();
        let m = Manifest {
            format: FORMAT,
            plan,
            fallbacks: l.fallbacks(),
            components: listed,
        };
        let body = serde_json::to_vec(&m).map_err(|e| Error::Invalid(e.to_string()))?;
        let sealed = seal(&mkey, &body);
        match s.put(&mkey.hex(), &sealed).await {
            Ok(()) => l.r.cache_bytes_written += sealed.len() as u64,
            Err(e) => {
                l.r.uncached = Some(format!("writing the manifest: {e}"));
                l.writable = None;
            }
        }
        l.r.cache_write_s += t0.elapsed().as_secs_f64();
    }
    l.r.path = if l.writable.is_some() {
        "cold"
    } else {
        "uncached"
    }
    .into();
    let fb = fallbacks.unwrap_or_else(|| l.fallbacks());
    Ok(l.finish(t_all, fb))
}

/// A separate tokenizer file for a model of `vocab` tokens.
fn parse_tokenizer(bytes: &[u8], file: &str, vocab: usize) -> Result<Tokenizer> {
    if bytes.starts_with(crate::gguf::MAGIC) {
        Tokenizer::from_gguf(&crate::gguf::Gguf::parse(bytes, file)?, file)
    } else {
        Tokenizer::from_llama2c(bytes, vocab, file)
    }
}

/// One load in progress.
struct Loader<'a> {
    cfg: &'a WeightConfig,
    store: Option<&'a dyn Store>,
    /// The store while its writes succeed.
    writable: Option<&'a dyn Store>,
    sink: &'a mut dyn Sink,
    r: LoadReport,
    plan: Option<Plan>,
    tokenizer: Option<Tokenizer>,
    /// Components delivered, with their keys.
    done: HashMap<Component, String>,
    total: usize,
    progress: &'a mut dyn FnMut(String),
}

impl Loader<'_> {
    fn finish(mut self, t_all: Instant, fallbacks: Vec<Fallback>) -> Delivered {
        self.r.components = self.total;
        self.r.total_s = t_all.elapsed().as_secs_f64();
        self.r.host_after = HostMemory::now();
        Delivered {
            tokenizer: self.tokenizer,
            fallbacks,
            report: self.r,
        }
    }

    fn say(&mut self, what: &str) {
        let msg = format!(
            "{what} · {}/{} components · {:.1} MB fetched, {:.1} MB from the cache",
            self.done.len(),
            self.total,
            self.r.bytes_fetched as f64 / 1e6,
            self.r.cache_bytes_read as f64 / 1e6
        );
        (self.progress)(msg);
    }

    fn begin(&mut self, plan: Plan) -> Result<()> {
        if self.plan.is_none() {
            self.sink.begin(&plan)?;
            self.plan = Some(plan);
        }
        Ok(())
    }

    /// Fallbacks to f16, from the plan (shapes alone decide them).
    fn fallbacks(&self) -> Vec<Fallback> {
        let Some(p) = &self.plan else { return vec![] };
        p.matrices
            .iter()
            .filter_map(|&(id, ty, _)| {
                let asked = self.cfg.type_for(id).filter(|&a| a != ty)?;
                Some(Fallback {
                    tensor: id.gguf_name(),
                    requested: asked,
                    used: ty,
                    reason: format!(
                        "rows of {} values are not a whole number of {}-element blocks",
                        id.shape(&p.config).1,
                        self.cfg.block
                    ),
                })
            })
            .collect()
    }

    async fn read_manifest(&mut self, mkey: &Key) -> Result<Option<Manifest>> {
        let Some(store) = self.store else {
            return Ok(None);
        };
        let t0 = Instant::now();
        let m = match store.get(&mkey.hex()).await? {
            Some(b) => match unseal(mkey, &b)
                .map_err(|e| e.to_string())
                .and_then(|p| serde_json::from_slice::<Manifest>(p).map_err(|e| e.to_string()))
            {
                Ok(m) => Some(m),
                Err(why) => {
                    self.r.corrupt.push(format!("manifest: {why}"));
                    store.delete(&mkey.hex()).await?;
                    None
                }
            },
            None => None,
        };
        self.r.cache_read_s += t0.elapsed().as_secs_f64();
        Ok(m)
    }

    /// Delivers every component the manifest lists from the cache; false when one does not verify
    /// (it is dropped, and the cold path builds what is missing).
    async fn warm(&mut self, m: &Manifest) -> Result<bool> {
        let store = self.store.expect("a manifest came from a store");
        self.total = m.components.len();
        self.begin(m.plan.clone())?;
        let mut all = true;
        for (comp, key) in &m.components {
            self.say(&format!("cache: {}", comp.name()));
            let k = parse_key(key)?;
            let t0 = Instant::now();
            let got = store.get(key).await?;
            let entry = match got {
                Some(b) => match unseal(&k, &b) {
                    Ok(_) => Some(b),
                    Err(why) => {
                        self.r.corrupt.push(format!("{}: {why}", comp.name()));
                        store.delete(key).await?;
                        None
                    }
                },
                None => {
                    self.r
                        .corrupt
                        .push(format!("{}: entry missing", comp.name()));
                    None
                }
            };
            self.r.cache_read_s += t0.elapsed().as_secs_f64();
            match entry {
                Some(b) => self.deliver_cached(*comp, &b, m.plan.own_output, key)?,
                None => all = false,
            }
        }
        Ok(all)
    }

    /// Decodes a verified entry and hands its tensors to the sink.
    fn deliver_cached(
        &mut self,
        comp: Component,
        entry: &[u8],
        own_output: bool,
        key: &str,
    ) -> Result<()> {
        self.r.cache_bytes_read += entry.len() as u64;
        self.r.largest_component_bytes = self.r.largest_component_bytes.max(entry.len() as u64);
        let name = comp.name();
        let mut rd = Reader {
            b: verified_payload(entry),
            file: &name,
        };
        if comp == Component::Tokenizer {
            let t0 = Instant::now();
            self.tokenizer = Some(decode_tokenizer(&mut rd)?);
            self.r.cache_read_s += t0.elapsed().as_secs_f64();
        } else {
            for id in comp.tensors(own_output) {
                // Decoding counts as reading the cache, handing over as upload: timed apart.
                let t0 = Instant::now();
                let t = decode_tensor(&mut rd, &id.gguf_name())?;
                self.r.cache_read_s += t0.elapsed().as_secs_f64();
                let t1 = Instant::now();
                self.sink.put(id, t)?;
                self.r.upload_s += t1.elapsed().as_secs_f64();
            }
        }
        self.r.from_cache.push(name);
        self.done.insert(comp, key.to_string());
        Ok(())
    }

    /// A component from its source tensors: from the cache when its entry verifies, else built
    /// (precision applied) and written; then handed to the sink.
    async fn component(&mut self, comp: Component, tensors: Vec<(TensorId, Tensor)>) -> Result<()> {
        if self.done.contains_key(&comp) {
            return Ok(());
        }
        self.say(&format!("building {}", comp.name()));
        let t0 = Instant::now();
        let key = component_key(comp, &tensors, self.tokenizer.as_ref(), self.cfg);
        self.r.hash_s += t0.elapsed().as_secs_f64();
        let hex = key.hex();
        let own_output = self.plan.as_ref().expect("planned").own_output;
        if let Some(s) = self.store {
            let t0 = Instant::now();
            let got = s.get(&hex).await?;
            self.r.cache_read_s += t0.elapsed().as_secs_f64();
            if let Some(b) = got {
                match unseal(&key, &b) {
                    Ok(_) => return self.deliver_cached(comp, &b, own_output, &hex),
                    Err(why) => {
                        self.r.corrupt.push(format!("{}: {why}", comp.name()));
                        s.delete(&hex).await?;
                    }
                }
            }
        }
        let t0 = Instant::now();
        let mut built = Vec::with_capacity(tensors.len());
        for (id, t) in tensors {
            built.push(match t {
                Tensor::Matrix(m) => {
                    let (q, _) = precision::restore(id, &m, self.cfg)?;
                    (id, Tensor::Matrix(q.unwrap_or(m)))
                }
                norm => (id, norm),
            });
        }
        self.r.quantize_s += t0.elapsed().as_secs_f64();
        self.r.built.push(comp.name());
        if let Some(s) = self.writable {
            let t0 = Instant::now();
            let sealed = seal(
                &key,
                &encode_component(comp, &built, self.tokenizer.as_ref()),
            );
            self.r.largest_component_bytes =
                self.r.largest_component_bytes.max(sealed.len() as u64);
            match s.put(&hex, &sealed).await {
                Ok(()) => self.r.cache_bytes_written += sealed.len() as u64,
                Err(e) => {
                    // A full quota must not stop the load: go on uncached and say why.
                    self.r.uncached = Some(format!("writing {}: {e}", comp.name()));
                    self.writable = None;
                }
            }
            self.r.cache_write_s += t0.elapsed().as_secs_f64();
        } else {
            let n: usize = built.iter().map(|(_, t)| t.n_bytes()).sum();
            self.r.largest_component_bytes = self.r.largest_component_bytes.max(n as u64);
        }
        let t0 = Instant::now();
        for (id, t) in built {
            self.sink.put(id, t)?;
        }
        self.r.upload_s += t0.elapsed().as_secs_f64();
        self.done.insert(comp, hex);
        Ok(())
    }

    /// The plan of a model whose source tensors have these types: each matrix's final type.
    fn plan_of(
        &self,
        name: &str,
        c: &Config,
        tied: bool,
        src: &dyn Fn(TensorId) -> (WType, usize),
    ) -> Plan {
        let own_output = !tied || self.cfg.unties();
        Plan {
            name: name.to_string(),
            config: c.clone(),
            own_output,
            matrices: TensorId::all(c, !own_output)
                .into_iter()
                .filter(|id| id.class() != Class::Norm)
                .map(|id| {
                    // An untied classifier starts as a copy of the embedding.
                    let from = if tied && id == TensorId::Output {
                        TensorId::TokEmbd
                    } else {
                        id
                    };
                    let (ty, block) = src(from);
                    let (t, b) = self.cfg.target_of(id, ty, block, id.shape(c).1);
                    (id, t, b)
                })
                .collect(),
        }
    }

    /// Every component of a model already in memory.
    async fn deliver_model(&mut self, mut m: Model) -> Result<()> {
        let tied = m.tied();
        let plan = self.plan_of(&m.name, &m.config, tied, &|id| {
            let q = m.weights.matrix(id);
            (q.ty, q.block)
        });
        if tied && plan.own_output {
            m.weights.output = Some(m.weights.tok_embd.clone());
        }
        let own_output = plan.own_output;
        self.tokenizer = m.tokenizer.take();
        self.total = Component::all(&m.config, self.tokenizer.is_some()).len();
        self.begin(plan)?;
        for comp in Component::all(&m.config, self.tokenizer.is_some()) {
            let tensors = comp
                .tensors(own_output)
                .into_iter()
                .map(|id| (id, m.weights.tensor(id)))
                .collect();
            self.component(comp, tensors).await?;
        }
        Ok(())
    }

    /// The cold path on a model file: a GGUF is planned from its header and each component handed
    /// over as soon as its tensors have arrived; a llama2.c checkpoint (each tensor kind stored across
    /// every layer) is read whole first.
    async fn stream(
        &mut self,
        src: &mut dyn Source,
        name: &str,
        len: Option<u64>,
        gguf_name: bool,
        tok: Option<(Vec<u8>, String)>,
    ) -> Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        // File offset of buf[0].
        let mut base = 0u64;
        let mut ended = false;
        // The first bytes say the format.
        while buf.len() < 4 && !ended {
            ended = !self.pull(src, &mut buf).await?;
        }
        let is_gguf = buf.starts_with(crate::gguf::MAGIC) || gguf_name;
        if !is_gguf || len.is_none() {
            self.r.not_streamed = Some(if is_gguf {
                "the server did not say the file's length".into()
            } else {
                "llama2.c checkpoints store each tensor kind across all layers, so no layer is complete before the end of the file".into()
            });
            while !ended {
                ended = !self.pull(src, &mut buf).await?;
            }
            self.r.peak_buffered_bytes = buf.len() as u64;
            let t0 = Instant::now();
            let mut m = if is_gguf {
                Model::from_gguf(&buf, name)?
            } else {
                Model::from_llama2c(&buf, name)?
            };
            drop(buf);
            if let Some((b, f)) = tok {
                m.set_tokenizer(parse_tokenizer(&b, &f, m.config.vocab_size)?, &f)?;
            }
            self.r.parse_s += t0.elapsed().as_secs_f64();
            return self.deliver_model(m).await;
        }
        let total = len.expect("checked");
        let g = loop {
            let t0 = Instant::now();
            let h = crate::gguf::Gguf::parse_header(&buf, name, total)?;
            self.r.parse_s += t0.elapsed().as_secs_f64();
            if let Some(h) = h {
                break h;
            }
            if !self.pull(src, &mut buf).await? {
                // Ended inside the header: the whole-file parser names the field.
                return Err(crate::gguf::Gguf::parse(&buf, name)
                    .err()
                    .unwrap_or_else(|| {
                        Error::format(name, "header", "the stream ended inside the header")
                    }));
            }
        };
        let mut head = crate::model::GgufModel::read(&g, name)?;
        if let Some((b, f)) = tok {
            let t = parse_tokenizer(&b, &f, head.config.vocab_size)?;
            if t.vocab_size() != head.config.vocab_size {
                return Err(Error::format(
                    &f,
                    "vocabulary",
                    format!(
                        "{} tokens, but the model {} has a vocabulary of {}: the tokenizer does not match the model",
                        t.vocab_size(),
                        head.name,
                        head.config.vocab_size
                    ),
                ));
            }
            head.tokenizer = Some(t);
        }
        let c = head.config.clone();
        let plan = self.plan_of(&head.name, &c, head.tied, &|id| {
            let ty = head.info(&g, id).expect("checked in read").ty;
            (ty.wtype(), ty.block_len())
        });
        let own_output = plan.own_output;
        let untie = head.tied && own_output;
        self.tokenizer = head.tokenizer.take();
        let comps = Component::all(&c, self.tokenizer.is_some());
        self.total = comps.len();
        self.begin(plan)?;
        if self.tokenizer.is_some() {
            self.component(Component::Tokenizer, vec![]).await?;
        }
        // Absolute byte ranges of each component's tensors, in file order of their last byte.
        let range = |id: TensorId| -> (u64, u64) {
            let from = if untie && id == TensorId::Output {
                TensorId::TokEmbd
            } else {
                id
            };
            let i = head.info(&g, from).expect("checked in read");
            let start = g.data_offset + i.offset;
            (start, start + i.n_bytes())
        };
        let mut pending: Vec<(Component, Vec<TensorId>, u64, u64)> = comps
            .into_iter()
            .filter(|c| *c != Component::Tokenizer)
            .map(|comp| {
                let ids = comp.tensors(own_output);
                let start = ids.iter().map(|&i| range(i).0).min().unwrap_or(0);
                let end = ids.iter().map(|&i| range(i).1).max().unwrap_or(0);
                (comp, ids, start, end)
            })
            .collect();
        pending.sort_by_key(|p| p.3);
        loop {
            let have = base + buf.len() as u64;
            while let Some(i) = pending.iter().position(|p| p.3 <= have) {
                let (comp, ids, _, _) = pending.remove(i);
                let t0 = Instant::now();
                let mut tensors = Vec::with_capacity(ids.len());
                for id in ids {
                    let (s, e) = range(id);
                    let from = if untie && id == TensorId::Output {
                        TensorId::TokEmbd
                    } else {
                        id
                    };
                    let info = head.info(&g, from).expect("checked in read");
                    let bytes = &buf[(s - base) as usize..(e - base) as usize];
                    tensors.push((id, head.tensor(from, info, bytes)?));
                }
                self.r.parse_s += t0.elapsed().as_secs_f64();
                self.component(comp, tensors).await?;
            }
            // Drop the bytes no pending component needs.
            let keep = pending.iter().map(|p| p.2).min().unwrap_or(have).max(base);
            let cut = ((keep - base) as usize).min(buf.len());
            buf.drain(..cut);
            base += cut as u64;
            if pending.is_empty() {
                break;
            }
            if !self.pull(src, &mut buf).await? {
                let (comp, ids, _, _) = &pending[0];
                return Err(Error::format(
                    name,
                    format!("tensors of {}", comp.name()),
                    format!(
                        "the stream ended at byte {have} of {total} before {} arrived: truncated",
                        ids[0].gguf_name()
                    ),
                ));
            }
        }
        self.r.streamed = true;
        Ok(())
    }

    /// Appends the next chunk to `buf`; false at the end of the stream.
    async fn pull(&mut self, src: &mut dyn Source, buf: &mut Vec<u8>) -> Result<bool> {
        let t0 = Instant::now();
        let c = src.next_chunk().await?;
        self.r.fetch_s += t0.elapsed().as_secs_f64();
        Ok(match c {
            Some(c) => {
                self.r.bytes_fetched += c.len() as u64;
                buf.extend_from_slice(&c);
                self.r.peak_buffered_bytes = self.r.peak_buffered_bytes.max(buf.len() as u64);
                if self.r.bytes_fetched >> 22 != (self.r.bytes_fetched - c.len() as u64) >> 22 {
                    self.say("fetching");
                }
                true
            }
            None => false,
        })
    }
}

/// The payload of an entry [`unseal`] already accepted (verifying is a SHA-256 over the whole entry:
/// once per read is enough).
fn verified_payload(entry: &[u8]) -> &[u8] {
    &entry[HEADER..]
}

fn parse_key(hex: &str) -> Result<Key> {
    let bad = || {
        Error::format(
            "cache manifest",
            "component key",
            format!("{hex:?} is not 64 hex digits"),
        )
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(Key(k))
}

/// The key of `comp`: its source tensors (as loaded, before precision is applied) and the type and
/// block each will have.
fn component_key(
    comp: Component,
    tensors: &[(TensorId, Tensor)],
    tokenizer: Option<&Tokenizer>,
    cfg: &WeightConfig,
) -> Key {
    let mut h = Sha256::new();
    h.update(b"nibble component");
    h.update(FORMAT.to_le_bytes());
    h.update(comp.name().as_bytes());
    if comp == Component::Tokenizer {
        if let Some(t) = tokenizer {
            let mut v = Vec::new();
            encode_tokenizer(&mut v, t);
            h.update(&v);
        }
    }
    for (id, t) in tensors {
        h.update(id.gguf_name().as_bytes());
        match t {
            Tensor::Norm(n) => h.update(bytemuck::cast_slice::<f32, u8>(n)),
            Tensor::Matrix(q) => {
                let (ty, block) = cfg.target(*id, q);
                h.update([wtype_code(ty)]);
                h.update((block as u64).to_le_bytes());
                matrix_bytes(q, &mut |b| h.update(b));
            }
        }
    }
    Key(h.finalize().into())
}

fn wtype_code(t: WType) -> u8 {
    match t {
        WType::F32 => 0,
        WType::F16 => 1,
        WType::Q8_0 => 2,
        WType::Q4_0 => 3,
        WType::Q4_1 => 4,
    }
}

fn wtype_of(c: u8) -> Option<WType> {
    Some(match c {
        0 => WType::F32,
        1 => WType::F16,
        2 => WType::Q8_0,
        3 => WType::Q4_0,
        4 => WType::Q4_1,
        _ => return None,
    })
}

/// A matrix as bytes: type, block, shape, then its planar arrays as stored.
fn matrix_bytes(q: &QMatrix, put: &mut dyn FnMut(&[u8])) {
    put(&[wtype_code(q.ty)]);
    for v in [
        q.block,
        q.rows,
        q.cols,
        q.words.len(),
        q.scales.len(),
        q.mins.len(),
    ] {
        put(&(v as u64).to_le_bytes());
    }
    put(bytemuck::cast_slice(&q.words));
    put(bytemuck::cast_slice(&q.scales));
    put(bytemuck::cast_slice(&q.mins));
}

fn encode_tokenizer(v: &mut Vec<u8>, t: &Tokenizer) {
    for x in [t.pieces.len() as u32, t.bos, t.eos] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    for ((p, s), ty) in t.pieces.iter().zip(&t.scores).zip(&t.types) {
        v.extend_from_slice(&(p.len() as u32).to_le_bytes());
        v.extend_from_slice(p);
        v.extend_from_slice(&s.to_le_bytes());
        v.extend_from_slice(&ty.to_le_bytes());
    }
}

/// The packed payload of `comp`: its final tensors, or the tokenizer.
fn encode_component(
    comp: Component,
    tensors: &[(TensorId, Tensor)],
    tokenizer: Option<&Tokenizer>,
) -> Vec<u8> {
    let mut v = Vec::new();
    if comp == Component::Tokenizer {
        if let Some(t) = tokenizer {
            encode_tokenizer(&mut v, t);
        }
        return v;
    }
    for (_, t) in tensors {
        match t {
            Tensor::Norm(n) => {
                v.push(255);
                v.extend_from_slice(&(n.len() as u64).to_le_bytes());
                v.extend_from_slice(bytemuck::cast_slice(n));
            }
            Tensor::Matrix(q) => matrix_bytes(q, &mut |b| v.extend_from_slice(b)),
        }
    }
    v
}

/// Reads a verified payload; `file` names the entry in errors (a verified entry that does not parse
/// means a bug or a format change without a FORMAT bump).
struct Reader<'a> {
    b: &'a [u8],
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::format(
                self.file,
                field,
                format!("needs {n} bytes, {} left", self.b.len()),
            ));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, f: &str) -> Result<u8> {
        Ok(self.take(1, f)?[0])
    }
    fn u32(&mut self, f: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, f)?.try_into().unwrap()))
    }
    fn u64(&mut self, f: &str) -> Result<usize> {
        let v = u64::from_le_bytes(self.take(8, f)?.try_into().unwrap());
        usize::try_from(v).map_err(|_| Error::format(self.file, f, "does not fit this platform"))
    }
    fn array<T: bytemuck::Pod>(&mut self, n: usize, f: &str) -> Result<Vec<T>> {
        let bytes = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::format(self.file, f, "length overflows"))?;
        Ok(bytemuck::pod_collect_to_vec(self.take(bytes, f)?))
    }
}

fn decode_tensor(rd: &mut Reader, name: &str) -> Result<Tensor> {
    let code = rd.u8(name)?;
    if code == 255 {
        let n = rd.u64(name)?;
        return Ok(Tensor::Norm(rd.array::<f32>(n, name)?));
    }
    let ty = wtype_of(code)
        .ok_or_else(|| Error::format(rd.file, name, format!("unknown type code {code}")))?;
    let (block, rows, cols) = (rd.u64(name)?, rd.u64(name)?, rd.u64(name)?);
    let (nw, ns, nm) = (rd.u64(name)?, rd.u64(name)?, rd.u64(name)?);
    let want_words = (rows as u128 * cols as u128 * ty.code_bits() as u128).div_ceil(32);
    if nw as u128 != want_words {
        return Err(Error::format(
            rd.file,
            name,
            format!("{nw} code words for a {rows}x{cols} {} matrix", ty.name()),
        ));
    }
    Ok(Tensor::Matrix(QMatrix {
        ty,
        block,
        rows,
        cols,
        words: rd.array::<u32>(nw, name)?,
        scales: rd.array::<half::f16>(ns, name)?,
        mins: rd.array::<half::f16>(nm, name)?,
    }))
}

fn decode_tokenizer(rd: &mut Reader) -> Result<Tokenizer> {
    let (n, bos, eos) = (rd.u32("pieces")?, rd.u32("bos")?, rd.u32("eos")?);
    let (mut pieces, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let len = rd.u32("piece")? as usize;
        pieces.push(rd.take(len, "piece")?.to_vec());
        scores.push(f32::from_le_bytes(rd.take(4, "score")?.try_into().unwrap()));
        types.push(i32::from_le_bytes(rd.take(4, "type")?.try_into().unwrap()));
    }
    Ok(Tokenizer::new(pieces, scores, types, bos, eos))
}
