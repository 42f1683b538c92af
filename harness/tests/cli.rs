//! The `nibble` binary end to end: each command of the CLI contract on the built-in model and on files.

use std::path::PathBuf;
use std::process::{Command, Output};

fn nibble(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nibble"))
        .args(args)
        .output()
        .expect("run nibble")
}

fn ok(args: &[&str]) -> String {
    let o = nibble(args);
    assert!(
        o.status.success(),
        "nibble {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// One short repetition (a prompt of 8, 2 tokens at depth 0): enough for every record field.
const QUICK_BENCH: [&str; 10] = [
    "--reps",
    "1",
    "--warmup",
    "0",
    "--prompts",
    "8",
    "--depths",
    "0",
    "--decode-tokens",
    "2",
];

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sample() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.txt").to_string()
}

fn models() -> PathBuf {
    std::env::var_os("NIBBLE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata"))
}

#[test]
fn builtin_generate_and_perplexity() {
    let a = ok(&["generate", "-n", "16", "--json", "--backend", "cpu"]);
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(v["generation"]["tokens"].as_array().unwrap().len(), 16);
    assert_eq!(v["generation"]["backend"], "cpu");
    // Greedy decoding is deterministic.
    let b = ok(&["generate", "-n", "16", "--json", "--backend", "cpu"]);
    let w: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["generation"]["tokens"], w["generation"]["tokens"]);

    let p = ok(&[
        "perplexity",
        "--text",
        &sample(),
        "--json",
        "--backend",
        "cpu",
    ]);
    let p: serde_json::Value = serde_json::from_str(&p).unwrap();
    let ppl = p["perplexity"]["ppl"].as_f64().unwrap();
    // Random weights over a 259-token byte vocabulary: finite, and nowhere near a trained model.
    assert!(ppl.is_finite() && ppl > 20.0, "{ppl}");
    assert_eq!(p["perplexity"]["sequences"], 3);
}

#[test]
fn synth_is_deterministic_and_inspectable() {
    let d = scratch("synth");
    let (a, b, c) = (d.join("a.gguf"), d.join("b.gguf"), d.join("c.gguf"));
    ok(&[
        "synth",
        "--preset",
        "tiny",
        "--seed",
        "3",
        "--out",
        a.to_str().unwrap(),
    ]);
    ok(&[
        "synth",
        "--preset",
        "tiny",
        "--seed",
        "3",
        "--out",
        b.to_str().unwrap(),
    ]);
    ok(&[
        "synth",
        "--preset",
        "tiny",
        "--seed",
        "4",
        "--out",
        c.to_str().unwrap(),
        "--type",
        "f16",
    ]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let out = ok(&["inspect", c.to_str().unwrap()]);
    assert!(out.contains("GGUF v3"));
    assert!(out.contains("blk.1.ffn_down.weight") && out.contains("F16"));
    assert!(out.contains("llama.attention.head_count_kv"));
    // f16 matrices with f32 norms: just above 16 bits per weight.
    let bpw: f64 = out
        .lines()
        .find(|l| l.starts_with("total:"))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(bpw > 16.0 && bpw < 16.1, "{bpw}");
    let g = ok(&[
        "generate",
        "--model",
        c.to_str().unwrap(),
        "-n",
        "4",
        "--json",
    ]);
    assert!(g.contains("synthetic-tiny-seed4"));
}

#[test]
fn convert_then_score_matches_the_checkpoint() {
    let m = models();
    let (bin, tok) = (m.join("stories260K.bin"), m.join("tok512.bin"));
    let text = m.join("tinystories_sample.txt");
    let out = scratch("convert").join("s.gguf");
    ok(&[
        "convert",
        "--model",
        bin.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let ppl = |args: &[&str]| {
        let mut a = vec![
            "perplexity",
            "--json",
            "--backend",
            "cpu",
            "--text",
            text.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&ok(&a)).unwrap();
        v["perplexity"]["ppl"].as_f64().unwrap()
    };
    let from_bin = ppl(&[
        "--model",
        bin.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
    ]);
    let from_gguf = ppl(&["--model", out.to_str().unwrap()]);
    assert_eq!(from_bin, from_gguf);
    let inspected = ok(&["inspect", bin.to_str().unwrap()]);
    assert!(
        inspected.contains("llama2.c checkpoint")
            && inspected.contains("shared with the embedding")
    );
}

#[test]
fn errors_name_the_file_and_exit_nonzero() {
    // Bad input exits 2 (documented in `nibble --help`), whatever the command.
    let o = nibble(&["generate", "--model", "/nonexistent/model.gguf"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");

    let d = scratch("errors");
    let junk = d.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00").unwrap();
    let o = nibble(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("junk.gguf: tensor_count: file is truncated"),
        "{e}"
    );

    // A .bin model with no tokenizer cannot produce text.
    let m = models();
    let o = nibble(&[
        "generate",
        "--model",
        m.join("stories260K.bin").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tokenizer"));
}

#[test]
fn run_exit_codes_tell_bad_input_from_a_run_that_could_not_be_carried_out() {
    let d = scratch("exit-codes");
    let out = d.join("out");
    let out = out.to_str().unwrap();
    let code = |args: &[&str]| {
        let o = nibble(args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // 2: what the user gave is wrong.
    for bad in [
        &["run", "--browsers", "nosuch", "--out", out][..],
        &[
            "run",
            "--browsers",
            "none",
            "--scenarios",
            "bogus",
            "--out",
            out,
        ],
        &[
            "run",
            "--browsers",
            "none",
            "--model",
            "/nonexistent/m.gguf",
            "--out",
            out,
        ],
        &[
            "run",
            "--browsers",
            "none",
            "--text",
            "/nonexistent/t.txt",
            "--out",
            out,
        ],
    ] {
        let (c, e) = code(bad);
        assert_eq!(c, Some(2), "{bad:?}: {e}");
    }
    // 3: the run could not be carried out (its output directory cannot be made).
    let file = d.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let under = file.join("out");
    let (c, e) = code(&[
        "run",
        "--browsers",
        "none",
        "--out",
        under.to_str().unwrap(),
    ]);
    assert_eq!(c, Some(3), "{e}");
    // gate: a results file that does not exist is bad input.
    let (c, e) = code(&["gate", "/nonexistent/results.json"]);
    assert_eq!(c, Some(2), "{e}");
}

#[test]
fn quantize_compare_and_sweep() {
    let d = scratch("quant");
    let q = d.join("q.gguf");
    ok(&[
        "quantize",
        "--out",
        q.to_str().unwrap(),
        "--weights",
        "q4_0",
        "--precision",
        "attn-q8",
    ]);
    let out = ok(&["inspect", q.to_str().unwrap()]);
    assert!(out.contains("Q8_0") && out.contains("Q4_0"));
    assert!(out.contains("nibble.fallback") && out.contains("reduction vs f16"));
    // Block 64 has no ggml type: a clear refusal, no file.
    let q64 = d.join("q64.gguf");
    let o = nibble(&[
        "quantize",
        "--out",
        q64.to_str().unwrap(),
        "--weights",
        "q4_0",
        "--block",
        "64",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("only block 32"));
    assert!(!q64.exists());

    let c = ok(&[
        "compare",
        "--backend",
        "cpu",
        "--text",
        &sample(),
        "--json",
        "--candidate",
        "weights=f32,kv=f32",
        "--candidate",
        "weights=q4_0,kv=q8_0",
    ]);
    let v: serde_json::Value = serde_json::from_str(&c).unwrap();
    let cands = v["candidates"].as_array().unwrap();
    assert_eq!(cands[0]["divergence"]["mean_kl"], 0.0);
    assert_eq!(cands[0]["divergence"]["top1_agreement"], 1.0);
    assert!(cands[1]["divergence"]["mean_kl"].as_f64().unwrap() > 0.0);

    let out_dir = d.join("sweep");
    ok(&[
        "sweep",
        "--backend",
        "cpu",
        "--text",
        &sample(),
        "--out",
        out_dir.to_str().unwrap(),
        "--candidate",
        "weights=q8_0",
        "--candidate",
        "kv=kivi4,window=64,sinks=4",
    ]);
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("sweep.json")).unwrap())
            .unwrap();
    let rows = rows["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["bits_per_weight"].as_f64().unwrap() > 8.0);
    assert!(
        rows[1]["context_in_budget"].is_null(),
        "a window bounds the cache"
    );
    let csv = std::fs::read_to_string(out_dir.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.starts_with("config,weights,block"));
}

#[test]
fn gpu_backend_reports_its_adapter_and_agrees_with_cpu() {
    let g = ok(&[
        "generate",
        "-n",
        "6",
        "--json",
        "--backend",
        "gpu",
        "--act",
        "f32",
    ]);
    let g: serde_json::Value = serde_json::from_str(&g).unwrap();
    assert!(g["generation"]["backend"]
        .as_str()
        .unwrap()
        .starts_with("gpu ("));
    assert!(g["adapter"]["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(
        g["adapter"]["limits"]["max_storage_buffer_binding_size"]
            .as_u64()
            .unwrap()
            > 0
    );
    let c = ok(&["generate", "-n", "6", "--json", "--backend", "cpu"]);
    let c: serde_json::Value = serde_json::from_str(&c).unwrap();
    assert_eq!(g["generation"]["tokens"], c["generation"]["tokens"]);
    let o = nibble(&["generate", "--backend", "tpu"]);
    assert!(!o.status.success());
    // Activations: automatic (f16 where shader-f16 exists, as on lavapipe), recorded, overridable.
    let auto: serde_json::Value =
        serde_json::from_str(&ok(&["generate", "-n", "2", "--json", "--backend", "gpu"])).unwrap();
    let f16 = auto["adapter"]["shader_f16"].as_bool().unwrap();
    assert_eq!(auto["activations"], if f16 { "f16" } else { "f32" });
    let forced: serde_json::Value = serde_json::from_str(&ok(&[
        "generate",
        "-n",
        "2",
        "--json",
        "--backend",
        "gpu",
        "--act",
        "f32",
    ]))
    .unwrap();
    assert_eq!(forced["activations"], "f32");
    assert!(forced["generation"]["backend"]
        .as_str()
        .unwrap()
        .contains("f32 activations"));
}

/// Without XDG_RUNTIME_DIR (root over ssh, CI), libwayland, which the Vulkan loader probes, prints
/// "XDG_RUNTIME_DIR is invalid or not set" on every GPU open; nibble gives itself a private one.
#[test]
fn a_gpu_run_without_a_runtime_dir_prints_no_wayland_noise() {
    let o = Command::new(env!("CARGO_BIN_EXE_nibble"))
        .args(["generate", "-n", "2", "--backend", "gpu"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run nibble");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}

#[test]
fn bench_writes_medians_spread_and_bytes() {
    let d = scratch("bench");
    let out = ok(&[
        "bench",
        "--preset",
        "tiny",
        "--backend",
        "cpu",
        "--configs",
        "f16,q4_0",
        "--reps",
        "3",
        "--warmup",
        "1",
        "--prompts",
        "16",
        "--depths",
        "0,1024",
        "--decode-tokens",
        "4",
        "--bandwidth",
        "20",
        "--out",
        d.to_str().unwrap(),
    ]);
    assert!(out.contains("| pp16 |") && out.contains("| tg4@d0 |"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("bench.json")).unwrap()).unwrap();
    // The fast CPU backend names its instruction set and threads.
    let b = v["backend"].as_str().unwrap();
    assert!(b.starts_with("cpu (") && b.contains("thread"), "{b}");
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    let cfgs = v["configs"].as_array().unwrap();
    assert_eq!(cfgs.len(), 2);
    for c in cfgs {
        let dec = &c["decode"][0]["ms_per_token"];
        // One figure per repetition (3), each timing its 4 tokens whole.
        assert_eq!(dec["n"], 3);
        assert_eq!(c["decode"][0]["tokens"], 4);
        assert!(dec["p10"].as_f64().unwrap() <= dec["median"].as_f64().unwrap());
        assert!(dec["median"].as_f64().unwrap() <= dec["p90"].as_f64().unwrap());
        assert!(c["decode"][0]["roofline_pct"].as_f64().unwrap() > 0.0);
        // The tiny model's context (512) cannot hold depth 1024: said, not skipped silently.
        assert!(c["not_measured"][0]
            .as_str()
            .unwrap()
            .contains("depth 1024"));
    }
    let md = std::fs::read_to_string(d.join("bench.md")).unwrap();
    // Matrices at q4_0, block 32: exactly 4.5/16 of f16.
    assert!(
        md.contains("| q4_0 |") && md.contains("| 0.28125 |"),
        "{md}"
    );
}

#[test]
fn setup_dry_run_and_browser_listing_say_what_is_there() {
    // Dry run: prints the commands for anything missing (or that everything is present); installs nothing.
    let o = nibble(&["setup", "--dry-run"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chromium"), "{err}");
    // Listing without starting browsers: every product, with versions or install commands.
    let out = ok(&["browsers", "--no-probe"]);
    for name in [
        "Chromium",
        "Firefox",
        "WebKitGTK",
        "Microsoft Edge",
        "Safari",
    ] {
        assert!(out.contains(name), "{out}");
    }
    // Where each was found, or what is missing and how to install it (Edge and Safari are not here).
    assert!(out.contains("browser: /"), "{out}");
    assert!(out.contains("missing: browser not found"), "{out}");
    assert!(out.contains("install: "), "{out}");
}

/// `nibble tokenize` and `nibble score` answer what Hugging Face answers on the family fixtures
/// (`$NIBBLE_FAMILIES`; skipped with the reason where unset), and refuse an id past the vocabulary.
#[test]
fn tokenize_and_score_answer_as_the_references() {
    let e = nibble(&["score", "--backend", "cpu", "--ids", "1,99999"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("--ids: 99999"));
    let Some(fam) = std::env::var_os("NIBBLE_FAMILIES").map(PathBuf::from) else {
        eprintln!("SKIPPED the fixture half: NIBBLE_FAMILIES is not set (.ci/run sets it)");
        return;
    };
    let dir = fam.join("qwen2-tiny");
    let model = dir.join("qwen2-tiny-Q4_K_M.gguf");
    let model = model.to_str().unwrap();
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
    };
    // inspect knows the family: its tensors, types and accounting by class.
    let out = ok(&["inspect", model]);
    assert!(
        out.contains("by class:") && out.contains("blk.0.attn_q.bias") && out.contains("Q6_K"),
        "{out}"
    );
    let tokens = read("tokens.json");
    for c in tokens["cases"].as_array().unwrap().iter().take(6) {
        let text = c["text"].as_str().unwrap();
        let out = ok(&["tokenize", "--model", model, "--text", text, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ids"], c["ids"], "{text:?}");
        assert_eq!(v["pieces"], c["pieces"], "{text:?}");
    }
    let r = read("logits.json");
    let ids: Vec<String> = r["prompt"]["ids"].as_array().unwrap()[..4]
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out = ok(&[
        "score",
        "--model",
        model,
        "--backend",
        "cpu",
        "--no-cache",
        "--ids",
        &ids.join(","),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let short = &r["files"]["qwen2-tiny-Q4_K_M.gguf"]["short"];
    for (p, row) in v["positions"].as_array().unwrap().iter().enumerate() {
        let top: Vec<u64> = row["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[0].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = short["top5_ids"][p]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(top, want, "position {p}");
        // The engine's f32 oracle is within 1e-4 of transformers here (engine/tests/families.rs).
        let d = row["logsumexp"].as_f64().unwrap() - short["logsumexp"][p].as_f64().unwrap();
        assert!(d.abs() < 1e-3, "position {p}: logsumexp off by {d}");
    }
}

/// `nibble generate --chat` sends the message in the model's chat format: the prompt is the
/// template's rendering (as transformers renders Qwen's template, checked in
/// engine/tests/families.rs), tokenized with its control tokens whole, and the output is the reply
/// alone. Fixture half skipped with the reason where `NIBBLE_FAMILIES` is unset.
#[test]
fn generate_chat_uses_the_models_chat_format() {
    let e = nibble(&["generate", "--backend", "cpu", "--chat", "hi"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("no tokenizer.chat_template"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    let Some(fam) = std::env::var_os("NIBBLE_FAMILIES").map(PathBuf::from) else {
        eprintln!("SKIPPED the fixture half: NIBBLE_FAMILIES is not set (.ci/run sets it)");
        return;
    };
    let model = fam.join("qwen2-tiny/qwen2-tiny-Q4_K_M.gguf");
    let model = model.to_str().unwrap();
    let rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    let t: serde_json::Value = serde_json::from_str(&ok(&[
        "tokenize", "--model", model, "--text", rendered, "--json",
    ]))
    .unwrap();
    let out = ok(&[
        "generate",
        "--model",
        model,
        "--backend",
        "cpu",
        "--no-cache",
        "--chat",
        "Hi",
        "--system",
        "Be brief.",
        "-n",
        "3",
        "--json",
    ]);
    let g = &serde_json::from_str::<serde_json::Value>(&out).unwrap()["generation"];
    assert_eq!(
        g["prompt_tokens"].as_u64(),
        Some(t["ids"].as_array().unwrap().len() as u64)
    );
    assert_eq!(
        t["ids"].as_array().unwrap().len(),
        17,
        "control tokens are single ids"
    );
    assert!(g["text"].as_str().unwrap().starts_with(rendered), "{g}");
    let reply = &g["text"].as_str().unwrap()[rendered.len()..];
    assert_eq!(g["reply"].as_str(), Some(reply));
}

#[test]
fn bench_records_its_kv_type_and_why_a_cpu_run_has_no_profile() {
    let bench = |kv: &str, d: &PathBuf| {
        let out = d.to_str().unwrap();
        let args = [
            "bench",
            "--preset",
            "tiny",
            "--backend",
            "cpu",
            "--configs",
            "q4_0",
        ];
        let more = ["--kv", kv, "--profile", "2", "--out", out];
        nibble(&[&args[..], &QUICK_BENCH, &more].concat())
    };
    let report = |d: &PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("bench.json")).unwrap()).unwrap()
    };
    let (d16, d8) = (scratch("bench-kv-f16"), scratch("bench-kv-q8"));
    assert!(bench("f16", &d16).status.success());
    assert!(bench("q8_0", &d8).status.success());
    let (f16, q8) = (report(&d16), report(&d8));
    assert_eq!(
        (f16["kv"].as_str(), q8["kv"].as_str()),
        (Some("f16"), Some("q8_0"))
    );
    // The same positions held in q8_0 blocks (34 bytes per 32 values) take less than in f16 (64).
    let kv = |v: &serde_json::Value| v["configs"][0]["kv_bytes"].as_u64().unwrap();
    assert!(
        kv(&q8) < kv(&f16) && kv(&q8) > 0,
        "{} {}",
        kv(&q8),
        kv(&f16)
    );
    let c = &q8["configs"][0];
    let notes = c["not_measured"].to_string();
    assert!(
        notes.contains("kernel profile: the CPU backends"),
        "{notes}"
    );
    assert!(c["decode"][0].get("profile").is_none(), "{c}");
    let o = bench("f17", &d8);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `nibble bench` on lavapipe with the integer-dot kernels: the q4_0 configuration's grid is timed
/// first and recorded (every group first, the chosen setting among the trials, in bench.md too);
/// f16 weights have no looping kernel, so nothing is tuned; `NIBBLE_INT8_GROUPS=0` turns it off.
#[test]
fn bench_records_the_grid_it_tuned() {
    let bench = |groups: Option<&str>, d: &PathBuf| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nibble"));
        cmd.env("NIBBLE_MATVEC", "tiled-int8")
            .args([
                "bench",
                "--preset",
                "tiny",
                "--backend",
                "gpu",
                "--configs",
                "q4_0,f16",
            ])
            .args(QUICK_BENCH)
            .arg("--out");
        if let Some(g) = groups {
            cmd.env("NIBBLE_INT8_GROUPS", g);
        }
        let o = cmd.arg(d).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("bench.json")).unwrap()).unwrap();
        (v, std::fs::read_to_string(d.join("bench.md")).unwrap())
    };
    let (v, md) = bench(None, &scratch("bench-grid"));
    let t = &v["configs"][0]["tuning"];
    let trials = t["trials"].as_array().unwrap();
    assert_eq!(trials[0]["setting"], "every group", "{t}");
    assert!(trials.len() > 3, "{t}");
    assert!(trials.iter().any(|x| x["setting"] == t["chosen"]), "{t}");
    assert!(
        v["configs"][1].get("tuning").is_none(),
        "f16 tuned: {}",
        v["configs"][1]
    );
    let chosen = t["chosen"].as_str().unwrap();
    assert!(md.contains(&format!("q4_0 tuned, {chosen} chosen")), "{md}");
    let (v, md) = bench(Some("0"), &scratch("bench-grid-off"));
    assert!(
        v["configs"][0].get("tuning").is_none(),
        "{}",
        v["configs"][0]
    );
    assert!(!md.contains("tuned"), "{md}");
}
