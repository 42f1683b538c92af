//! The static server browsers load the bench from: 127.0.0.1 at a free port, serving only the files
//! registered with it (the bundle and the run's data), with COOP/COEP so pages are cross-origin
//! isolated. Any other path, and any path that tries to climb out, is refused.

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// URL path → file on disk. Nothing outside this map is served.
#[derive(Clone, Default)]
pub struct Files(Arc<RwLock<HashMap<String, PathBuf>>>);

impl Files {
    pub fn add(&self, url_path: &str, file: &Path) {
        self.0
            .write()
            .unwrap()
            .insert(url_path.to_string(), file.to_path_buf());
    }

    /// Registers every file under `dir` at `prefix` + its relative path.
    pub fn add_dir(&self, prefix: &str, dir: &Path) -> Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(dir) {
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    if !rel.starts_with('.') {
                        self.add(&format!("{prefix}{rel}"), &p);
                    }
                }
            }
        }
        Ok(())
    }

    fn get(&self, path: &str) -> Option<PathBuf> {
        self.0.read().unwrap().get(path).cloned()
    }
}

pub struct Server {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(files: Files) -> Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the static server to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let f = files;
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let f = f.clone();
            let head = req.method() == axum::http::Method::HEAD;
            async move { serve(&f, req.uri().path(), head).await }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Server { addr, task })
    }

    /// The address the listener is bound to (loopback only: nothing else on the network reaches it).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn refuse(status: StatusCode, why: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(why.to_string()));
    *r.status_mut() = status;
    r
}

/// Whether a request path could name something outside the registered files.
pub fn is_traversal(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.split('/').any(|seg| seg == ".." || seg == ".")
        || path.contains('\\')
        || path.contains("//")
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || path.contains('\0')
}

/// A validator from size and modification time (as nginx makes them), so a page can tell whether a
/// file changed without reading it: the component cache keys its manifest on it.
fn etag(m: &std::fs::Metadata) -> String {
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{t:x}\"", m.len())
}

async fn serve(files: &Files, path: &str, head: bool) -> Response<Body> {
    if is_traversal(path) {
        return refuse(StatusCode::BAD_REQUEST, "path traversal refused");
    }
    let path = if path == "/" { "/index.html" } else { path };
    let Some(file) = files.get(path) else {
        return refuse(StatusCode::NOT_FOUND, "not served");
    };
    let meta = match tokio::fs::metadata(&file).await {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let body = if head {
        Ok(Vec::new())
    } else {
        tokio::fs::read(&file).await
    };
    match body {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&etag(&meta)) {
                h.insert(header::ETAG, v);
            }
            if head {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(&file)),
            );
            h.insert(
                "cross-origin-opener-policy",
                HeaderValue::from_static("same-origin"),
            );
            h.insert(
                "cross-origin-embedder-policy",
                HeaderValue::from_static("require-corp"),
            );
            h.insert(
                "cross-origin-resource-policy",
                HeaderValue::from_static("same-origin"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(port: u16, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_only_registered_files_with_isolation_headers() {
        let dir = std::env::temp_dir().join(format!("nibble-server-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.js"), "export {}").unwrap();
        std::fs::write(dir.join("sub/b.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.join("secret.txt"), "no").unwrap();
        let files = Files::default();
        files.add("/a.js", &dir.join("a.js"));
        files.add("/sub/b.wasm", &dir.join("sub/b.wasm"));
        let srv_files = files.clone();
        let srv = Server::start(files).await.unwrap();
        let ok = get(srv.addr().port(), "/a.js").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let lower = ok.to_ascii_lowercase();
        assert!(lower.contains("cross-origin-opener-policy: same-origin"));
        assert!(lower.contains("cross-origin-embedder-policy: require-corp"));
        assert!(lower.contains("content-type: text/javascript"));
        assert!(get(srv.addr().port(), "/sub/b.wasm")
            .await
            .to_ascii_lowercase()
            .contains("application/wasm"));
        // Unregistered files next to registered ones, and every climbing path, are refused.
        assert!(get(srv.addr().port(), "/secret.txt")
            .await
            .starts_with("HTTP/1.1 404"));
        // Every climbing path is refused by the traversal guard itself (400), even one the allow-list
        // holds: a 404 from the allow-list would not show the guard works.
        let secret = dir.join("secret.txt");
        for p in [
            "/sub/../secret.txt",
            "/sub/%2e%2e/secret.txt",
            "/%2E%2E/%2E%2E/etc/passwd",
            "/sub//b.wasm",
            "/sub/..%2fsecret.txt",
            "/sub/./b.wasm",
            "/sub\\..\\secret.txt",
        ] {
            srv_files.add(p, &secret);
            let r = get(srv.addr().port(), p).await;
            assert!(r.starts_with("HTTP/1.1 400"), "{p}: {r}");
            assert!(r.contains("path traversal refused"), "{p}: {r}");
            assert!(!r.ends_with("no"), "{p} leaked: {r}");
        }
        // Bound to loopback only.
        assert_eq!(
            srv.addr().ip(),
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
