//! The component cache's browser side: the Cache API and OPFS stores, and the model behind URLs as a
//! streamed source.

use super::*;

/// The test hook of both browser stores: a write fails as a full quota would.
fn forced_quota(fail: bool) -> crate::Result<()> {
    if fail {
        return Err(crate::Error::Invalid(
            "QuotaExceededError (forced by the test hook)".into(),
        ));
    }
    Ok(())
}

/// The component cache on the Cache API: one cache named `nibble-components`, entries under
/// `/__nibble_cache/<key>` of the page's origin. `Cache.put` commits an entry only once its whole body
/// is stored, which is the atomic write the cache needs; a full quota rejects the put.
pub(super) struct CacheApiStore {
    cache: web_sys::Cache,
    fail_writes: bool,
}

impl CacheApiStore {
    pub(super) async fn open(fail_writes: bool) -> Result<CacheApiStore, String> {
        let caches = get(&js_sys::global(), "caches");
        let caches: web_sys::CacheStorage = caches
            .dyn_into()
            .map_err(|_| "the Cache API (caches) is not available here".to_string())?;
        let cache = JsFuture::from(caches.open("nibble-components"))
            .await
            .map_err(|e| format!("caches.open: {}", js_err(e)))?
            .dyn_into()
            .map_err(|_| "caches.open did not give a Cache".to_string())?;
        Ok(CacheApiStore { cache, fail_writes })
    }

    fn url(key: &str) -> String {
        format!("/__nibble_cache/{key}")
    }
}

impl crate::cache::Store for CacheApiStore {
    fn describe(&self) -> String {
        "Cache API (nibble-components)".into()
    }

    fn get<'a>(&'a self, key: &'a str) -> crate::Fut<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let js = |e: JsValue| crate::Error::Invalid(format!("Cache API: {}", js_err(e)));
            let r = JsFuture::from(self.cache.match_with_str(&Self::url(key)))
                .await
                .map_err(js)?;
            let Ok(resp) = r.dyn_into::<web_sys::Response>() else {
                return Ok(None);
            };
            let buf = JsFuture::from(resp.array_buffer().map_err(js)?)
                .await
                .map_err(js)?;
            Ok(Some(Uint8Array::new(&buf).to_vec()))
        })
    }

    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> crate::Fut<'a, ()> {
        Box::pin(async move {
            let js = |e: JsValue| crate::Error::Invalid(js_err(e));
            forced_quota(self.fail_writes)?;
            let body = Uint8Array::from(bytes);
            let resp = web_sys::Response::new_with_opt_buffer_source(Some(&body)).map_err(js)?;
            JsFuture::from(self.cache.put_with_str(&Self::url(key), &resp))
                .await
                .map_err(js)?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> crate::Fut<'a, ()> {
        Box::pin(async move {
            let _ = JsFuture::from(self.cache.delete_with_str(&Self::url(key))).await;
            Ok(())
        })
    }
}

/// Calls `obj.name(...args)` and awaits the promise it answers.
async fn call_async(obj: &JsValue, name: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let f: Function = get(obj, name)
        .dyn_into()
        .map_err(|_| JsValue::from_str(&format!("{name} is not a function")))?;
    let arr: js_sys::Array = args.iter().collect();
    let p = f.apply(obj, &arr)?;
    match p.dyn_into::<Promise>() {
        Ok(p) => JsFuture::from(p).await,
        Err(v) => Ok(v),
    }
}

/// The component cache on the Origin Private File System: one file per entry in the directory
/// `nibble-components`. A `createWritable` stream writes to a swap file that replaces the entry only on
/// `close`, which is the atomic write the cache needs.
pub(super) struct OpfsStore {
    dir: JsValue,
    fail_writes: bool,
}

impl OpfsStore {
    pub(super) async fn open(fail_writes: bool) -> Result<OpfsStore, String> {
        let storage = get(&get(&js_sys::global(), "navigator"), "storage");
        if storage.is_undefined() {
            return Err("navigator.storage is not available here".into());
        }
        let e = |v: JsValue| format!("OPFS: {}", js_err(v));
        let root = call_async(&storage, "getDirectory", &[]).await.map_err(e)?;
        let opts = js_sys::Object::new();
        let _ = Reflect::set(&opts, &"create".into(), &true.into());
        let dir = call_async(
            &root,
            "getDirectoryHandle",
            &["nibble-components".into(), opts.into()],
        )
        .await
        .map_err(e)?;
        Ok(OpfsStore { dir, fail_writes })
    }
}

impl crate::cache::Store for OpfsStore {
    fn describe(&self) -> String {
        "OPFS (nibble-components)".into()
    }

    fn get<'a>(&'a self, key: &'a str) -> crate::Fut<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let js = |e: JsValue| crate::Error::Invalid(format!("OPFS: {}", js_err(e)));
            let h = match call_async(&self.dir, "getFileHandle", &[key.into()]).await {
                Ok(h) => h,
                // NotFoundError: no entry.
                Err(_) => return Ok(None),
            };
            let file = call_async(&h, "getFile", &[]).await.map_err(js)?;
            let buf = call_async(&file, "arrayBuffer", &[]).await.map_err(js)?;
            Ok(Some(Uint8Array::new(&buf).to_vec()))
        })
    }

    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> crate::Fut<'a, ()> {
        Box::pin(async move {
            let js = |e: JsValue| crate::Error::Invalid(js_err(e));
            forced_quota(self.fail_writes)?;
            let opts = js_sys::Object::new();
            let _ = Reflect::set(&opts, &"create".into(), &true.into());
            let h = call_async(&self.dir, "getFileHandle", &[key.into(), opts.into()])
                .await
                .map_err(js)?;
            let w = call_async(&h, "createWritable", &[]).await.map_err(js)?;
            let body = Uint8Array::from(bytes);
            if let Err(e) = call_async(&w, "write", &[body.into()]).await {
                let _ = call_async(&w, "abort", &[]).await;
                return Err(js(e));
            }
            call_async(&w, "close", &[]).await.map_err(js)?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> crate::Fut<'a, ()> {
        Box::pin(async move {
            let _ = call_async(&self.dir, "removeEntry", &[key.into()]).await;
            Ok(())
        })
    }
}

/// The model (and tokenizer) behind URLs, the model streamed as the network delivers it. Identity:
/// each URL with the size and ETag a HEAD request answers, so a changed file misses the manifest
/// without being downloaded.
pub(super) struct HttpSource {
    pub(super) model_url: String,
    pub(super) tokenizer_url: Option<String>,
    pub(super) id: String,
    pub(super) on_progress: Function,
    pub(super) body: Option<BodyStream>,
    /// The CPU keeps the parsed model (no GPU takes the tensors): refuse a file whose tensors cannot
    /// fit wasm32's 4 GiB before downloading it.
    pub(super) keeps_model: bool,
}

/// wasm32 addresses 4 GiB: a model whose parsed tensors (about its file's size) cannot fit beside
/// what is in use is refused before it is downloaded, instead of aborting on a failed allocation.
fn refuse_beyond_wasm32(url: &str, len: Option<u64>) -> Result<(), String> {
    let Some(t) = len else { return Ok(()) };
    let in_use = scenario::HostMemory::now().wasm_memory_bytes.unwrap_or(0);
    let need = t + in_use;
    if need > 4 << 30 {
        return Err(format!(
            "{url}: content-length {t} bytes: the CPU keeps the parsed tensors in wasm memory (about \
             {need} bytes with {in_use} in use), beyond wasm32's 4 GiB; use a smaller or \
             pre-quantized model"
        ));
    }
    Ok(())
}

pub(super) async fn head_stamp(url: &str) -> Result<String, String> {
    let h = fetch_response(url, "HEAD").await?.headers();
    let field = |k: &str| h.get(k).ok().flatten().unwrap_or_default();
    Ok(format!(
        "{url} ({} bytes, etag {}, last-modified {})",
        field("content-length"),
        field("etag"),
        field("last-modified")
    ))
}

impl crate::cache::Source for HttpSource {
    fn identity(&self) -> String {
        self.id.clone()
    }

    fn open(&mut self) -> crate::Fut<'_, crate::cache::Opened> {
        Box::pin(async move {
            let e = crate::Error::Invalid;
            let tokenizer = match &self.tokenizer_url {
                Some(u) => Some((
                    fetch_bytes(u, &self.on_progress).await.map_err(e)?,
                    u.clone(),
                )),
                None => None,
            };
            let body = BodyStream::open(&self.model_url).await.map_err(e)?;
            if self.keeps_model {
                refuse_beyond_wasm32(&self.model_url, body.total).map_err(e)?;
            }
            let name = self
                .model_url
                .rsplit('/')
                .next()
                .unwrap_or("model")
                .to_string();
            let len = body.total;
            self.body = Some(body);
            Ok(crate::cache::Opened::Stream {
                gguf_name: name.ends_with(".gguf"),
                name,
                len,
                tokenizer,
            })
        })
    }

    fn next_chunk(&mut self) -> crate::Fut<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            match &self.body {
                Some(b) => b.next().await.map_err(crate::Error::Invalid),
                None => Err(crate::Error::Invalid("read before open".into())),
            }
        })
    }
}
