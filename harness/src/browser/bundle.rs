//! `nibble build-web`: the engine compiled to wasm32 (with SIMD128), wasm-bindgen's JS glue (through
//! the library, so no CLI install), and the bench page, in one directory the static server serves.
//! The bundle is rebuilt only when a source it depends on changed (a hash of them is kept beside it).
//! A binary used outside its checkout (copied onto a GPU runner) serves a bundle built elsewhere:
//! `--bundle DIR`, or `nibble-web/` beside the binary (`nibble build-web --copy-to`).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The workspace this harness was built from; the bundle is built from the same sources.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness lives in the workspace")
        .to_path_buf()
}

/// Where the bundle lives: `target/web/bundle`.
pub fn bundle_dir() -> PathBuf {
    workspace().join("target/web/bundle")
}

/// What a bundle holds; a directory without one of these is not a bundle.
const BUNDLE_FILES: &[&str] = &[
    "index.html",
    "main.js",
    "worker.js",
    "pkg/nibble_engine.js",
    "pkg/nibble_engine_bg.wasm",
];

/// The bundle's name beside the binary.
const BESIDE_EXE: &str = "nibble-web";

/// The bundle to serve: the one given, else the workspace's (built if stale) while its sources are
/// there, else `nibble-web/` beside the running binary.
pub fn locate(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = given {
        check(d)?;
        return Ok(d.to_path_buf());
    }
    if workspace().join("engine/src").is_dir() {
        return build(false);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join(BESIDE_EXE)));
    match beside {
        Some(d) if check(&d).is_ok() => Ok(d),
        _ => Err(crate::args::bad_input(format!(
            "no web bundle: the sources this binary was built from ({}) are not here and there is no \
             {BESIDE_EXE}/ beside it; build one with `nibble build-web --copy-to DIR` where the \
             checkout is and pass --bundle DIR",
            workspace().display()
        ))),
    }
}

/// A bundle has every file the page loads.
pub fn check(d: &Path) -> Result<()> {
    match BUNDLE_FILES.iter().find(|f| !d.join(f).is_file()) {
        Some(f) => Err(crate::args::bad_input(format!(
            "{}: not a nibble web bundle ({f} is missing; `nibble build-web` makes one)",
            d.display()
        ))),
        None => Ok(()),
    }
}

/// Copies a bundle to `to` (for a binary that travels without its checkout).
pub fn copy(from: &Path, to: &Path) -> Result<()> {
    for f in BUNDLE_FILES {
        let (src, dst) = (from.join(f), to.join(f));
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}

/// Files whose change means a rebuild.
fn sources(ws: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![
        ws.join("Cargo.lock"),
        ws.join("Cargo.toml"),
        ws.join("engine/Cargo.toml"),
    ];
    for dir in ["engine/src", "shaders", "harness/web"] {
        let mut stack = vec![ws.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn source_hash(ws: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for p in sources(ws)? {
        h.update(
            p.strip_prefix(ws)
                .unwrap_or(&p)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Builds the bundle unless it is current; returns its directory.
pub fn build(force: bool) -> Result<PathBuf> {
    let ws = workspace();
    let out = bundle_dir();
    let stamp = out.join(".source-hash");
    let hash = source_hash(&ws)?;
    if !force && std::fs::read_to_string(&stamp).ok().as_deref() == Some(hash.as_str()) {
        return Ok(out);
    }
    eprintln!("build-web: compiling the engine for wasm32 (SIMD128)");
    let target_dir = ws.join("target/web");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .current_dir(&ws)
        .args([
            "build",
            "-p",
            "nibble-engine",
            "--lib",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+simd128")
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!(
            "building the engine for wasm32 failed ({status}); is the target installed? \
             `rustup target add wasm32-unknown-unknown`"
        );
    }
    let wasm = target_dir.join("wasm32-unknown-unknown/release/nibble_engine.wasm");
    let pkg = out.join("pkg");
    std::fs::create_dir_all(&pkg).with_context(|| format!("creating {}", pkg.display()))?;
    eprintln!("build-web: generating bindings");
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .typescript(false)
        .generate(&pkg)
        .map_err(|e| anyhow::anyhow!("wasm-bindgen on {}: {e}", wasm.display()))?;
    for f in ["index.html", "main.js", "worker.js"] {
        let from = ws.join("harness/web").join(f);
        std::fs::copy(&from, out.join(f)).with_context(|| format!("copying {}", from.display()))?;
    }
    std::fs::write(&stamp, hash).with_context(|| format!("writing {}", stamp.display()))?;
    eprintln!("build-web: bundle in {}", out.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_bundle_is_checked_and_copied_whole() {
        let root = std::env::temp_dir().join(format!("nibble-bundle-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        for f in BUNDLE_FILES {
            let p = a.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
        }
        assert_eq!(locate(Some(&a)).unwrap(), a);
        copy(&a, &b).unwrap();
        for f in BUNDLE_FILES {
            assert_eq!(std::fs::read(b.join(f)).unwrap(), f.as_bytes());
        }
        // A directory missing the wasm is refused as bad input, naming the directory and the file.
        std::fs::remove_file(b.join("pkg/nibble_engine_bg.wasm")).unwrap();
        let e = locate(Some(&b)).unwrap_err();
        assert!(e.is::<crate::args::BadInput>(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&b.display().to_string()) && msg.contains("nibble_engine_bg.wasm"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
