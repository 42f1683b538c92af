//! `nibble`: runs nibble-engine natively, measures it and reports.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::eval::{self, Sampler};
use nibble_engine::gguf::{self, Gguf};
use nibble_engine::model::{Model, Preset};
use nibble_engine::quant::WType;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "nibble",
    version,
    about = "4-bit Llama inference on WebGPU, measured across browsers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Score a text file: PPL over every token after BOS of every story.
    Perplexity(PerplexityArgs),
    /// Convert a llama2.c checkpoint and its tokenizer.bin to GGUF.
    Convert(ConvertArgs),
    /// Write a deterministic synthetic Llama model as GGUF.
    Synth(SynthArgs),
    /// Print a model file's header, metadata, tensors and sizes.
    Inspect(InspectArgs),
}

/// Which model to run; the built-in synthetic model when `--model` is absent.
#[derive(Args, Clone)]
struct ModelArgs {
    /// A GGUF file or a llama2.c checkpoint (.bin). Default: the built-in synthetic model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A llama2.c tokenizer.bin (or a GGUF holding a tokenizer). Needed for a .bin model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text; empty starts from BOS alone.
    #[arg(long, default_value = "")]
    prompt: String,
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

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text with stories separated by lines holding <|endoftext|>.
    #[arg(long)]
    text: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConvertArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct SynthArgs {
    /// tiny, llama-1b or llama-7b.
    #[arg(long)]
    preset: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    /// Matrix storage type, f32 or f16 (default: f32 for tiny, f16 for the large presets).
    #[arg(long = "type")]
    ty: Option<String>,
}

#[derive(Args)]
struct InspectArgs {
    file: PathBuf,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Generate(a) => generate(a),
        Command::Perplexity(a) => perplexity(a),
        Command::Convert(a) => convert(a),
        Command::Synth(a) => synth(a),
        Command::Inspect(a) => inspect(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn load_model(a: &ModelArgs) -> Result<Model> {
    let model = match &a.model {
        None => {
            let mut m = Model::builtin();
            if let Some(t) = &a.tokenizer {
                let tb = std::fs::read(t).with_context(|| format!("reading {}", t.display()))?;
                let tf = t.display().to_string();
                let tok = nibble_engine::tokenizer::Tokenizer::from_llama2c(
                    &tb,
                    m.config.vocab_size,
                    &tf,
                )?;
                m.set_tokenizer(tok, &tf)?;
            }
            m
        }
        Some(p) => Model::load(p, a.tokenizer.as_deref())?,
    };
    Ok(model)
}

fn require_tokenizer(m: &Model) -> Result<&nibble_engine::tokenizer::Tokenizer> {
    match &m.tokenizer {
        Some(t) => Ok(t),
        None => bail!(
            "model {} has no tokenizer: pass --tokenizer (a llama2.c tokenizer.bin)",
            m.name
        ),
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let tok = require_tokenizer(&model)?;
    let mut dec = CpuDecoder::new(&model);
    let mut sampler = Sampler::new(a.temperature, a.top_p, a.seed);
    let g = eval::generate(&mut dec, tok, &a.prompt, a.n, &mut sampler)?;
    if a.json {
        let v = serde_json::json!({ "model": model.name, "generation": g });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", g.text);
        let decode = g
            .decode_ms_per_token
            .map_or("not measured (fewer than 2 tokens)".into(), |d| {
                format!("{d:.3} ms/token")
            });
        eprintln!(
            "model {} | backend {} | prompt {} tokens, generated {} | first token {:.2} ms | decode {decode}",
            model.name,
            g.backend,
            g.prompt_tokens,
            g.tokens.len(),
            g.ttft_ms
        );
    }
    Ok(())
}

fn perplexity(a: PerplexityArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let tok = require_tokenizer(&model)?;
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading text {}", a.text.display()))?;
    let seqs = eval::story_tokens(tok, &text, model.config.seq_len);
    let mut dec = CpuDecoder::new(&model);
    let p = eval::perplexity(&mut dec, &seqs)?;
    if a.json {
        let v = serde_json::json!({
            "model": model.name,
            "text": a.text.display().to_string(),
            "perplexity": p,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "PPL {:.4} over {} tokens in {} stories ({} on {}, backend {}, {:.2} s)",
            p.ppl,
            p.tokens_scored,
            p.sequences,
            a.text.display(),
            model.name,
            p.backend,
            p.seconds
        );
    }
    Ok(())
}

/// Writes through a temporary file and renames, so an interrupted write never leaves a partial file.
fn write_atomic(
    out: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let tmp = out.with_extension("partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let res = f(&mut w).and_then(|_| w.flush().map_err(Into::into));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", out.display())));
    }
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<()> {
    let model = Model::load(&a.model, Some(&a.tokenizer))?;
    write_atomic(&a.out, |w| Ok(model.write_gguf(w)?))?;
    eprintln!(
        "wrote {} ({} bytes): {} from {} with {}",
        a.out.display(),
        std::fs::metadata(&a.out)?.len(),
        model.name,
        a.model.display(),
        a.tokenizer.display()
    );
    Ok(())
}

fn synth(a: SynthArgs) -> Result<()> {
    let preset = Preset::parse(&a.preset)?;
    let ty = match a.ty.as_deref() {
        Some(t) => WType::parse(t)?,
        None if preset == Preset::Tiny => WType::F32,
        None => WType::F16,
    };
    if ty.is_quantized() {
        bail!("--type takes f32 or f16; quantized types come from `nibble quantize`");
    }
    let mut model = Model::synthetic(preset, a.seed);
    if ty != WType::F32 {
        model.cast_matrices(ty);
    }
    write_atomic(&a.out, |w| Ok(model.write_gguf(w)?))?;
    eprintln!(
        "wrote {} ({} bytes, {} parameters, {})",
        a.out.display(),
        std::fs::metadata(&a.out)?.len(),
        model.config.n_params(model.tied()),
        ty.name()
    );
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    let file = a.file.display().to_string();
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {file}"))?;
    if !bytes.starts_with(gguf::MAGIC) {
        let m = Model::from_llama2c(&bytes, &file)?;
        println!("{file}: llama2.c checkpoint, {} bytes", bytes.len());
        println!("config: {}", serde_json::to_string(&m.config)?);
        println!(
            "classifier: {}",
            if m.tied() {
                "shared with the embedding"
            } else {
                "separate"
            }
        );
        print_tensors(&m);
        return Ok(());
    }
    let g = Gguf::parse(&bytes, &file)?;
    println!(
        "{file}: GGUF v{}, {} bytes, {} metadata entries, {} tensors, alignment {}, data at byte {}",
        g.version,
        bytes.len(),
        g.metadata.len(),
        g.tensors.len(),
        g.alignment,
        g.data_offset
    );
    println!("\nmetadata:");
    for (k, v) in &g.metadata {
        println!("  {k:<45} {}", v.display_short());
    }
    println!(
        "\n{:<32} {:>6} {:>16} {:>12}",
        "tensor", "type", "shape", "bytes"
    );
    let (mut total_bytes, mut total_elems) = (0u64, 0u64);
    for t in &g.tensors {
        let shape = t
            .dims
            .iter()
            .rev()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<32} {:>6} {:>16} {:>12}",
            t.name,
            format!("{:?}", t.ty),
            shape,
            t.n_bytes()
        );
        total_bytes += t.n_bytes();
        total_elems += t.n_elements();
    }
    println!(
        "\ntotal: {total_bytes} tensor bytes for {total_elems} weights = {:.4} bits per weight",
        total_bytes as f64 * 8.0 / total_elems.max(1) as f64
    );
    Ok(())
}

fn print_tensors(m: &Model) {
    use nibble_engine::model::{Class, TensorId};
    println!(
        "\n{:<32} {:>6} {:>16} {:>12}",
        "tensor", "type", "shape", "bytes"
    );
    let (mut total_bytes, mut total_elems) = (0usize, 0usize);
    for id in TensorId::all(&m.config, m.tied()) {
        let (r, c) = id.shape(&m.config);
        let (ty, bytes) = if id.class() == Class::Norm {
            ("f32", c * 4)
        } else {
            let q = m.weights.matrix(id);
            (q.ty.name(), q.n_bytes())
        };
        println!(
            "{:<32} {:>6} {:>16} {:>12}",
            id.gguf_name(),
            ty,
            format!("{r}x{c}"),
            bytes
        );
        total_bytes += bytes;
        total_elems += r * c;
    }
    println!(
        "\ntotal: {total_bytes} tensor bytes for {total_elems} weights = {:.4} bits per weight",
        total_bytes as f64 * 8.0 / total_elems.max(1) as f64
    );
}
