//! The native side of the component cache: a directory store and model files as sources.

use anyhow::{Context, Result};
use nibble_engine::cache::{self, Source, Store};
use nibble_engine::{Error, Fut, Model};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One file per entry, `<key>.ncmp`. A put writes a temporary file, syncs it and renames it into
/// place, so a process killed mid-write leaves only a `.tmp-*` file that no get ever reads (a later
/// open removes it once it is ten minutes old).
pub struct DirStore {
    dir: PathBuf,
    /// Test hooks: `NIBBLE_CACHE_FAIL_WRITES=1` fails every put as a full disk would;
    /// `NIBBLE_CACHE_WRITE_PAUSE_MS=N` pauses N ms halfway through each write.
    fail_writes: bool,
    pause_ms: u64,
}

impl DirStore {
    pub fn open(dir: &Path) -> Result<DirStore> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the cache directory {}", dir.display()))?;
        // Leftovers of killed writers; recent ones may belong to a writer still running.
        for e in std::fs::read_dir(dir)?.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 600);
            if stale && e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(DirStore {
            dir: dir.to_path_buf(),
            fail_writes: std::env::var("NIBBLE_CACHE_FAIL_WRITES").is_ok_and(|v| v == "1"),
            pause_ms: std::env::var("NIBBLE_CACHE_WRITE_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }

    /// `--cache-dir`, else the platform's cache directory (`~/.cache/nibble` on Linux).
    pub fn default_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|d| d.join("nibble"))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.ncmp"))
    }

    fn write(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        if self.fail_writes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left (forced by NIBBLE_CACHE_FAIL_WRITES)",
            ));
        }
        let tmp = self.dir.join(format!(".tmp-{key}-{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])?;
        if self.pause_ms > 0 {
            f.flush()?;
            std::thread::sleep(std::time::Duration::from_millis(self.pause_ms));
        }
        f.write_all(&bytes[half..])?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path(key)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

impl Store for DirStore {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn get<'a>(&'a self, key: &'a str) -> Fut<'a, Option<Vec<u8>>> {
        let p = self.path(key);
        let r = match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p.display().to_string(), e)),
        };
        Box::pin(std::future::ready(r))
    }

    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> Fut<'a, ()> {
        let r = self
            .write(key, bytes)
            .map_err(|e| Error::io(&self.path(key).display().to_string(), e));
        Box::pin(std::future::ready(r))
    }

    fn delete<'a>(&'a self, key: &'a str) -> Fut<'a, ()> {
        let _ = std::fs::remove_file(self.path(key));
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A model file (and tokenizer) on disk. Its identity is path, size and modification time of each.
pub struct FileSource {
    pub model: PathBuf,
    pub tokenizer: Option<PathBuf>,
    file: Option<std::fs::File>,
}

/// Bytes per read while streaming a model file.
const CHUNK: usize = 1 << 20;

impl FileSource {
    pub fn new(model: PathBuf, tokenizer: Option<PathBuf>) -> FileSource {
        FileSource {
            model,
            tokenizer,
            file: None,
        }
    }
}

fn stamp(p: &Path) -> String {
    let canon = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    match std::fs::metadata(p) {
        Ok(m) => {
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{} ({} bytes, mtime {t})", canon.display(), m.len())
        }
        Err(_) => canon.display().to_string(),
    }
}

impl Source for FileSource {
    fn identity(&self) -> String {
        let mut s = stamp(&self.model);
        if let Some(t) = &self.tokenizer {
            s.push_str(" + ");
            s.push_str(&stamp(t));
        }
        s
    }

    fn open(&mut self) -> Fut<'_, cache::Opened> {
        let io = |p: &Path| {
            let f = p.display().to_string();
            move |e| Error::io(&f, e)
        };
        let r = (|| {
            let f = std::fs::File::open(&self.model).map_err(io(&self.model))?;
            let len = f.metadata().map_err(io(&self.model))?.len();
            self.file = Some(f);
            let tokenizer = match &self.tokenizer {
                Some(t) => Some((std::fs::read(t).map_err(io(t))?, t.display().to_string())),
                None => None,
            };
            Ok(cache::Opened::Stream {
                name: self.model.display().to_string(),
                len: Some(len),
                gguf_name: self
                    .model
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf")),
                tokenizer,
            })
        })();
        Box::pin(std::future::ready(r))
    }

    fn next_chunk(&mut self) -> Fut<'_, Option<Vec<u8>>> {
        use std::io::Read as _;
        let r = match &mut self.file {
            None => Err(Error::Invalid("read before open".into())),
            Some(f) => {
                let mut buf = Vec::with_capacity(CHUNK);
                match f.take(CHUNK as u64).read_to_end(&mut buf) {
                    Ok(0) => Ok(None),
                    Ok(_) => Ok(Some(buf)),
                    Err(e) => Err(Error::io(&self.model.display().to_string(), e)),
                }
            }
        };
        Box::pin(std::future::ready(r))
    }
}

/// The source `--model`/`--tokenizer` name, or the built-in model.
pub fn source(model: Option<&Path>, tokenizer: Option<&Path>) -> Box<dyn Source> {
    match model {
        Some(m) => Box::new(FileSource::new(
            m.to_path_buf(),
            tokenizer.map(Path::to_path_buf),
        )),
        None => Box::new(cache::InMemory {
            id: format!("built-in model (nibble {})", env!("CARGO_PKG_VERSION")),
            make: Box::new(Model::builtin),
        }),
    }
}
