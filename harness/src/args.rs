//! Arguments several commands share, and the options read from the environment (here at the edge; the
//! engine reads none).

use anyhow::{Context, Result};
use clap::Args;
use nibble_engine::gpu::{GpuOptions, MatvecKernel};
use std::path::PathBuf;

/// Which model to run; the built-in synthetic model when `--model` is absent.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A GGUF file or a llama2.c checkpoint (.bin). Default: the built-in synthetic model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A llama2.c tokenizer.bin (or a GGUF holding a tokenizer). Needed for a .bin model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Component cache directory: prepared weights are kept there by content, so the next load of the
    /// same model and precision skips parsing and quantizing. Default: the platform cache directory
    /// (~/.cache/nibble on Linux).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Load without the component cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// GPU options read from the environment, here at the edge (the engine reads none):
/// `NIBBLE_MATVEC=tiled|row` picks the decode matvec kernel, `NIBBLE_PREFILL_ROWS=N` caps the rows of a
/// batched prompt pass (1: token by token, as llama.cpp's `--ubatch-size`).
pub fn gpu_env_options() -> Result<GpuOptions> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Ok(GpuOptions {
        matvec: var("NIBBLE_MATVEC")
            .map(|v| MatvecKernel::parse(&v))
            .transpose()
            .context("NIBBLE_MATVEC")?,
        prefill_rows: var("NIBBLE_PREFILL_ROWS")
            .map(|v| v.parse::<usize>())
            .transpose()
            .context("NIBBLE_PREFILL_ROWS: expected a number of rows")?,
        ..GpuOptions::default()
    })
}
