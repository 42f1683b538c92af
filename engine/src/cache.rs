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

use crate::model::{Class, Config, Model, Tensor, TensorId, Weights};
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
pub const FORMAT: u32 = 1;
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

/// Where a model comes from. `fetch` gets the bytes (timed as fetch), `parse` turns them into the
/// as-loaded model (timed as parse); a warm load calls neither.
pub trait Source {
    /// Cheap identity: name, size and a validator (mtime, ETag), never a hash of the bytes.
    fn identity(&self) -> String;
    fn fetch(&mut self) -> Fut<'_, u64>;
    fn parse(&mut self) -> Result<Model>;
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
    fn fetch(&mut self) -> Fut<'_, u64> {
        Box::pin(std::future::ready(Ok(0)))
    }
    fn parse(&mut self) -> Result<Model> {
        Ok((self.make)())
    }
}

/// Model and tokenizer bytes with their file names, parsed by [`Model::from_bytes`].
pub struct Bytes {
    pub id: String,
    pub name: String,
    pub model: Vec<u8>,
    pub tokenizer: Option<(Vec<u8>, String)>,
}

impl Bytes {
    pub fn parse_model(&mut self) -> Result<Model> {
        let m = Model::from_bytes(
            &self.model,
            &self.name,
            self.name.ends_with(".gguf"),
            self.tokenizer
                .as_ref()
                .map(|(b, n)| (b.as_slice(), n.as_str())),
        );
        // The bytes are not needed once parsed.
        self.model = Vec::new();
        m
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
    model: String,
    config: Config,
    own_output: bool,
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

/// Loads the model `src` describes with weights as `cfg` says, through `store` when there is one.
pub async fn load(
    src: &mut dyn Source,
    cfg: &WeightConfig,
    store: Option<&dyn Store>,
    progress: &mut dyn FnMut(String),
) -> Result<Loaded> {
    cfg.validate()?;
    let t_all = Instant::now();
    let mut r = LoadReport {
        store: store.map(|s| s.describe()),
        source: src.identity(),
        config: cfg.label(),
        host_before: HostMemory::now(),
        ..LoadReport::default()
    };
    // Verified components by key, from the manifest's entries.
    let mut verified: HashMap<String, Vec<u8>> = HashMap::new();
    let mkey = manifest_key(&src.identity(), cfg)?;
    if let Some(store) = store {
        let t0 = Instant::now();
        let manifest = match store.get(&mkey.hex()).await? {
            Some(b) => match unseal(&mkey, &b)
                .map_err(|e| e.to_string())
                .and_then(|p| serde_json::from_slice::<Manifest>(p).map_err(|e| e.to_string()))
            {
                Ok(m) => Some(m),
                Err(why) => {
                    r.corrupt.push(format!("manifest: {why}"));
                    store.delete(&mkey.hex()).await?;
                    None
                }
            },
            None => None,
        };
        if let Some(m) = manifest {
            let n = m.components.len();
            for (i, (comp, key)) in m.components.iter().enumerate() {
                progress(format!("cache: {} ({}/{n})", comp.name(), i + 1));
                let k = parse_key(key)?;
                match store.get(key).await? {
                    Some(b) => match unseal(&k, &b) {
                        Ok(_) => {
                            r.cache_bytes_read += b.len() as u64;
                            verified.insert(key.clone(), b);
                        }
                        Err(why) => {
                            r.corrupt.push(format!("{}: {why}", comp.name()));
                            store.delete(key).await?;
                        }
                    },
                    None => r.corrupt.push(format!("{}: entry missing", comp.name())),
                }
            }
            r.cache_read_s += t0.elapsed().as_secs_f64();
            if r.corrupt.is_empty() {
                let t0 = Instant::now();
                let model = assemble(&m, &verified, &mut r)?;
                r.cache_read_s += t0.elapsed().as_secs_f64();
                r.path = "warm".into();
                r.components = n;
                r.total_s = t_all.elapsed().as_secs_f64();
                r.host_after = HostMemory::now();
                return Ok(Loaded {
                    model,
                    fallbacks: m.fallbacks,
                    report: r,
                });
            }
        } else {
            r.cache_read_s += t0.elapsed().as_secs_f64();
        }
    }

    // Cold: from the source. Components that still verify in the cache are taken from it.
    progress(format!("fetching {}", src.identity()));
    let t0 = Instant::now();
    r.bytes_fetched = src.fetch().await?;
    r.fetch_s = t0.elapsed().as_secs_f64();
    progress("parsing".into());
    let t0 = Instant::now();
    let mut model = src.parse()?;
    r.parse_s = t0.elapsed().as_secs_f64();
    let c = model.config.clone();
    if model.tied() && cfg.unties() {
        model.weights.output = Some(model.weights.tok_embd.clone());
    }
    let own_output = !model.tied();
    let comps = Component::all(&c, model.tokenizer.is_some());
    let mut writable = store;
    let mut fallbacks = Vec::new();
    let mut listed = Vec::new();
    let n = comps.len();
    for (i, &comp) in comps.iter().enumerate() {
        progress(format!("building {} ({}/{n})", comp.name(), i + 1));
        let t0 = Instant::now();
        let key = component_key(&model, comp, own_output, cfg);
        r.hash_s += t0.elapsed().as_secs_f64();
        let hex = key.hex();
        let mut cached = verified.remove(&hex);
        if cached.is_none() {
            if let Some(s) = store {
                let t0 = Instant::now();
                if let Some(b) = s.get(&hex).await? {
                    match unseal(&key, &b) {
                        Ok(_) => cached = Some(b),
                        Err(why) => {
                            r.corrupt.push(format!("{}: {why}", comp.name()));
                            s.delete(&hex).await?;
                        }
                    }
                }
                r.cache_read_s += t0.elapsed().as_secs_f64();
            }
        }
        // Fallbacks are decided by shape alone, so they are known whether or not the entry is cached.
        for id in comp.tensors(own_output) {
            if id.class() != Class::Norm {
                let m = model.weights.matrix(id);
                let (ty, _) = cfg.target(id, m);
                if let Some(asked) = cfg.type_for(id).filter(|&a| a != ty) {
                    fallbacks.push(Fallback {
                        tensor: id.gguf_name(),
                        requested: asked,
                        used: ty,
                        reason: format!(
                            "rows of {} values are not a whole number of {}-element blocks",
                            m.cols, cfg.block
                        ),
                    });
                }
            }
        }
        match cached {
            Some(b) => {
                r.cache_bytes_read += b.len() as u64;
                r.largest_component_bytes = r.largest_component_bytes.max(b.len() as u64);
                let payload = verified_payload(&b);
                put_component(&mut model, comp, payload, &comp.name())?;
                r.from_cache.push(comp.name());
            }
            None => {
                let t0 = Instant::now();
                for id in comp.tensors(own_output) {
                    if id.class() == Class::Norm {
                        continue;
                    }
                    let (q, _) = precision::restore(id, model.weights.matrix(id), cfg)?;
                    if let Some(q) = q {
                        *model.weights.matrix_mut(id) = q;
                    }
                }
                r.quantize_s += t0.elapsed().as_secs_f64();
                r.built.push(comp.name());
                if let Some(s) = writable {
                    let t0 = Instant::now();
                    let sealed = seal(&key, &encode_component(&model, comp, own_output));
                    r.largest_component_bytes = r.largest_component_bytes.max(sealed.len() as u64);
                    match s.put(&hex, &sealed).await {
                        Ok(()) => r.cache_bytes_written += sealed.len() as u64,
                        Err(e) => {
                            // A full quota must not stop the load: go on uncached and say why.
                            r.uncached = Some(format!("writing {}: {e}", comp.name()));
                            writable = None;
                        }
                    }
                    r.cache_write_s += t0.elapsed().as_secs_f64();
                }
            }
        }
        listed.push((comp, hex));
    }
    if let Some(s) = writable {
        // The manifest goes last: a load interrupted before this point leaves no manifest, so the next
        // load is cold but reuses every component already written.
        let t0 = Instant::now();
        let m = Manifest {
            format: FORMAT,
            model: model.name.clone(),
            config: c.clone(),
            own_output,
            fallbacks: fallbacks.clone(),
            components: listed,
        };
        let body = serde_json::to_vec(&m).map_err(|e| Error::Invalid(e.to_string()))?;
        let sealed = seal(&mkey, &body);
        match s.put(&mkey.hex(), &sealed).await {
            Ok(()) => r.cache_bytes_written += sealed.len() as u64,
            Err(e) => {
                r.uncached = Some(format!("writing the manifest: {e}"));
                writable = None;
            }
        }
        r.cache_write_s += t0.elapsed().as_secs_f64();
    }
    r.path = if writable.is_some() {
        "cold"
    } else {
        "uncached"
    }
    .into();
    r.components = n;
    r.total_s = t_all.elapsed().as_secs_f64();
    r.host_after = HostMemory::now();
    Ok(Loaded {
        model,
        fallbacks,
        report: r,
    })
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

/// The key of `comp`: its source tensors (as loaded in `m`, before precision is applied) and the type
/// and block each will have.
fn component_key(m: &Model, comp: Component, own_output: bool, cfg: &WeightConfig) -> Key {
    let mut h = Sha256::new();
    h.update(b"nibble component");
    h.update(FORMAT.to_le_bytes());
    h.update(comp.name().as_bytes());
    if comp == Component::Tokenizer {
        if let Some(t) = &m.tokenizer {
            let mut v = Vec::new();
            encode_tokenizer(&mut v, t);
            h.update(&v);
        }
    }
    for id in comp.tensors(own_output) {
        h.update(id.gguf_name().as_bytes());
        if id.class() == Class::Norm {
            h.update(bytemuck::cast_slice::<f32, u8>(m.weights.norm(id)));
            continue;
        }
        let q = m.weights.matrix(id);
        let (ty, block) = cfg.target(id, q);
        h.update([wtype_code(ty)]);
        h.update((block as u64).to_le_bytes());
        matrix_bytes(q, &mut |b| h.update(b));
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

/// The packed payload of `comp` as `m` holds it now (after precision is applied).
fn encode_component(m: &Model, comp: Component, own_output: bool) -> Vec<u8> {
    let mut v = Vec::new();
    if comp == Component::Tokenizer {
        if let Some(t) = &m.tokenizer {
            encode_tokenizer(&mut v, t);
        }
        return v;
    }
    for id in comp.tensors(own_output) {
        if id.class() == Class::Norm {
            let n = m.weights.norm(id);
            v.push(255);
            v.extend_from_slice(&(n.len() as u64).to_le_bytes());
            v.extend_from_slice(bytemuck::cast_slice(n));
        } else {
            matrix_bytes(m.weights.matrix(id), &mut |b| v.extend_from_slice(b));
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

/// Replaces `comp`'s tensors in `m` with the cached payload's.
fn put_component(m: &mut Model, comp: Component, payload: &[u8], file: &str) -> Result<()> {
    let mut rd = Reader { b: payload, file };
    if comp == Component::Tokenizer {
        m.tokenizer = Some(decode_tokenizer(&mut rd)?);
        return Ok(());
    }
    for id in comp.tensors(!m.tied()) {
        match (decode_tensor(&mut rd, &id.gguf_name())?, id) {
            (Tensor::Norm(v), TensorId::AttnNorm(l)) => m.weights.layers[l].attn_norm = v,
            (Tensor::Norm(v), TensorId::FfnNorm(l)) => m.weights.layers[l].ffn_norm = v,
            (Tensor::Norm(v), TensorId::OutNorm) => m.weights.out_norm = v,
            (Tensor::Matrix(q), id) if id.class() != Class::Norm => *m.weights.matrix_mut(id) = q,
            _ => {
                return Err(Error::format(
                    file,
                    id.gguf_name(),
                    "norm and matrix swapped",
                ))
            }
        }
    }
    Ok(())
}

/// A model from verified entries alone (a warm load).
fn assemble(m: &Manifest, entries: &HashMap<String, Vec<u8>>, r: &mut LoadReport) -> Result<Model> {
    let mut tensors: HashMap<TensorId, Tensor> = HashMap::new();
    let mut tokenizer = None;
    for (comp, key) in &m.components {
        let b = &entries[key];
        r.largest_component_bytes = r.largest_component_bytes.max(b.len() as u64);
        let payload = verified_payload(b);
        let name = comp.name();
        let mut rd = Reader {
            b: payload,
            file: &name,
        };
        if *comp == Component::Tokenizer {
            tokenizer = Some(decode_tokenizer(&mut rd)?);
        } else {
            for id in comp.tensors(m.own_output) {
                tensors.insert(id, decode_tensor(&mut rd, &id.gguf_name())?);
            }
        }
        r.from_cache.push(name);
    }
    let weights = Weights::build(&m.config, !m.own_output, |id| {
        tensors
            .remove(&id)
            .ok_or_else(|| Error::format("cache manifest", id.gguf_name(), "no component holds it"))
    })?;
    Ok(Model {
        name: m.model.clone(),
        config: m.config.clone(),
        weights,
        tokenizer,
    })
}
