//! Where entries live ([`Store`]), where a model comes from ([`Source`]) and where a load delivers it
//! ([`Sink`]).

use crate::config::TensorId;
use crate::model::{Model, Plan, Tensor, Weights};
use crate::tokenizer::Tokenizer;
use crate::{Error, Fut, Result};
use std::collections::HashMap;

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
