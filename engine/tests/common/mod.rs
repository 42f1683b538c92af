//! Helpers shared by the integration tests.
#![allow(dead_code)]

use nibble_engine::block_on;

pub mod tiny;
use std::path::PathBuf;

/// The real test models: `$NIBBLE_MODELS`, else the repository's `testdata/` (see its README). Both
/// are always there, so a missing file is a failure, not a skip.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("NIBBLE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata"));
    assert!(
        dir.join("stories260K.bin").exists(),
        "test models not found in {} (set NIBBLE_MODELS)",
        dir.display()
    );
    dir
}

/// The model-family fixtures (`../shared/models/families`, made by llama.cpp's converter with Hugging
/// Face references): `$NIBBLE_FAMILIES`, which `.ci/run` always sets. Too large for the repository, so
/// where it is unset a test that needs them says it is skipped and why, and passes.
pub fn families_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("NIBBLE_FAMILIES") {
        Some(d) => {
            let d = PathBuf::from(d);
            assert!(
                d.join("README.md").exists(),
                "NIBBLE_FAMILIES={} has no fixtures",
                d.display()
            );
            Some(d)
        }
        None => {
            eprintln!(
                "SKIPPED {test}: NIBBLE_FAMILIES is not set (the model-family fixtures are not in \
                 the repository; .ci/run points it at ../shared/models/families)"
            );
            None
        }
    }
}

pub fn stories() -> nibble_engine::Model {
    let d = models_dir();
    nibble_engine::Model::load(&d.join("stories260K.bin"), Some(&d.join("tok512.bin"))).unwrap()
}

pub fn text(name: &str) -> String {
    std::fs::read_to_string(models_dir().join(name)).unwrap()
}

/// A fresh scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The pinned `gguf` package (llama.cpp's gguf-py) the interop tests check against.
pub const GGUF_PY: &str = "gguf==0.19.0";

/// Jinja2, which renders chat templates in transformers (the chat template reference).
pub const JINJA2_PY: &str = "Jinja2==3.1.6";

/// Installs `gguf` and Jinja2 with pip once if `python3` cannot import them.
fn ensure_gguf_py() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let has = |v: &str| {
            std::process::Command::new("python3")
                .args([
                    "-c",
                    &format!(
                        "import gguf, jinja2, importlib.metadata as m; assert m.version('gguf') == '{v}'"
                    ),
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let version = GGUF_PY.split("==").nth(1).unwrap();
        if !has(version) {
            let st = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", GGUF_PY, JINJA2_PY])
                .status()
                .expect("python3 is needed for the GGUF interop tests");
            assert!(st.success(), "pip install {GGUF_PY} failed");
        }
    });
}

/// Runs `engine/tests/py/gguf_interop.py` with the `gguf` package.
pub fn python(args: &[&str]) {
    ensure_gguf_py();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/gguf_interop.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 is needed for the GGUF interop tests");
    assert!(
        out.status.success(),
        "gguf_interop.py {args:?} failed (is the gguf package installed? `pip install gguf==0.19.0`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Logits of forced decoding over `tokens` on the CPU oracle, all positions concatenated.
pub fn forced_logits(model: &nibble_engine::Model, tokens: &[u32]) -> Vec<f32> {
    use nibble_engine::Decoder;
    let mut dec = nibble_engine::cpu::CpuDecoder::new(model);
    let mut all = Vec::new();
    for (pos, &t) in tokens.iter().enumerate() {
        all.extend_from_slice(block_on(dec.step(t, pos)).unwrap());
    }
    all
}

/// max |Δlogit| between the oracle's logits `a` and `b`, asserted within `tol * (1 + max |a|)`. Top-1
/// must agree unless the oracle's own top-2 margin is inside the error the tolerance allows (2d): then
/// rounding may legitimately pick either. Every logit must be there and finite (a NaN would pass
/// the max, whose `f32::max` skips it).
pub fn compare(a: &[f32], b: &[f32], tol: f32, what: &str) -> f32 {
    let bad = b.iter().filter(|v| !v.is_finite()).count();
    assert!(
        a.len() == b.len() && bad == 0,
        "{what}: {bad} of {} logits not finite ({} expected)",
        b.len(),
        a.len()
    );
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        d <= tol * (1.0 + scale),
        "{what}: max |Δlogit| {d} (scale {scale})"
    );
    let (ia, ib) = (
        nibble_engine::eval::argmax(a),
        nibble_engine::eval::argmax(b),
    );
    if ia != ib {
        let margin = a[ia as usize] - a[ib as usize];
        assert!(
            margin <= 2.0 * d,
            "{what}: top-1 differs ({ia} vs {ib}) with an oracle margin of {margin}, \
             above the 2 x {d} the logits may move"
        );
        println!("{what}: near-tie flipped (oracle margin {margin:.2e}, |Δlogit| {d:.2e})");
    }
    d
}
