//! Commands that turn files into files: convert, synth, inspect.

use anyhow::{bail, Context, Result};
use clap::Args;
use nibble_engine::gguf::{self, Gguf};
use nibble_engine::model::{Class, Model, TensorId};
use nibble_engine::precision::{Accounting, WeightConfig};
use nibble_engine::quant::WType;
use nibble_engine::Preset;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ConvertArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct SynthArgs {
    /// tiny, llama-1b, llama-7b or llama-8b.
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
pub struct InspectArgs {
    file: PathBuf,
}

/// Writes through a temporary file and renames, so an interrupted write never leaves a partial file.
pub fn write_atomic(
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

pub fn convert(a: ConvertArgs) -> Result<()> {
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

pub fn synth(a: SynthArgs) -> Result<()> {
    let preset = Preset::parse(&a.preset)?;
    let ty = match a.ty.as_deref() {
        Some(t) => WType::parse(t)?,
        None if preset == Preset::Tiny => WType::F32,
        None => WType::F16,
    };
    if ty.is_quantized() || ty.is_k() {
        bail!("--type takes f32 or f16; quantized types come from `nibble quantize`");
    }
    // Each tensor drawn and stored as `ty` on its own thread (a 7B f16 file: never in f32 whole).
    let wc = WeightConfig {
        default: Some(ty),
        ..WeightConfig::default()
    };
    let (model, _) = Model::synthetic_with(preset, a.seed, &wc)?;
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

pub fn inspect(a: InspectArgs) -> Result<()> {
    let file = a.file.display().to_string();
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {file}"))?;
    if !bytes.starts_with(gguf::MAGIC) {
        return inspect_llama2c(&bytes, &file);
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
        match v {
            gguf::Value::Array(_, items) if k == "nibble.fallback" => {
                println!("  {k:<45} {} tensors", items.len());
                for it in items {
                    println!("    {}", it.as_str().unwrap_or_default());
                }
            }
            _ => println!("  {k:<45} {}", v.display_short()),
        }
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
    // Types read into another with the same values (GgmlType::wtype), each named once.
    let mut restored: Vec<String> = Vec::new();
    for t in &g.tensors {
        let (ty, block) = t.ty.stored();
        let line = format!("{:?} as {}", t.ty, ty.name().to_uppercase());
        if ty.ggml(block) != Some(t.ty) && !restored.contains(&line) {
            restored.push(line);
        }
    }
    if nibble_engine::arch::from_gguf(&g, &file).is_ok() {
        drop(g);
        let acc = Model::from_gguf(&bytes, &file)?.accounting();
        if !restored.is_empty() {
            println!(
                "\n(as nibble holds them: {}, every value unchanged)",
                restored.join(", ")
            );
        }
        if acc.tensors.iter().any(|t| t.ty.is_k()) {
            println!(
                "\n(as nibble holds them: K super-blocks padded to whole 32-bit words, so Q6_K's 210 \
                 bytes take 212)"
            );
        }
        print_accounting(&acc);
    }
    Ok(())
}

/// `inspect` of a llama2.c checkpoint: its config and tensors as nibble holds them.
fn inspect_llama2c(bytes: &[u8], file: &str) -> Result<()> {
    let m = Model::from_llama2c(bytes, file)?;
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
    println!(
        "\n{:<32} {:>6} {:>16} {:>12}",
        "tensor", "type", "shape", "bytes"
    );
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
    }
    print_accounting(&m.accounting());
    Ok(())
}

pub fn print_accounting(a: &Accounting) {
    println!("\nby class:");
    for (class, b) in &a.by_class {
        println!(
            "  {:<13} {:>12} bytes {:>12} weights {:>8.4} bits/weight",
            format!("{class:?}"),
            b.bytes,
            b.weights,
            b.bits_per_weight
        );
    }
    println!(
        "  {:<13} {:>12} bytes {:>12} weights {:>8.4} bits/weight",
        "total", a.total_bytes, a.total_weights, a.bits_per_weight
    );
    println!(
        "the same tensors at f16 (norms f32): {} bytes; reduction vs f16: {:.2}%",
        a.f16_bytes,
        a.reduction_vs_f16 * 100.0
    );
}
