//! The native component cache through the CLI: warm loads, failed writes, and a writer killed
//! mid-write.

use nibble_engine::cache::{unseal, Key};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn generate(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nibble"));
    c.args([
        "generate",
        "--backend",
        "cpu",
        "--weights",
        "q4_0",
        "-n",
        "8",
        "--prompt",
        "Once",
    ])
    .arg("--cache-dir")
    .arg(dir)
    .envs(env.iter().copied());
    c
}

fn run(dir: &Path, env: &[(&str, &str)]) -> (String, String) {
    let o: Output = generate(dir, env).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    (String::from_utf8(o.stdout).unwrap(), err)
}

fn load_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("load: "))
        .expect("a load line")
}

/// Every `<key>.ncmp` file must verify against its own key.
fn entries_verify(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(hex) = name.strip_suffix(".ncmp") else {
            continue;
        };
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let bytes = std::fs::read(e.path()).unwrap();
        unseal(&Key(k), &bytes).unwrap_or_else(|why| panic!("{name} does not verify: {why}"));
        n += 1;
    }
    n
}

fn text(stdout: &str) -> &str {
    stdout.lines().next().unwrap_or("")
}

#[test]
fn second_load_is_warm_and_generates_the_same_text() {
    let dir = scratch("cache-warm");
    let (cold_out, cold) = run(&dir, &[]);
    assert!(load_line(&cold).starts_with("load: cold"), "{cold}");
    let (warm_out, warm) = run(&dir, &[]);
    // The built-in model: embedding, 2 layers x (attention, feed-forward), head, tokenizer.
    assert!(
        load_line(&warm).starts_with("load: warm") && load_line(&warm).contains("7 of 7"),
        "{warm}"
    );
    assert_eq!(text(&cold_out), text(&warm_out));
    assert_eq!(entries_verify(&dir), 8, "7 components and a manifest");
}

#[test]
fn failed_writes_run_uncached() {
    let dir = scratch("cache-full");
    let (out, err) = run(&dir, &[("NIBBLE_CACHE_FAIL_WRITES", "1")]);
    let line = load_line(&err);
    assert!(
        line.starts_with("load: uncached") && line.contains("no space left"),
        "{err}"
    );
    let (want, _) = run(&scratch("cache-full-ref"), &[]);
    assert_eq!(text(&out), text(&want));
    assert_eq!(entries_verify(&dir), 0);
}

#[test]
fn a_writer_killed_mid_write_leaves_no_entry_that_verifies_wrongly() {
    let dir = scratch("cache-kill");
    let mut child = generate(&dir, &[("NIBBLE_CACHE_WRITE_PAUSE_MS", "400")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while a component is half written: after two entries are complete and a third is a
    // temporary file.
    let t0 = Instant::now();
    loop {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        let done = names.iter().filter(|n| n.ends_with(".ncmp")).count();
        if done >= 2 && names.iter().any(|n| n.starts_with(".tmp-")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the writer never got going: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let complete = entries_verify(&dir);
    assert!((2..8).contains(&complete), "{complete} entries");
    // The next load is cold (no manifest was written), reuses what was complete, and is right.
    let (out, err) = run(&dir, &[]);
    let line = load_line(&err);
    assert!(line.starts_with("load: cold"), "{err}");
    assert!(
        line.contains(&format!("{complete} of 7 components from the cache")),
        "{line}"
    );
    let (want, _) = run(&scratch("cache-kill-ref"), &[]);
    assert_eq!(text(&out), text(&want));
    assert_eq!(entries_verify(&dir), 8);
}
