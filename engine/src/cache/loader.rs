//! One load in progress: the warm path from the manifest, and the cold path that builds, keys, caches
//! and delivers each component as its bytes arrive.

use super::entry::{
    component_key, decode_tensor, decode_tokenizer, encode_component, parse_key, verified_payload,
    Reader,
};
use super::*;
use crate::config::{Class, Config, TensorId};
use crate::model::{Model, Plan, Tensor};
use crate::precision::{self, Fallback, WeightConfig};
use crate::quant::WType;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::collections::HashMap;
use web_time::Instant;

/// One load in progress.
pub(super) struct Loader<'a> {
    pub(super) cfg: &'a WeightConfig,
    pub(super) store: Option<&'a dyn Store>,
    /// The store while its writes succeed.
    pub(super) writable: Option<&'a dyn Store>,
    pub(super) sink: &'a mut dyn Sink,
    pub(super) r: LoadReport,
    pub(super) plan: Option<Plan>,
    pub(super) tokenizer: Option<Tokenizer>,
    /// Components delivered, with their keys.
    pub(super) done: HashMap<Component, String>,
    pub(super) total: usize,
    pub(super) progress: &'a mut dyn FnMut(String),
}

impl Loader<'_> {
    pub(super) fn finish(mut self, t_all: Instant, fallbacks: Vec<Fallback>) -> Delivered {
        self.r.components = self.total;
        self.r.total_s = t_all.elapsed().as_secs_f64();
        self.r.host_after = HostMemory::now();
        Delivered {
            tokenizer: self.tokenizer,
            fallbacks,
            report: self.r,
        }
    }

    pub(super) fn say(&mut self, what: &str) {
        let msg = format!(
            "{what} · {}/{} components · {:.1} MB fetched, {:.1} MB from the cache",
            self.done.len(),
            self.total,
            self.r.bytes_fetched as f64 / 1e6,
            self.r.cache_bytes_read as f64 / 1e6
        );
        (self.progress)(msg);
    }

    pub(super) fn begin(&mut self, plan: Plan) -> Result<()> {
        if self.plan.is_none() {
            self.sink.begin(&plan)?;
            self.plan = Some(plan);
        }
        Ok(())
    }

    /// Fallbacks to f16, from the plan (shapes alone decide them).
    pub(super) fn fallbacks(&self) -> Vec<Fallback> {
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

    pub(super) async fn read_manifest(&mut self, mkey: &Key) -> Result<Option<Manifest>> {
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
    pub(super) async fn warm(&mut self, m: &Manifest) -> Result<bool> {
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
    pub(super) fn deliver_cached(
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
            let c = self.plan.as_ref().expect("planned").config.clone();
            for id in comp.tensors(&c, own_output) {
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
    pub(super) async fn component(
        &mut self,
        comp: Component,
        tensors: Vec<(TensorId, Tensor)>,
    ) -> Result<()> {
        if self.done.contains_key(&comp) {
            return Ok(());
        }
        self.say(&format!("building {}", comp.name()));
        // Keys exist for the store: an uncached load (the page's, a --no-cache run) hashes nothing.
        let t0 = Instant::now();
        let key = self
            .store
            .map(|_| component_key(comp, &tensors, self.tokenizer.as_ref(), self.cfg));
        self.r.hash_s += t0.elapsed().as_secs_f64();
        let hex = key.as_ref().map_or(String::new(), Key::hex);
        let own_output = self.plan.as_ref().expect("planned").own_output;
        if let (Some(s), Some(key)) = (self.store, &key) {
            let t0 = Instant::now();
            let got = s.get(&hex).await?;
            self.r.cache_read_s += t0.elapsed().as_secs_f64();
            if let Some(b) = got {
                match unseal(key, &b) {
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
        if let (Some(s), Some(key)) = (self.writable, &key) {
            let t0 = Instant::now();
            let sealed = seal(
                key,
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
    pub(super) fn plan_of(
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
    pub(super) async fn deliver_model(&mut self, mut m: Model) -> Result<()> {
        let tied = m.tied();
        let plan = self.plan_of(&m.name, &m.config, tied, &|id| {
            let q = m.weights.matrix(id);
            (q.ty, q.block)
        });
        if tied && plan.own_output {
            m.weights.untie();
        }
        let own_output = plan.own_output;
        self.tokenizer = m.tokenizer.take();
        self.total = Component::all(&m.config, self.tokenizer.is_some()).len();
        self.begin(plan)?;
        for comp in Component::all(&m.config, self.tokenizer.is_some()) {
            let tensors = comp
                .tensors(&m.config, own_output)
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
    pub(super) async fn stream(
        &mut self,
        src: &mut dyn Source,
        name: &str,
        len: Option<u64>,
        gguf_name: bool,
        tok: Option<(Vec<u8>, String)>,
    ) -> Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        let mut ended = false;
        // The first bytes say the format.
        while buf.len() < 4 && !ended {
            ended = !self.pull(src, &mut buf).await?;
        }
        let is_gguf = buf.starts_with(crate::gguf::MAGIC) || gguf_name;
        match len {
            Some(total) if is_gguf => self.stream_gguf(src, name, total, buf, tok).await,
            _ => {
                self.r.not_streamed = Some(if is_gguf {
                    "the server did not say the file's length".into()
                } else {
                    "llama2.c checkpoints store each tensor kind across all layers, so no layer is complete before the end of the file".into()
                });
                while !ended {
                    ended = !self.pull(src, &mut buf).await?;
                }
                self.read_whole(buf, name, is_gguf, tok).await
            }
        }
    }

    /// A model file read whole, parsed, then delivered.
    async fn read_whole(
        &mut self,
        buf: Vec<u8>,
        name: &str,
        is_gguf: bool,
        tok: Option<(Vec<u8>, String)>,
    ) -> Result<()> {
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
        self.deliver_model(m).await
    }

    /// Pulls chunks until the GGUF header parses from the prefix in `buf`.
    async fn gguf_header(
        &mut self,
        src: &mut dyn Source,
        name: &str,
        total: u64,
        buf: &mut Vec<u8>,
    ) -> Result<crate::gguf::Gguf<'static>> {
        loop {
            let t0 = Instant::now();
            let parsed = crate::gguf::Gguf::parse_header(buf, name, total)?;
            self.r.parse_s += t0.elapsed().as_secs_f64();
            if let Some(g) = parsed {
                return Ok(g);
            }
            if !self.pull(src, buf).await? {
                // Ended inside the header: the whole-file parser names the field.
                return Err(crate::gguf::Gguf::parse(buf, name)
                    .err()
                    .unwrap_or_else(|| {
                        Error::format(name, "header", "the stream ended inside the header")
                    }));
            }
        }
    }

    /// The GGUF cold path: plan from the header, then deliver each component as soon as its last
    /// byte has arrived and drop the bytes no pending component needs.
    async fn stream_gguf(
        &mut self,
        src: &mut dyn Source,
        name: &str,
        total: u64,
        mut buf: Vec<u8>,
        tok: Option<(Vec<u8>, String)>,
    ) -> Result<()> {
        let g = self.gguf_header(src, name, total, &mut buf).await?;
        let mut head = crate::model::GgufModel::read(&g, name)?;
        if let Some((b, f)) = tok {
            head.tokenizer = Some(parse_tokenizer(&b, &f, head.config.vocab_size)?);
            check_vocab(head.tokenizer.as_ref(), &head, &f)?;
        }
        let c = head.config.clone();
        let plan = self.plan_of(&head.name, &c, head.tied, &|id| {
            let ty = head.info(&g, id).expect("checked in read").ty;
            ty.stored()
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
        // The tensor a component's id reads (an untied head reads the embedding's bytes), and its
        // absolute byte range.
        let from = |id: TensorId| {
            if untie && id == TensorId::Output {
                TensorId::TokEmbd
            } else {
                id
            }
        };
        let range = |id: TensorId| -> (u64, u64) {
            let (i, rows) = head.locate(&g, from(id)).expect("checked in read");
            let start = g.data_offset + i.offset;
            (start + rows.start, start + rows.end)
        };
        let mut pending = pending_components(comps, &c, own_output, &range);
        let mut base = 0u64;
        loop {
            let have = base + buf.len() as u64;
            while let Some(i) = pending.iter().position(|p| p.3 <= have) {
                let (comp, ids, _, _) = pending.remove(i);
                let t0 = Instant::now();
                let mut tensors = Vec::with_capacity(ids.len());
                for id in ids {
                    let (s, e) = range(id);
                    let info = head.info(&g, from(id)).expect("checked in read");
                    let bytes = &buf[(s - base) as usize..(e - base) as usize];
                    tensors.push((id, head.tensor(from(id), info, bytes)?));
                }
                self.r.parse_s += t0.elapsed().as_secs_f64();
                self.component(comp, tensors).await?;
            }
            // Drop the bytes no pending component needs.
            let keep = pending.iter().map(|p| p.2).min().unwrap_or(have).max(base);
            let cut = ((keep - base) as usize).min(buf.len());
            buf.drain(..cut);
            base += cut as u64;
            let Some((comp, ids, _, _)) = pending.first() else {
                break;
            };
            if !self.pull(src, &mut buf).await? {
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
    pub(super) async fn pull(&mut self, src: &mut dyn Source, buf: &mut Vec<u8>) -> Result<bool> {
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

/// Components still to deliver with their tensors and the byte range they span, in file order of
/// their last byte.
type Pending = Vec<(Component, Vec<TensorId>, u64, u64)>;

fn pending_components(
    comps: Vec<Component>,
    c: &Config,
    own_output: bool,
    range: &dyn Fn(TensorId) -> (u64, u64),
) -> Pending {
    let mut pending: Pending = comps
        .into_iter()
        .filter(|c| *c != Component::Tokenizer)
        .map(|comp| {
            let ids = comp.tensors(c, own_output);
            let start = ids.iter().map(|&i| range(i).0).min().unwrap_or(0);
            let end = ids.iter().map(|&i| range(i).1).max().unwrap_or(0);
            (comp, ids, start, end)
        })
        .collect();
    pending.sort_by_key(|p| p.3);
    pending
}

/// A separate tokenizer must have the model's vocabulary.
fn check_vocab(t: Option<&Tokenizer>, head: &crate::model::GgufModel, file: &str) -> Result<()> {
    match t {
        Some(t) if t.vocab_size() != head.config.vocab_size => Err(Error::format(
            file,
            "vocabulary",
            format!(
                "{} tokens, but the model {} has a vocabulary of {}: the tokenizer does not match the model",
                t.vocab_size(),
                head.name,
                head.config.vocab_size
            ),
        )),
        _ => Ok(()),
    }
}
