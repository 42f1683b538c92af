//! What a run serves and scores, made once for every host.

use super::ui::Ui;
use super::RunArgs;
use crate::args::bad_input;
use crate::browser::server;
use anyhow::Result;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::measure::{self, Reference, RunConfig};
use nibble_engine::model::Model;
use nibble_engine::scenario::{self, Params, Scenario};
use nibble_engine::{block_on, eval, Preset};
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Everything a run serves and scores: the model file, parameters and oracle references.
pub struct Prepared {
    pub base: Model,
    pub params: Params,
    pub refs: Vec<Reference>,
    /// JSON the page's `load` call takes.
    pub load_job: Value,
    /// JSON the page's `reload` call takes.
    pub reload_job: Value,
    /// The files the browsers fetch (the built-in model written as GGUF), which the native reload
    /// loads too.
    pub model_file: PathBuf,
    pub tokenizer_file: Option<PathBuf>,
    /// The run's data directory (native reload caches live there).
    pub data: PathBuf,
}

/// The built-in text scored when no `--text` is given and no TinyStories sample sits beside the model
/// (built into the binary, so a nibble without a checkout runs too).
const SAMPLE: &str = include_str!("../../assets/sample.txt");

/// The text to score and its name: `--text`, the sample beside the model, or the built-in sample.
fn scored_text(a: &RunArgs) -> Result<(String, String)> {
    let beside = a
        .model
        .model
        .as_ref()
        .map(|m| m.with_file_name("tinystories_sample.txt"))
        .filter(|p| p.exists());
    match a.text.clone().or(beside) {
        Some(p) => std::fs::read_to_string(&p)
            .map(|t| (t, p.display().to_string()))
            .map_err(|e| bad_input(format!("reading {}: {e}", p.display()))),
        None => Ok((SAMPLE.to_string(), "the built-in sample".into())),
    }
}

/// The model file served to the browsers (the built-in or preset model written as GGUF), the URLs
/// the page fetches, and the model itself.
fn serve_model(
    a: &RunArgs,
    data: &Path,
    files: &server::Files,
) -> Result<(Model, String, Option<String>, PathBuf)> {
    let name_of = |p: &Path, default: &str| {
        p.file_name()
            .map_or(default.into(), |n| n.to_string_lossy().to_string())
    };
    Ok(match (&a.model.model, &a.preset) {
        (Some(path), _) => {
            let base = crate::native::load_model(&a.model)?;
            let name = name_of(path, "model");
            files.add(&format!("/data/{name}"), path);
            let tok = a.model.tokenizer.as_ref().map(|t| {
                let tn = name_of(t, "tokenizer");
                files.add(&format!("/data/{tn}"), t);
                format!("/data/{tn}")
            });
            (base, format!("/data/{name}"), tok, path.clone())
        }
        (None, preset) => {
            let base = match preset {
                Some(p) => Model::synthetic(Preset::parse(p)?, 0),
                None => Model::builtin(),
            };
            let file = data.join("model.gguf");
            crate::files::write_atomic(&file, |w| Ok(base.write_gguf(w)?))?;
            files.add("/data/model.gguf", &file);
            (base, "/data/model.gguf".to_string(), None, file)
        }
    })
}

/// The token sequences scored: whole stories of the text until `--max-tokens` is spent, the last cut.
fn scored_sequences(a: &RunArgs, base: &Model) -> Result<Vec<Vec<u32>>> {
    let (text, text_name) = scored_text(a)?;
    let tok = base
        .tokenizer
        .as_ref()
        .ok_or_else(|| bad_input("the model has no tokenizer: give --tokenizer"))?;
    let mut seqs = eval::story_tokens(tok, &text, base.config.seq_len)?;
    let mut left = a.max_tokens + 1;
    seqs.retain_mut(|s| {
        if left <= 1 {
            return false;
        }
        s.truncate(left);
        left = left.saturating_sub(s.len());
        true
    });
    if seqs.is_empty() {
        return Err(bad_input(format!("{text_name}: no text to score")));
    }
    Ok(seqs)
}

/// The run's parameters: the engine's defaults with the command line's overrides.
fn params(a: &RunArgs, base: &Model, seqs: Vec<Vec<u32>>) -> Params {
    let mut params = scenario::default_params(base, seqs, a.reps);
    if let Some(p) = &a.prompts {
        params.bench.prompts = p.clone();
    }
    if let Some(d) = &a.depths {
        params.bench.depths = d.clone();
    }
    if let Some(n) = a.decode_tokens {
        params.bench.decode_tokens = n;
    }
    if let Some(n) = a.past_context {
        params.past_context = n;
    }
    if let Some(n) = a.ctx {
        params.ctx = Some(n);
    }
    params
}

/// The oracle's references (CPU, f32 activations) for each accuracy configuration, written where the
/// browsers fetch them; none when no scenario scores against them.
fn references(
    base: &Model,
    params: &Params,
    scored: bool,
    data: &Path,
    files: &server::Files,
) -> Result<(Vec<Reference>, Vec<String>)> {
    let mut refs = Vec::new();
    let mut urls = Vec::new();
    let configs = if scored {
        params.accuracy_configs.as_slice()
    } else {
        &[]
    };
    for (i, spec) in configs.iter().enumerate() {
        let cfg = RunConfig::parse(spec)?;
        let (m, _) = measure::prepare(base, &cfg)?;
        let r = block_on(Reference::run(&mut CpuDecoder::new(&m), &params.seqs))?;
        let f = data.join(format!("ref-{i}.bin"));
        crate::files::write_atomic(&f, |w| Ok(w.write_all(&r.to_bytes())?))?;
        files.add(&format!("/data/ref-{i}.bin"), &f);
        urls.push(format!("/data/ref-{i}.bin"));
        refs.push(r);
    }
    Ok((refs, urls))
}

/// Everything the hosts share, made once.
pub fn prepare(
    a: &RunArgs,
    want: &[Scenario],
    data: &Path,
    files: &server::Files,
    ui: &Ui,
) -> Result<Prepared> {
    let (base, model_url, tok_url, model_file) = serve_model(a, data, files)?;
    let params = params(a, &base, scored_sequences(a, &base)?);
    // Accuracy and context score against the oracle; a run without them does not compute it.
    let scored = want.iter().any(|s| s.needs_reference());
    if scored {
        ui.line("native", "computing the oracle references (CPU, f32)");
    }
    let (refs, ref_urls) = references(&base, &params, scored, data, files)?;
    let pf = data.join("params.json");
    crate::files::write_atomic(&pf, |w| Ok(serde_json::to_writer(w, &params)?))?;
    files.add("/data/params.json", &pf);
    let load_job = json!({
        "model_url": model_url,
        "tokenizer_url": tok_url,
        "params_url": "/data/params.json",
        "reference_urls": ref_urls,
    });
    let reload_job = json!({
        "model_url": model_url,
        "tokenizer_url": tok_url,
        "params_url": "/data/params.json",
        "store": a.cache,
        // Test hook: the browser store's writes fail as a full quota would.
        "fail_writes": std::env::var("NIBBLE_CACHE_FAIL_WRITES").is_ok_and(|v| v == "1"),
    });
    Ok(Prepared {
        base,
        params,
        refs,
        load_job,
        reload_job,
        model_file,
        tokenizer_file: a.model.tokenizer.clone(),
        data: data.to_path_buf(),
    })
}
