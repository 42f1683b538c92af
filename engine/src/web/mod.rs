//! The wasm-bindgen API the bench page's worker calls. Every call answers with the serde structs of
//! [`crate::scenario`] as JSON text, so JS never restates the schema.
//!
//! State lives in this worker's thread-local slots: the opened backend, the loaded model, the run's
//! parameters and references. Calls are sequential (the page sends one at a time).

use crate::gpu::{Gpu, GpuOptions};
use crate::measure::Reference;
use crate::precision::WeightConfig;
use crate::scenario::{self, Availability, Capabilities, Params, Scenario, ScenarioRecord};
use crate::{eval, load, Backend, Model};
use js_sys::{Function, Promise, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_time::Instant;

mod store;
use store::{head_stamp, CacheApiStore, HttpSource, OpfsStore};

struct Loaded {
    model: Model,
    params: Option<Params>,
    refs: Vec<Reference>,
}

thread_local! {
    static GPU: RefCell<Option<Rc<Gpu>>> = const { RefCell::new(None) };
    static LOADED: RefCell<Option<Rc<Loaded>>> = const { RefCell::new(None) };
}

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn js_err(v: JsValue) -> String {
    v.as_string()
        .or_else(|| {
            v.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{v:?}"))
}

fn report(on_progress: &Function, msg: &str) {
    let _ = on_progress.call1(&JsValue::NULL, &JsValue::from_str(msg));
}

fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn has(obj: &JsValue, key: &str) -> bool {
    let v = get(obj, key);
    !v.is_undefined() && !v.is_null()
}

#[derive(Deserialize, Default)]
struct OpenOpts {
    /// "auto", "gpu" or "cpu".
    #[serde(default)]
    backend: Option<String>,
    /// Forces "f16" or "f32" activations.
    #[serde(default)]
    act: Option<String>,
}

/// Opens WebGPU (unless told not to) and reports what this browser offers: scenario "capabilities".
#[wasm_bindgen]
pub async fn open(opts: String) -> Result<String, JsError> {
    let o: OpenOpts = serde_json::from_str(&opts).map_err(err)?;
    let g = js_sys::global();
    let nav = get(&g, "navigator");
    let mut apis = BTreeMap::new();
    let mut put = |k: &str, available: bool, detail: String| {
        apis.insert(k.to_string(), Availability { available, detail });
    };
    put(
        "webgpu_api",
        has(&nav, "gpu"),
        "navigator.gpu in this worker".into(),
    );
    put("cache_api", has(&g, "caches"), "globalThis.caches".into());
    let storage = get(&nav, "storage");
    put(
        "opfs",
        has(&storage, "getDirectory"),
        "navigator.storage.getDirectory (presence; use is tested by the cache scenarios)".into(),
    );
    let coi = get(&g, "crossOriginIsolated").as_bool().unwrap_or(false);
    put(
        "cross_origin_isolated",
        coi,
        "COOP/COEP headers took effect".into(),
    );
    put(
        "shared_array_buffer",
        has(&g, "SharedArrayBuffer"),
        "globalThis.SharedArrayBuffer".into(),
    );
    // This module is built with simd128; it would not have instantiated without it.
    put(
        "wasm_simd128",
        true,
        "the module uses SIMD128 and instantiated".into(),
    );
    let want = o.backend.as_deref().unwrap_or("auto");
    let act = o
        .act
        .as_deref()
        .map(crate::gpu::Activations::parse)
        .transpose()
        .map_err(err)?;
    let mut caps = Capabilities {
        host: "browser".into(),
        user_agent: get(&nav, "userAgent").as_string(),
        apis,
        ..Default::default()
    };
    let gpu = if want == "cpu" {
        caps.gpu_unavailable = Some("the run asked for the CPU backend".into());
        None
    } else if !has(&nav, "gpu") {
        caps.gpu_unavailable = Some("navigator.gpu is missing in this browser's worker".into());
        None
    } else {
        match Gpu::open(GpuOptions {
            act,
            ..Default::default()
        })
        .await
        {
            Ok(g) => Some(g),
            Err(e) => {
                caps.gpu_unavailable = Some(e.to_string());
                None
            }
        }
    };
    if want == "gpu" && gpu.is_none() {
        return Err(err(format!(
            "WebGPU was asked for but is unavailable: {}",
            caps.gpu_unavailable.as_deref().unwrap_or("?")
        )));
    }
    match &gpu {
        Some(g) => {
            caps.matvec_kernel = Some(g.tune_matvec().await.map_err(err)?);
            caps.backend = "webgpu".into();
            caps.adapter = Some(g.report.clone());
            caps.activations = Some(g.products_activations().into());
            caps.shader_checks = Some(g.shader_checks.name().into());
            caps.shader_modules = Some(g.check_modules().await.map_err(err)?);
        }
        None => {
            caps.backend = "wasm-cpu".into();
            caps.activations = Some("q8".into());
            caps.cpu = Some(format!(
                "{}: wasm threads need a build with atomics (nightly), so one",
                crate::fast::FastOptions::default().label()
            ));
        }
    }
    GPU.with(|s| *s.borrow_mut() = gpu.map(Rc::new));
    serde_json::to_string(&caps).map_err(err)
}

/// `fetch(url, {method})`, answering the response only when it is OK.
async fn fetch_response(url: &str, method: &str) -> Result<web_sys::Response, String> {
    let g = js_sys::global();
    let fetch: Function = get(&g, "fetch")
        .dyn_into()
        .map_err(|_| "fetch is missing".to_string())?;
    let init = js_sys::Object::new();
    let _ = Reflect::set(&init, &"method".into(), &method.into());
    let p: Promise = fetch
        .call2(&g, &JsValue::from_str(url), &init)
        .map_err(js_err)?
        .dyn_into()
        .map_err(|_| "fetch did not return a promise".to_string())?;
    let resp: web_sys::Response = JsFuture::from(p)
        .await
        .map_err(|e| format!("{method} {url}: {}", js_err(e)))?
        .dyn_into()
        .map_err(|_| "not a Response".to_string())?;
    if !resp.ok() {
        return Err(format!("{method} {url}: HTTP {}", resp.status()));
    }
    Ok(resp)
}

/// Bytes copied into wasm memory at once. A browser may deliver a local file as one multi-megabyte
/// chunk; the rest of it waits on the JS side, outside wasm memory.
const PIECE: u32 = 512 << 10;

/// A GET whose body is read piece by piece.
struct BodyStream {
    url: String,
    total: Option<u64>,
    reader: web_sys::ReadableStreamDefaultReader,
    /// The network chunk being handed out, and how far.
    pending: RefCell<Option<(Uint8Array, u32)>>,
}

impl BodyStream {
    async fn open(url: &str) -> Result<BodyStream, String> {
        let resp = fetch_response(url, "GET").await?;
        let total = resp
            .headers()
            .get("content-length")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok());
        let body = resp.body().ok_or_else(|| format!("{url}: no body"))?;
        let reader = body
            .get_reader()
            .dyn_into()
            .map_err(|_| "no stream reader".to_string())?;
        Ok(BodyStream {
            url: url.to_string(),
            total,
            reader,
            pending: RefCell::new(None),
        })
    }

    /// The next bytes the network delivered (at most [`PIECE`]), `None` at the end.
    async fn next(&self) -> Result<Option<Vec<u8>>, String> {
        loop {
            let pending = self.pending.borrow_mut().take();
            if let Some((arr, at)) = pending {
                let end = (at + PIECE).min(arr.length());
                let v = arr.subarray(at, end).to_vec();
                if end < arr.length() {
                    *self.pending.borrow_mut() = Some((arr, end));
                }
                return Ok(Some(v));
            }
            let chunk = JsFuture::from(self.reader.read())
                .await
                .map_err(|e| format!("{}: {}", self.url, js_err(e)))?;
            if get(&chunk, "done").as_bool().unwrap_or(true) {
                return Ok(None);
            }
            let v: Uint8Array = get(&chunk, "value")
                .dyn_into()
                .map_err(|_| "chunk is not bytes".to_string())?;
            *self.pending.borrow_mut() = Some((v, 0));
        }
    }
}

/// Fetches `url` whole, reporting bytes as they arrive (parameters, references, a tokenizer; models
/// stream through [`HttpSource`]).
async fn fetch_bytes(url: &str, on_progress: &Function) -> Result<Vec<u8>, String> {
    let body = BodyStream::open(url).await?;
    let total = body.total;
    let mut buf = Vec::with_capacity(total.unwrap_or(0) as usize);
    let mut last = 0;
    while let Some(c) = body.next().await? {
        buf.extend_from_slice(&c);
        if buf.len() - last >= 1 << 20 {
            last = buf.len();
            report(
                on_progress,
                &format!(
                    "fetching {url}: {} of {} bytes",
                    buf.len(),
                    total.map_or("?".into(), |t| t.to_string())
                ),
            );
        }
    }
    Ok(buf)
}

#[derive(Deserialize)]
struct LoadJob {
    model_url: String,
    #[serde(default)]
    tokenizer_url: Option<String>,
    #[serde(default)]
    params_url: Option<String>,
    #[serde(default)]
    reference_urls: Vec<String>,
}

#[derive(Serialize)]
struct PageLoad {
    model: String,
    params: usize,
    bytes_fetched: usize,
    fetch_s: f64,
    parse_s: f64,
    host: scenario::HostMemory,
}

/// Fetches and parses the model (with its tokenizer), the run's parameters and the oracle references.
#[wasm_bindgen]
pub async fn load(job: String, on_progress: Function) -> Result<String, JsError> {
    let j: LoadJob = serde_json::from_str(&job).map_err(err)?;
    LOADED.with(|s| *s.borrow_mut() = None);
    let t0 = Instant::now();
    let params = match &j.params_url {
        Some(u) => {
            let b = fetch_bytes(u, &on_progress).await.map_err(err)?;
            Some(serde_json::from_slice::<Params>(&b).map_err(|e| err(format!("{u}: {e}")))?)
        }
        None => None,
    };
    let mut refs = Vec::new();
    for u in &j.reference_urls {
        let b = fetch_bytes(u, &on_progress).await.map_err(err)?;
        refs.push(Reference::from_bytes(&b, u).map_err(err)?);
    }
    let refs_s = t0.elapsed().as_secs_f64();
    // The one load path, uncached and as stored: the scenarios derive every configuration from this
    // model, so the CPU keeps it; the file streams in and is never held whole (a GGUF).
    let mut src = HttpSource {
        model_url: j.model_url.clone(),
        tokenizer_url: j.tokenizer_url.clone(),
        id: j.model_url.clone(),
        on_progress: on_progress.clone(),
        body: None,
        keeps_model: true,
    };
    let ready = Backend::Cpu
        .load(&mut src, &WeightConfig::default(), None, &mut |m| {
            report(&on_progress, &m)
        })
        .await
        .map_err(err)?;
    let rl = &ready.report;
    let load::Weights::Cpu(model, _) = ready.weights else {
        return Err(err("a CPU load holds the model"));
    };
    let mut model = *model;
    model.tokenizer = ready.tokenizer;
    let r = PageLoad {
        model: model.name.clone(),
        params: model.config.n_params(model.tied()),
        bytes_fetched: rl.bytes_fetched as usize,
        fetch_s: refs_s + rl.fetch_s,
        parse_s: rl.total_s - rl.fetch_s,
        host: scenario::HostMemory::now(),
    };
    LOADED.with(|s| {
        *s.borrow_mut() = Some(Rc::new(Loaded {
            model,
            params,
            refs,
        }))
    });
    serde_json::to_string(&r).map_err(err)
}

fn loaded() -> Result<Rc<Loaded>, JsError> {
    LOADED
        .with(|s| s.borrow().clone())
        .ok_or_else(|| err("no model is loaded: call load first"))
}

/// Test hook: destroys this worker's GPU device, as a driver reset or the browser reclaiming the GPU
/// would. The scenario in flight then fails with the device-lost error; answers whether a device was
/// there to lose.
#[wasm_bindgen]
pub fn lose_device() -> bool {
    match gpu() {
        Some(g) => {
            g.device.destroy();
            true
        }
        None => false,
    }
}

fn gpu() -> Option<Rc<Gpu>> {
    GPU.with(|s| s.borrow().clone())
}

/// The page's backend: its WebGPU adapter, or the fast CPU backend on one thread (SIMD128 where the
/// bundle has it) where the browser has none.
fn backend_of(g: &Option<Rc<Gpu>>) -> Backend<'_> {
    match g {
        Some(g) => Backend::Gpu(g),
        None => Backend::Fast(crate::fast::FastOptions::default()),
    }
}

/// Runs one scenario ("accuracy", "latency", "memory", "context") on the loaded model and answers
/// its [`ScenarioRecord`]. A failure inside the scenario is recorded, not thrown.
#[wasm_bindgen]
pub async fn run_scenario(name: String, on_progress: Function) -> Result<String, JsError> {
    let l = loaded()?;
    let g = gpu();
    let backend = backend_of(&g);
    let p = l
        .params
        .as_ref()
        .ok_or_else(|| err("the load had no params_url"))?;
    let t0 = Instant::now();
    let progress = |m: String| report(&on_progress, &m);
    let sc = Scenario::parse(&name).map_err(err)?;
    let inputs = scenario::Inputs {
        model: &l.model,
        backend,
        params: p,
        refs: &l.refs,
    };
    let out = scenario::run(sc, inputs, progress).await;
    let rec = ScenarioRecord::finished(
        sc,
        t0.elapsed().as_secs_f64(),
        out.map_err(|e| e.to_string()),
    );
    serde_json::to_string(&rec).map_err(err)
}

/// Scores a token sequence from position 0: all logits, row after row.
#[wasm_bindgen]
pub async fn score(tokens: Vec<u32>, _on_progress: Function) -> Result<Vec<f32>, JsError> {
    let l = loaded()?;
    let g = gpu();
    let backend = backend_of(&g);
    let mut dec = backend.decoder(&l.model, Default::default()).map_err(err)?;
    dec.score(&tokens, 0).await.map_err(err)
}

/// Generates from a prompt with the loaded model's tokenizer; answers [`eval::Generation`].
#[wasm_bindgen]
pub async fn generate(
    prompt: String,
    n: usize,
    temperature: f32,
    _on_progress: Function,
) -> Result<String, JsError> {
    generation(Prompt::Text(prompt), n, temperature).await
}

/// A chat: `messages` (JSON `[{"role": "user", "content": "..."}]`) in the model's chat format
/// (`tokenizer.chat_template`), then the assistant's reply up to `n` tokens or the end of its turn;
/// answers [`eval::Generation`] (`reply` holds the reply alone).
#[wasm_bindgen]
pub async fn chat(
    messages: String,
    n: usize,
    temperature: f32,
    _on_progress: Function,
) -> Result<String, JsError> {
    let msgs = serde_json::from_str(&messages).map_err(|e| err(format!("messages: {e}")))?;
    generation(Prompt::Chat(msgs), n, temperature).await
}

enum Prompt {
    Text(String),
    Chat(Vec<crate::tokenizer::chat::Message>),
}

async fn generation(prompt: Prompt, n: usize, temperature: f32) -> Result<String, JsError> {
    let l = loaded()?;
    let tok = l
        .model
        .tokenizer
        .as_ref()
        .ok_or_else(|| err("the model has no tokenizer"))?;
    let prompt_len = match &prompt {
        Prompt::Text(p) => tok.encode(p, true, false),
        Prompt::Chat(m) => tok.encode_chat(m),
    }
    .map_err(err)?
    .len();
    // The cache holds what this generation can reach, not the model's whole context (gigabytes
    // for a 128K-context model, past what a page may allocate).
    let kv = crate::kv::KvConfig {
        ctx: Some(prompt_len + n + 1),
        ..Default::default()
    };
    let g = gpu();
    let backend = backend_of(&g);
    let mut dec = backend.decoder(&l.model, kv).map_err(err)?;
    let mut sampler = eval::Sampler::new(temperature, 0.9, 0);
    let gen = match &prompt {
        Prompt::Text(p) => eval::generate(dec.as_mut(), tok, p, n, &mut sampler).await,
        Prompt::Chat(m) => eval::chat(dec.as_mut(), tok, m, n, &mut sampler).await,
    }
    .map_err(err)?;
    serde_json::to_string(&gen).map_err(err)
}

/// The page's own memory figures, read on the main thread where the APIs live:
/// `performance.memory` (Chromium) and `performance.measureUserAgentSpecificMemory()` (cross-origin
/// isolated pages). Each is `null` with a reason where the browser lacks it.
#[wasm_bindgen]
pub async fn page_memory() -> Result<String, JsError> {
    let g = js_sys::global();
    let perf = get(&g, "performance");
    let mut out = serde_json::Map::new();
    let mut why = Vec::new();
    let pm = get(&perf, "memory");
    if pm.is_undefined() || pm.is_null() {
        why.push("performance.memory: not available in this browser".to_string());
    } else {
        for k in ["usedJSHeapSize", "totalJSHeapSize", "jsHeapSizeLimit"] {
            if let Some(v) = get(&pm, k).as_f64() {
                out.insert(format!("performance_memory_{k}"), v.into());
            }
        }
    }
    let f = get(&perf, "measureUserAgentSpecificMemory");
    let coi = get(&g, "crossOriginIsolated").as_bool().unwrap_or(false);
    match f.dyn_ref::<Function>() {
        Some(f) if coi => match f.call0(&perf).map(|p| p.dyn_into::<Promise>()) {
            Ok(Ok(p)) => match JsFuture::from(p).await {
                Ok(r) => {
                    if let Some(b) = get(&r, "bytes").as_f64() {
                        out.insert("ua_specific_memory_bytes".into(), b.into());
                    }
                }
                Err(e) => why.push(format!(
                    "measureUserAgentSpecificMemory failed: {}",
                    js_err(e)
                )),
            },
            _ => why.push("measureUserAgentSpecificMemory did not return a promise".into()),
        },
        Some(_) => {
            why.push("measureUserAgentSpecificMemory: the page is not cross-origin isolated".into())
        }
        None => why.push("measureUserAgentSpecificMemory: not available in this browser".into()),
    }
    out.insert(
        "not_available".into(),
        serde_json::Value::Array(why.into_iter().map(Into::into).collect()),
    );
    Ok(serde_json::Value::Object(out).to_string())
}

#[derive(Deserialize)]
struct ReloadJob {
    model_url: String,
    #[serde(default)]
    tokenizer_url: Option<String>,
    params_url: String,
    /// Test hook: every cache write fails as a full quota would.
    #[serde(default)]
    fail_writes: bool,
    /// "cache-api" (default) or "opfs".
    #[serde(default)]
    store: Option<String>,
}

/// Scenario "reload", one load: the model through the Cache API store, up to the first token. The
/// harness calls it on a fresh profile (cold), reloads the page and calls it again (warm).
#[wasm_bindgen]
pub async fn reload(job: String, on_progress: Function) -> Result<String, JsError> {
    let j: ReloadJob = serde_json::from_str(&job).map_err(err)?;
    // Parameters first and untimed: they are the run's, not the model's.
    let pb = fetch_bytes(&j.params_url, &on_progress)
        .await
        .map_err(err)?;
    let p: Params =
        serde_json::from_slice(&pb).map_err(|e| err(format!("{}: {e}", j.params_url)))?;
    let mut id = head_stamp(&j.model_url).await.map_err(err)?;
    if let Some(t) = &j.tokenizer_url {
        id = format!("{id} + {}", head_stamp(t).await.map_err(err)?);
    }
    let mut src = HttpSource {
        model_url: j.model_url.clone(),
        tokenizer_url: j.tokenizer_url.clone(),
        id,
        on_progress: on_progress.clone(),
        body: None,
        keeps_model: gpu().is_none(),
    };
    // A browser without the store still loads, uncached, and the report says why.
    let store: Result<Box<dyn crate::cache::Store>, String> = match j.store.as_deref() {
        Some("opfs") => OpfsStore::open(j.fail_writes)
            .await
            .map(|s| Box::new(s) as _),
        None | Some("cache-api") => CacheApiStore::open(j.fail_writes)
            .await
            .map(|s| Box::new(s) as _),
        Some(other) => return Err(err(format!("unknown store {other:?} (cache-api or opfs)"))),
    };
    let g = gpu();
    let backend = backend_of(&g);
    let store_ref: Option<&dyn crate::cache::Store> = store.as_ref().ok().map(|s| s.as_ref());
    let mut run = scenario::reload_run(&mut src, store_ref, backend, &p, |m| {
        report(&on_progress, &m)
    })
    .await
    .map_err(err)?;
    if let Err(why) = store {
        run.load.uncached = Some(why);
    }
    serde_json::to_string(&run).map_err(err)
}
