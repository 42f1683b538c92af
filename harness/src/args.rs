//! Arguments several commands share, and the options read from the environment (here at the edge; the
//! engine reads none).

use anyhow::{Context, Result};
use clap::Args;
use nibble_engine::gpu::{GpuOptions, MatvecKernel, ShaderChecks};
use std::fmt;
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
/// `NIBBLE_MATVEC=tiled|tiled-blocks|tiled32|row|tiled-int8` picks the decode matvec kernel,
/// `NIBBLE_PREFILL_ROWS=N` caps the rows of a batched prompt pass (1: token by token, as llama.cpp's
/// `--ubatch-size`),
/// `NIBBLE_SHADER_CHECKS=on|off|runtime|zero-init` what wgpu's shader safety code kept natively,
/// `NIBBLE_SUBGROUPS=on|off` whether the matrix kernels sum rows with subgroup operations,
/// `NIBBLE_QKV=on|off` whether decode runs a layer's Q, K and V products as one kernel,
/// `NIBBLE_FOLD_NORM=on|off` whether decode folds RMSNorm into the product after it where it can,
/// `NIBBLE_KV_DIRECT=on|off` whether the Q/K/V kernel stores K and V in an f16 KV cache itself,
/// `NIBBLE_INT8_GROUPS=N` at most N workgroups for the integer-dot decode kernels (each looping over
/// row groups; 0: a workgroup per row group; unset: `nibble bench` times the grid on each model),
/// `NIBBLE_F16_MATH=on|off` whether prompt products of f16 weights multiply in f16 (f16 activations;
/// on by default with them),
/// `NIBBLE_TALL_TILES=on|off` whether those take 128 x 128 tiles (`matmul_h128`) in every pass of
/// over 64 tokens, or never (unset: where the grid has 256 workgroups).
pub fn gpu_env_options() -> Result<GpuOptions> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let on_off = |k: &str| {
        var(k)
            .map(|v| match v.as_str() {
                "on" => Ok(true),
                "off" => Ok(false),
                _ => Err(anyhow::anyhow!("expected on or off, not {v:?}")),
            })
            .transpose()
            .context(k.to_string())
    };
    Ok(GpuOptions {
        matvec: var("NIBBLE_MATVEC")
            .map(|v| MatvecKernel::parse(&v))
            .transpose()
            .context("NIBBLE_MATVEC")?,
        prefill_rows: var("NIBBLE_PREFILL_ROWS")
            .map(|v| v.parse::<usize>())
            .transpose()
            .context("NIBBLE_PREFILL_ROWS: expected a number of rows")?,
        shader_checks: var("NIBBLE_SHADER_CHECKS")
            .map(|v| ShaderChecks::parse(&v))
            .transpose()
            .context("NIBBLE_SHADER_CHECKS")?,
        subgroups: on_off("NIBBLE_SUBGROUPS")?,
        fuse_qkv: on_off("NIBBLE_QKV")?,
        fold_norm: on_off("NIBBLE_FOLD_NORM")?,
        kv_direct: on_off("NIBBLE_KV_DIRECT")?,
        half_math: on_off("NIBBLE_F16_MATH")?,
        tall_tiles: on_off("NIBBLE_TALL_TILES")?,
        int8_groups: var("NIBBLE_INT8_GROUPS")
            .map(|v| v.parse::<u32>())
            .transpose()
            .context("NIBBLE_INT8_GROUPS: expected a number of workgroups")?,
        ..GpuOptions::default()
    })
}

/// Exit codes every command shares. 0: done (for `run` and `gate`: every required target passes).
pub const EXIT_TARGET_FAILED: i32 = 1;
/// A flag, a file or a model the user gave is wrong (clap's own usage errors exit 2 as well).
pub const EXIT_BAD_INPUT: i32 = 2;
/// The command could not be carried out: a bundle that does not build, a server that does not
/// start, a lost GPU, a file that cannot be written.
pub const EXIT_FAILED: i32 = 3;

/// An error in what the user gave: exits with [`EXIT_BAD_INPUT`].
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Marks an error as the user's input.
pub fn bad_input(e: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(BadInput(format!("{e:#}")))
}

/// The exit code of a failed command: bad input (a [`BadInput`], or a model or flag the engine
/// refused) or a failure to carry it out.
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    let input = e.chain().any(|c| {
        c.is::<BadInput>()
            || matches!(
                c.downcast_ref::<nibble_engine::Error>(),
                Some(
                    nibble_engine::Error::Format { .. }
                        | nibble_engine::Error::Invalid(_)
                        | nibble_engine::Error::Io { .. }
                )
            )
    });
    if input {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILED
    }
}
