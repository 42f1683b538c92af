//! `nibble tokenize` and `nibble score`: a model's token ids and logits, for conformance checks from
//! outside (against Hugging Face, llama.cpp's `llama-tokenize`, or another engine).

use crate::args::ModelArgs;
use crate::backend::BackendArgs;
use crate::native::{require_tokenizer, QuantArgs};
use anyhow::{Context, Result};
use clap::Args;
use nibble_engine::block_on;
use nibble_engine::eval::log_sum_exp;
use nibble_engine::gguf::Gguf;
use nibble_engine::tokenizer::Tokenizer;
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to tokenize.
    #[arg(long, conflicts_with = "file")]
    text: Option<String>,
    /// A UTF-8 file to tokenize.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Prepend BOS where the vocabulary asks for it (`add_bos_token`).
    #[arg(long)]
    bos: bool,
    /// Print ids and pieces as JSON.
    #[arg(long)]
    json: bool,
}

/// The vocabulary alone where the file is a GGUF with one (no weights read), else through the load.
fn tokenizer_of(a: &ModelArgs) -> Result<Tokenizer> {
    if let (Some(m), None) = (&a.model, &a.tokenizer) {
        if m.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let name = m.display().to_string();
            let bytes = std::fs::read(m).with_context(|| format!("reading {name}"))?;
            return Ok(Tokenizer::from_gguf(&Gguf::parse(&bytes, &name)?, &name)?);
        }
    }
    let rt = BackendArgs::oracle().open()?;
    let (ready, _) = rt.load(a, &QuantArgs::default())?;
    Ok(require_tokenizer(ready.tokenizer.as_ref(), &ready.plan.name)?.clone())
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => return Err(crate::args::bad_input("give --text or --file")),
    };
    let tok = tokenizer_of(&a.model)?;
    let ids = tok.encode(&text, a.bos, false)?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| String::from_utf8_lossy(tok.pieces.get(i as usize).map_or(&[][..], |p| p)).into())
        .collect();
    if a.json {
        let v = serde_json::json!({ "model": tok.model_name(), "ids": ids, "pieces": pieces });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (i, p) in ids.iter().zip(&pieces) {
            println!("{i}\t{p:?}");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    quant: QuantArgs,
    /// Token ids fed one per position from position 0, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// How many of the largest logits to print per position.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let rt = a.backend.open()?;
    let (ready, cfg) = rt.load(&a.model, &a.quant)?;
    let vocab = ready.plan.config.vocab_size;
    if let Some(&bad) = a.ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(crate::args::bad_input(format!(
            "--ids: {bad} is not below the vocabulary size {vocab}"
        )));
    }
    let mut dec = ready.decoder(cfg.kv.clone())?;
    if a.ids.len() > dec.context_limit() {
        return Err(crate::args::bad_input(format!(
            "--ids: {} positions, but the context is {}",
            a.ids.len(),
            dec.context_limit()
        )));
    }
    let mut rows = Vec::new();
    for (pos, &id) in a.ids.iter().enumerate() {
        let l = block_on(dec.step(id, pos))?;
        let mut order: Vec<usize> = (0..l.len()).collect();
        let k = a.top.min(l.len());
        order.select_nth_unstable_by(k.saturating_sub(1), |&x, &y| l[y].total_cmp(&l[x]));
        order.truncate(k);
        order.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
        let top: Vec<(usize, f32)> = order.into_iter().map(|i| (i, l[i])).collect();
        rows.push(serde_json::json!({
            "pos": pos, "token": id, "top": top, "logsumexp": log_sum_exp(l),
        }));
    }
    if a.json {
        let v = serde_json::json!({
            "model": ready.plan.name, "backend": dec.backend(), "positions": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &rows {
            println!("{r}");
        }
    }
    Ok(())
}
