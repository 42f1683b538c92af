//! Runs the bench page in one browser session (wptrunner's "executor"): start the session, load the
//! page, then each engine call with its own timeout, polling the page for progress. A browser that
//! hangs, crashes or loses its GPU ends as an error carrying the last progress it reported.

use anyhow::{anyhow, bail, Context, Result};
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Per-step time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub session: Duration,
    pub page: Duration,
    pub load: Duration,
    pub scenario: Duration,
    /// One poll of the page; longer means the browser stopped responding.
    pub poll: Duration,
}

pub struct Session {
    pub client: Client,
    pub browser_version: Option<String>,
    /// Updated on every poll; kept by the caller when something fails.
    pub last_progress: Option<String>,
}

/// Opens a WebDriver session with `caps` at `url`.
pub async fn connect(url: &str, caps: &Value, t: &Timeouts) -> Result<Session> {
    let caps = caps
        .as_object()
        .cloned()
        .context("capabilities must be a JSON object")?;
    let mut b = ClientBuilder::rustls().context("TLS setup for WebDriver")?;
    b.capabilities(caps);
    let client = tokio::time::timeout(t.session, b.connect(url))
        .await
        .map_err(|_| anyhow!("new session at {url} timed out after {:?}", t.session))?
        .with_context(|| format!("new session at {url}"))?;
    let browser_version = client
        .capabilities()
        .and_then(|c| c.get("browserVersion"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok(Session {
        client,
        browser_version,
        last_progress: None,
    })
}

const POLL: &str = "const s = window.__nibble; if (!s) return null; \
    return {busy: s.busy, seq: s.seq, progress: s.progress, error: s.error, fatal: s.fatal, \
            workerReady: s.workerReady, pageReady: s.pageReady};";

impl Session {
    async fn exec(&self, script: &str, args: Vec<Value>, t: Duration) -> Result<Value> {
        tokio::time::timeout(t, self.client.execute(script, args))
            .await
            .map_err(|_| anyhow!("the browser stopped responding (no answer within {t:?})"))?
            .map_err(|e| anyhow!("WebDriver: {e}"))
    }

    /// Navigates to the bench page and waits for the page and its worker to start.
    pub async fn open_page(&mut self, url: &str, t: &Timeouts) -> Result<()> {
        tokio::time::timeout(t.page, self.client.goto(url))
            .await
            .map_err(|_| anyhow!("loading {url} timed out after {:?}", t.page))?
            .with_context(|| format!("loading {url}"))?;
        let start = Instant::now();
        loop {
            let s = self.exec(POLL, vec![], t.poll).await?;
            if let Some(f) = s.get("fatal").and_then(Value::as_str) {
                bail!("{f}");
            }
            if s.get("workerReady") == Some(&json!(true))
                && s.get("pageReady") == Some(&json!(true))
            {
                return Ok(());
            }
            if start.elapsed() > t.page {
                bail!(
                    "the bench page did not start its engine within {:?}",
                    t.page
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Calls an engine function in the worker and waits for its answer, reporting progress lines.
    pub async fn call(
        &mut self,
        what: &str,
        args: Vec<Value>,
        limit: Duration,
        t: &Timeouts,
        mut progress: impl FnMut(&str),
    ) -> Result<Value> {
        let seq = self
            .exec(
                "const s = window.__nibble; return s.call(arguments[0], ...arguments[1]);",
                vec![json!(what), json!(args)],
                t.poll,
            )
            .await?;
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let s = self.exec(POLL, vec![], t.poll).await?;
            if s.is_null() {
                bail!("the bench page went away (navigated or crashed)");
            }
            if let Some(p) = s.get("progress").and_then(Value::as_str) {
                if self.last_progress.as_deref() != Some(p) {
                    self.last_progress = Some(p.to_string());
                    progress(p);
                }
            }
            if let Some(f) = s.get("fatal").and_then(Value::as_str) {
                bail!("{f}");
            }
            if s.get("seq") == Some(&seq) && s.get("busy") == Some(&json!(false)) {
                if let Some(e) = s.get("error").and_then(Value::as_str) {
                    bail!("{what}: {e}");
                }
                return self
                    .exec("return window.__nibble.result;", vec![], t.poll)
                    .await;
            }
            if start.elapsed() > limit {
                bail!("{what} timed out after {limit:?}");
            }
        }
    }

    /// The page's memory APIs, read on the main thread.
    pub async fn page_memory(&self, t: &Timeouts) -> Result<Value> {
        let r = tokio::time::timeout(
            t.scenario,
            self.client.execute_async(
                "const done = arguments[arguments.length - 1]; \
                 window.__nibble.pageMemory().then(done, e => done(JSON.stringify({error: String(e)})));",
                vec![],
            ),
        )
        .await
        .map_err(|_| anyhow!("page memory timed out"))?
        .map_err(|e| anyhow!("WebDriver: {e}"))?;
        let s = r.as_str().context("page memory answer is not text")?;
        Ok(serde_json::from_str(s)?)
    }

    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(20), self.client.close()).await;
    }
}
