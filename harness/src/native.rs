//! Native runs of the engine: generate, perplexity, compare, sweep, quantize.

use crate::args::ModelArgs;
use crate::backend::BackendArgs;
use crate::files::{print_accounting, write_atomic};
use anyhow::{Context, Result};
use clap::Args;
use nibble_engine::cache::{InMemory, Source, Store};
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::eval::{self, Sampler};
use nibble_engine::gguf::{Value, ValueType};
use nibble_engine::kv::{KvConfig, KvType};
use nibble_engine::load::{Ready, Weights};
use nibble_engine::measure::{self, parse_bytes, Reference, RunConfig};
use nibble_engine::model::Model;
use nibble_engine::precision::Accounting;
use nibble_engine::precision::{Fallback, Policy, WeightConfig};
use nibble_engine::quant::WType;
use nibble_engine::tokenizer::Tokenizer;
use nibble_engine::{block_on, Backend, Config};
use std::path::PathBuf;

/// Weight and KV-cache options shared by the commands that run a model.
#[derive(Args, Clone, Default)]
pub struct QuantArgs {
    /// Store every weight matrix as f32, f16, q8_0, q4_0 or q4_1 (norms stay f32).
    #[arg(long)]
    weights: Option<String>,
    /// Elements per quantization block: 32 (ggml-compatible), 64, 128 or 256.
    #[arg(long, default_value_t = 32)]
    block: usize,
    /// Per-class or per-role policy, e.g. `attn=q8_0,ffn=q4_0,ffn[0..2]=q8_0` or
    /// `all=q4_k,attn_v[0..4]=q6_k`, or a preset: all-q4, attn-q8, f16.
    #[arg(long)]
    precision: Option<String>,
    /// KV cache type for keys and values: f32, f16, q8_0, q4_0 or kivi4.
    #[arg(long)]
    kv: Option<String>,
    /// KV cache type for keys only.
    #[arg(long)]
    kv_k: Option<String>,
    /// KV cache type for values only.
    #[arg(long)]
    kv_v: Option<String>,
    /// kivi4 key group length in tokens.
    #[arg(long, default_value_t = 32)]
    kv_group: usize,
    /// Sliding-window attention over this many positions (sinks included).
    #[arg(long)]
    window: Option<usize>,
    /// Attention sinks: the first positions, kept forever in a window.
    #[arg(long, default_value_t = 0)]
    sinks: usize,
    /// Positions the KV cache holds (llama.cpp's -c): the model's whole context where absent,
    /// which for a 128K-context model is gigabytes of cache.
    #[arg(long)]
    ctx: Option<usize>,
}

impl QuantArgs {
    pub fn run_config(&self) -> Result<RunConfig> {
        let mut kv = KvConfig {
            group: self.kv_group,
            window: self.window,
            sinks: self.sinks,
            ctx: self.ctx,
            ..KvConfig::default()
        };
        if let Some(t) = &self.kv {
            kv.k = KvType::parse(t)?;
            kv.v = kv.k;
        }
        if let Some(t) = &self.kv_k {
            kv.k = KvType::parse(t)?;
        }
        if let Some(t) = &self.kv_v {
            kv.v = KvType::parse(t)?;
        }
        let weights = WeightConfig {
            default: self.weights.as_deref().map(WType::parse).transpose()?,
            block: self.block,
            policy: match &self.precision {
                Some(p) => Policy::parse(p)?,
                None => Policy::default(),
            },
        };
        weights.validate()?;
        Ok(RunConfig { weights, kv })
    }
}

pub fn load_model(a: &ModelArgs) -> Result<Model> {
    Ok(match &a.model {
        None => {
            let mut m = Model::builtin();
            if let Some(t) = &a.tokenizer {
                let tb = std::fs::read(t).with_context(|| format!("reading {}", t.display()))?;
                let tf = t.display().to_string();
                let tok = Tokenizer::from_llama2c(&tb, m.config.vocab_size, &tf)?;
                m.set_tokenizer(tok, &tf)?;
            }
            m
        }
        Some(p) => Model::load(p, a.tokenizer.as_deref())?,
    })
}

/// The tokenizer a command needs, or an error naming the model.
pub(crate) fn require_tokenizer<'a>(
    t: Option<&'a Tokenizer>,
    model: &str,
) -> Result<&'a Tokenizer> {
    t.ok_or_else(|| {
        crate::args::bad_input(format!(
            "model {model} has no tokenizer: pass --tokenizer (a llama2.c tokenizer.bin)"
        ))
    })
}

/// Loads for `backend` through the engine's one load path (`Backend::load`): a GPU takes each tensor
/// as it arrives, the CPU assembles the model. Through the component cache unless `--no-cache` (or a
/// built-in model with a replaced tokenizer, which has no stable identity).
pub(crate) fn load_for<'g>(
    a: &ModelArgs,
    q: &QuantArgs,
    backend: Backend<'g>,
) -> Result<(Ready<'g>, RunConfig)> {
    let cfg = q.run_config()?;
    let replaced_tokenizer = a.model.is_none() && a.tokenizer.is_some();
    let dir = a
        .cache_dir
        .clone()
        .or_else(crate::disk::DirStore::default_dir)
        .filter(|_| !a.no_cache && !replaced_tokenizer);
    let store = dir
        .as_deref()
        .map(crate::disk::DirStore::open)
        .transpose()?;
    let mut src: Box<dyn Source> = if replaced_tokenizer {
        let m = load_model(a)?;
        Box::new(InMemory {
            id: "the built-in model with a replaced tokenizer".into(),
            make: Box::new(move || m.clone()),
        })
    } else {
        crate::disk::source(a.model.as_deref(), a.tokenizer.as_deref())
    };
    let store_ref = store.as_ref().map(|s| s as &dyn Store);
    let ready = block_on(backend.load(src.as_mut(), &cfg.weights, store_ref, &mut |_| {}))?;
    if let Some(d) = &dir {
        let r = &ready.report;
        eprintln!(
            "load: {} in {:.1} ms ({} of {} components from the cache{}{}{})",
            r.path,
            r.total_s * 1e3,
            r.from_cache.len(),
            r.components,
            if r.corrupt.is_empty() {
                String::new()
            } else {
                format!("; rebuilt {}", r.corrupt.join(", "))
            },
            r.uncached
                .as_ref()
                .map_or(String::new(), |u| format!("; uncached: {u}")),
            format_args!("; {}", d.display()),
        );
    }
    Ok((ready, cfg))
}

/// The model with the run's weights applied, in host memory (the CPU's load).
fn prepared(a: &ModelArgs, q: &QuantArgs) -> Result<(Model, RunConfig, Vec<Fallback>)> {
    let (ready, cfg) = load_for(a, q, Backend::Cpu)?;
    let Weights::Cpu(m, _) = ready.weights else {
        unreachable!("a CPU load holds the model")
    };
    let mut m = *m;
    m.tokenizer = ready.tokenizer;
    Ok((m, cfg, ready.fallbacks))
}

/// Memory facts of a run, as JSON and as one stderr line.
fn memory_json(
    acc: &Accounting,
    c: &Config,
    cfg: &RunConfig,
    fb: &[Fallback],
    kv_measured: usize,
    budget: Option<usize>,
) -> serde_json::Value {
    serde_json::json!({
        "config": cfg,
        "label": cfg.label(),
        "weights": acc,
        "fallbacks": fb,
        "kv": {
            "bytes_per_token": cfg.kv.bytes_per_token(c),
            "bytes_measured": kv_measured,
            "budget_bytes": budget,
            "context_in_budget": budget.map(|b| cfg.kv.tokens_in_budget(c, b)),
        },
    })
}

fn memory_line(
    a: &Accounting,
    c: &Config,
    cfg: &RunConfig,
    fb: &[Fallback],
    kv_measured: usize,
    budget: Option<usize>,
) {
    eprintln!(
        "{} | weights {} bytes, {:.4} bits/weight, reduction vs f16 {:.2}% | KV {:.1} bytes/token, {} bytes held",
        cfg.label(),
        a.total_bytes,
        a.bits_per_weight,
        a.reduction_vs_f16 * 100.0,
        cfg.kv.bytes_per_token(c),
        kv_measured
    );
    for f in fb {
        eprintln!(
            "fallback: {} stored as {} instead of {}: {}",
            f.tensor,
            f.used.name(),
            f.requested.name(),
            f.reason
        );
    }
    if let Some(b) = budget {
        match cfg.kv.tokens_in_budget(c, b) {
            Some(n) => eprintln!("KV budget {b} bytes holds {n} tokens of context"),
            None => eprintln!(
                "KV budget {b} bytes: the sliding window keeps the cache below it at any length"
            ),
        }
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    quant: QuantArgs,
    /// Prompt text; empty starts from BOS alone.
    #[arg(long, default_value = "")]
    prompt: String,
    /// A user message, sent in the model's chat format (`tokenizer.chat_template`); the reply ends
    /// at the end of the assistant's turn.
    #[arg(long, conflicts_with = "prompt")]
    chat: Option<String>,
    /// A system message before the --chat message.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Number of tokens to generate.
    #[arg(short = 'n', long = "tokens", default_value_t = 64)]
    n: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass (used when temperature > 0); 1 disables it.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let rt = a.backend.open()?;
    let (ready, cfg) = rt.load(&a.model, &a.quant)?;
    let tok = require_tokenizer(ready.tokenizer.as_ref(), &ready.plan.name)?;
    let (name, acc, c, fb) = (
        &ready.plan.name,
        ready.accounting(),
        &ready.plan.config,
        &ready.fallbacks,
    );
    let mut dec = ready.decoder(cfg.kv.clone())?;
    let mut sampler = Sampler::new(a.temperature, a.top_p, a.seed);
    let g = match &a.chat {
        Some(user) => {
            use nibble_engine::tokenizer::chat::Message;
            let mut msgs: Vec<Message> =
                a.system.iter().map(|s| Message::new("system", s)).collect();
            msgs.push(Message::new("user", user));
            block_on(eval::chat(dec.as_mut(), tok, &msgs, a.n, &mut sampler))?
        }
        None => block_on(eval::generate(
            dec.as_mut(),
            tok,
            &a.prompt,
            a.n,
            &mut sampler,
        ))?,
    };
    if a.json {
        let v = serde_json::json!({
            "model": name,
            "adapter": rt.adapter(),
            "activations": rt.activations(),
            "generation": g,
            "memory": memory_json(&acc, c, &cfg, fb, dec.kv_bytes(), None),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", if a.chat.is_some() { &g.reply } else { &g.text });
        let decode = g
            .decode_ms_per_token
            .map_or("not measured (fewer than 2 tokens)".into(), |d| {
                format!("{d:.3} ms/token")
            });
        eprintln!(
            "model {} | backend {} | prompt {} tokens, generated {} | first token {:.2} ms | decode {decode}",
            name,
            g.backend,
            g.prompt_tokens,
            g.tokens.len(),
            g.ttft_ms
        );
        memory_line(&acc, c, &cfg, fb, dec.kv_bytes(), None);
    }
    Ok(())
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    quant: QuantArgs,
    /// Text with stories separated by lines holding <|endoftext|>.
    #[arg(long)]
    text: PathBuf,
    /// Also report how many tokens of context fit in this KV budget (e.g. 64MiB).
    #[arg(long)]
    kv_budget: Option<String>,
    #[arg(long)]
    json: bool,
}

fn read_text(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading text {}", path.display()))
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let budget = a.kv_budget.as_deref().map(parse_bytes).transpose()?;
    let rt = a.backend.open()?;
    let (ready, cfg) = rt.load(&a.model, &a.quant)?;
    let tok = require_tokenizer(ready.tokenizer.as_ref(), &ready.plan.name)?;
    let (name, acc, c, fb) = (
        &ready.plan.name,
        ready.accounting(),
        &ready.plan.config,
        &ready.fallbacks,
    );
    let seqs = eval::story_tokens(tok, &read_text(&a.text)?, c.seq_len)?;
    let mut dec = ready.decoder(cfg.kv.clone())?;
    let p = block_on(eval::perplexity(dec.as_mut(), &seqs))?;
    if a.json {
        let v = serde_json::json!({
            "model": name,
            "adapter": rt.adapter(),
            "text": a.text.display().to_string(),
            "perplexity": p,
            "memory": memory_json(&acc, c, &cfg, fb, dec.kv_bytes(), budget),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "PPL {:.4} over {} tokens in {} stories ({} on {}, backend {}, {:.2} s)",
            p.ppl,
            p.tokens_scored,
            p.sequences,
            a.text.display(),
            name,
            p.backend,
            p.seconds
        );
        memory_line(&acc, c, &cfg, fb, dec.kv_bytes(), budget);
    }
    Ok(())
}

fn parse_candidates(specs: &[String]) -> Result<Vec<RunConfig>> {
    specs
        .iter()
        .map(|c| RunConfig::parse(c).with_context(|| format!("--candidate {c:?}")))
        .collect()
}

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The backend that runs the candidates; the reference is always the f32 CPU oracle.
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    text: PathBuf,
    /// A candidate such as "weights=q4_0,block=32,kv=q8_0" (repeatable).
    #[arg(long, required = true)]
    candidate: Vec<String>,
    #[arg(long)]
    json: bool,
}

pub fn compare(a: CompareArgs) -> Result<()> {
    let base = load_model(&a.model)?;
    let tok = require_tokenizer(base.tokenizer.as_ref(), &base.name)?;
    let seqs = eval::story_tokens(tok, &read_text(&a.text)?, base.config.seq_len)?;
    let cands = parse_candidates(&a.candidate)?;
    let reference = block_on(Reference::run(&mut CpuDecoder::new(&base), &seqs))?;
    let rt = a.backend.open()?;
    let mut out = Vec::new();
    for cfg in &cands {
        let (m, fb) = measure::prepare(&base, cfg)?;
        let mut dec = rt.decoder(&m, cfg.kv.clone())?;
        let d = block_on(measure::compare(&reference, dec.as_mut(), &seqs))?;
        out.push((m.accounting(), fb, d, cfg));
    }
    if a.json {
        let rows: Vec<_> = out
            .iter()
            .map(|(acc, fb, d, cfg)| {
                serde_json::json!({"candidate": cfg, "label": cfg.label(), "divergence": d,
                    "weights": acc, "fallbacks": fb})
            })
            .collect();
        let v = serde_json::json!({"model": base.name, "text": a.text.display().to_string(),
            "adapter": rt.adapter(), "reference": reference.perplexity, "candidates": rows});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "reference: f32 weights, f32 KV, cpu on {} ({}): PPL {:.4} over {} tokens; candidates on {}\n",
        base.name,
        a.text.display(),
        reference.perplexity.ppl,
        reference.perplexity.tokens_scored,
        rt.backend().name()
    );
    println!(
        "| candidate | bits/weight | vs f16 | mean KL | p99 KL | top-1 | max abs Δlogit | PPL | ΔPPL |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (acc, _, d, cfg) in &out {
        println!(
            "| {} | {:.3} | {:.1}% | {:.5} | {:.5} | {:.2}% | {:.4} | {:.4} | {:+.4} |",
            cfg.label(),
            acc.bits_per_weight,
            acc.reduction_vs_f16 * 100.0,
            d.mean_kl,
            d.p99_kl,
            d.top1_agreement * 100.0,
            d.max_abs_dlogit,
            d.ppl,
            d.delta_ppl
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The backend that runs the candidates; the reference is always the f32 CPU oracle.
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    text: PathBuf,
    /// KV budget for the "context that fits" column.
    #[arg(long, default_value = "64MiB")]
    kv_budget: String,
    /// Window of the sliding-window row (4 sinks); default: half the model's context.
    #[arg(long)]
    window: Option<usize>,
    /// Replace the default grid with these candidates (repeatable; same syntax as compare).
    #[arg(long)]
    candidate: Vec<String>,
    /// Directory for sweep.json and sweep.csv (default: reports/sweep-MODEL-TEXT).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn sweep(a: SweepArgs) -> Result<()> {
    let base = load_model(&a.model)?;
    let tok = require_tokenizer(base.tokenizer.as_ref(), &base.name)?;
    let seqs = eval::story_tokens(tok, &read_text(&a.text)?, base.config.seq_len)?;
    let budget = parse_bytes(&a.kv_budget)?;
    let grid = if a.candidate.is_empty() {
        measure::default_grid(a.window.unwrap_or(base.config.seq_len / 2), &base.config)
    } else {
        parse_candidates(&a.candidate)?
    };
    let text_stem = a
        .text
        .file_stem()
        .map_or("text".into(), |s| s.to_string_lossy().into_owned());
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("reports/sweep-{}-{text_stem}", base.name)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rt = a.backend.open()?;
    println!(
        "sweep of {} configurations on {} ({}), KV budget {budget} bytes, candidates on {}\n",
        grid.len(),
        base.name,
        a.text.display(),
        rt.backend().name()
    );
    println!("| config | bits/weight | weight bytes | vs f16 | f16 fallbacks | KV B/token | ctx in budget | PPL | ΔPPL | mean KL | top-1 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let rows = block_on(measure::sweep(
        &base,
        &seqs,
        &grid,
        budget,
        rt.backend(),
        |_, r| {
            println!(
                "| {} | {:.3} | {} | {:.1}% | {} | {:.1} | {} | {:.4} | {:+.4} | {:.5} | {:.2}% |",
                r.config,
                r.bits_per_weight,
                r.weight_bytes,
                r.reduction_vs_f16 * 100.0,
                r.fallbacks.len(),
                r.kv_bytes_per_token,
                r.context_in_budget
                    .map_or("unbounded (window)".into(), |n| n.to_string()),
                r.divergence.ppl,
                r.divergence.delta_ppl,
                r.divergence.mean_kl,
                r.divergence.top1_agreement * 100.0
            );
        },
    ))?;
    let doc = serde_json::json!({
        "model": base.name,
        "backend": rt.backend().name(),
        "adapter": rt.adapter(),
        "text": a.text.display().to_string(),
        "kv_budget_bytes": budget,
        "rows": rows,
    });
    let json_path = dir.join("sweep.json");
    write_atomic(&json_path, |w| Ok(serde_json::to_writer_pretty(w, &doc)?))?;
    let csv_path = dir.join("sweep.csv");
    write_atomic(&csv_path, |w| write_sweep_csv(w, &rows))?;
    eprintln!("\nwrote {} and {}", json_path.display(), csv_path.display());
    Ok(())
}

/// sweep.csv: one row per configuration, every figure of its sweep row.
fn write_sweep_csv(w: &mut dyn std::io::Write, rows: &[measure::SweepRow]) -> Result<()> {
    let mut c = csv::Writer::from_writer(w);
    c.write_record([
        "config",
        "weights",
        "block",
        "precision",
        "kv_k",
        "kv_v",
        "kv_group",
        "window",
        "sinks",
        "weight_bytes",
        "bits_per_weight",
        "reduction_vs_f16",
        "fallbacks",
        "kv_bytes_per_token",
        "kv_budget_bytes",
        "context_in_budget",
        "kv_bytes_measured",
        "tokens",
        "ppl_reference",
        "ppl",
        "delta_ppl",
        "mean_kl",
        "p99_kl",
        "top1_agreement",
        "max_abs_dlogit",
    ])?;
    for r in rows {
        let d = &r.divergence;
        c.write_record([
            r.config.clone(),
            r.weights.clone(),
            r.block.to_string(),
            r.precision.clone(),
            r.kv_k.name().into(),
            r.kv_v.name().into(),
            r.kv_group.to_string(),
            r.window.map_or(String::new(), |w| w.to_string()),
            r.sinks.to_string(),
            r.weight_bytes.to_string(),
            r.bits_per_weight.to_string(),
            r.reduction_vs_f16.to_string(),
            r.fallbacks.join(" "),
            r.kv_bytes_per_token.to_string(),
            r.kv_budget_bytes.to_string(),
            r.context_in_budget.map_or(String::new(), |n| n.to_string()),
            r.kv_bytes_measured.to_string(),
            d.tokens.to_string(),
            d.ppl_reference.to_string(),
            d.ppl.to_string(),
            d.delta_ppl.to_string(),
            d.mean_kl.to_string(),
            d.p99_kl.to_string(),
            d.top1_agreement.to_string(),
            d.max_abs_dlogit.to_string(),
        ])?;
    }
    c.flush()?;
    Ok(())
}

#[derive(Args)]
pub struct QuantizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    out: PathBuf,
    /// Default type for every matrix: f32, f16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k.
    #[arg(long)]
    weights: String,
    /// Block size; only 32 has a GGUF (ggml) type.
    #[arg(long, default_value_t = 32)]
    block: usize,
    #[arg(long)]
    precision: Option<String>,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let q = QuantArgs {
        weights: Some(a.weights.clone()),
        block: a.block,
        precision: a.precision.clone(),
        ..QuantArgs::default()
    };
    let (model, cfg, fb) = prepared(&a.model, &q)?;
    // llama.cpp's general.file_type for the dominant type.
    let file_type = cfg.weights.default.map_or(0, WType::llama_file_type);
    let extra = vec![
        ("general.file_type".to_string(), Value::U32(file_type)),
        ("general.quantization_version".to_string(), Value::U32(2)),
        (
            "nibble.weights".to_string(),
            Value::String(cfg.weights.label()),
        ),
        (
            "nibble.fallback".to_string(),
            Value::Array(
                ValueType::String,
                fb.iter()
                    .map(|f| {
                        Value::String(format!(
                            "{}: {} instead of {}: {}",
                            f.tensor,
                            f.used.name(),
                            f.requested.name(),
                            f.reason
                        ))
                    })
                    .collect(),
            ),
        ),
    ];
    write_atomic(&a.out, |w| Ok(model.write_gguf_with(w, &extra)?))?;
    eprintln!(
        "wrote {} ({} bytes)",
        a.out.display(),
        std::fs::metadata(&a.out)?.len()
    );
    memory_line(&model.accounting(), &model.config, &cfg, &fb, 0, None);
    print_accounting(&model.accounting());
    Ok(())
}
