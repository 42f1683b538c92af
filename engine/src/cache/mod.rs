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

mod entry;
mod loader;
mod store;

use crate::config::{Class, Config, TensorId};
use crate::host::HostMemory;
use crate::model::{Model, Plan};
use crate::precision::{Fallback, WeightConfig};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use web_time::Instant;

use loader::Loader;

pub use entry::{seal, unseal};
pub use store::{Bytes, InMemory, MemStore, ModelSink, Opened, Sink, Source, Store};

/// Bumped whenever the packed layout, the key derivation or the quantizers' arithmetic changes, so
/// old entries miss (keys name the target type, not the code that produced it). 4: a vocabulary
/// entry ends with `add_space_prefix` and the special tokens that strip whitespace.
pub const FORMAT: u32 = 4;

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
    pub fn tensors(self, c: &Config, own_output: bool) -> Vec<TensorId> {
        if self == Component::Tokenizer {
            return vec![];
        }
        TensorId::all(c, !own_output)
            .into_iter()
            .filter(|&id| Component::of(id) == self)
            .collect()
    }

    /// The component tensor `id` is stored in, from its part and layer (so a family's new roles
    /// need no entry here).
    pub fn of(id: TensorId) -> Component {
        match (id.part(), id.layer()) {
            (Class::Embedding, _) => Component::Embedding,
            (Class::Attention, Some(l)) => Component::Attention(l),
            (Class::FeedForward, Some(l)) => Component::FeedForward(l),
            _ => Component::Head,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_hold_each_tensor_once_with_its_part() {
        let c = crate::Preset::Tiny.config();
        use TensorId::*;
        assert_eq!(
            Component::Attention(1).tensors(&c, true),
            vec![AttnNorm(1), Wq(1), Wk(1), Wv(1), Wo(1)]
        );
        assert_eq!(
            Component::FeedForward(0).tensors(&c, true),
            vec![FfnNorm(0), Gate(0), Up(0), Down(0)]
        );
        assert_eq!(Component::Head.tensors(&c, true), vec![OutNorm, Output]);
        assert_eq!(Component::Head.tensors(&c, false), vec![OutNorm]);
        for own in [true, false] {
            let mut all: Vec<TensorId> = Component::all(&c, true)
                .into_iter()
                .flat_map(|comp| comp.tensors(&c, own))
                .collect();
            let mut want = TensorId::all(&c, !own);
            all.sort_by_key(|t| format!("{t:?}"));
            want.sort_by_key(|t| format!("{t:?}"));
            assert_eq!(all, want, "every tensor in exactly one component");
        }
    }
}
