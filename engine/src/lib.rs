//! nibble-engine: Llama-family inference with block-wise 4-bit weights.
//!
//! - [`model`], [`gguf`], [`tokenizer`]: formats (GGUF v3, llama2.c checkpoints and tokenizers).
//! - [`quant`]: weight formats and their planar in-memory packing.
//! - [`forward`]: the forward pass, written once over the [`forward::Kernels`] trait.
//! - [`cpu`]: the f32 CPU backend, the oracle.
//! - [`eval`]: perplexity and generation over any [`Decoder`].

pub mod arch;
pub mod bench;
pub mod cache;
pub mod config;
pub mod cpu;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod fast;
pub mod forward;
pub mod gguf;
pub mod gpu;
pub mod host;
pub mod kquant;
pub mod kv;
pub mod llama2c;
pub mod load;
pub mod measure;
pub mod model;
pub mod par;
pub mod precision;
pub mod quant;
pub mod scenario;
pub mod synth;
pub mod tokenizer;
pub mod tolerance;
pub mod tuning;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use arch::Config;
pub use error::{Error, Result};
pub use model::Model;
pub use synth::Preset;

use std::future::Future;
use std::pin::Pin;

/// A decoder's answer. It is a future because a browser's GPU answers only through its event loop;
/// natively the GPU waits inside the call, so [`block_on`] returns at once.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// Runs a decoder future to completion on the calling thread (native only).
#[cfg(not(target_arch = "wasm32"))]
pub use pollster::block_on;

/// A backend with a KV cache that turns (token, position) into logits.
pub trait Decoder {
    fn config(&self) -> &Config;
    /// Runs one token at `pos` (positions must be fed in order from 0) and returns the logits.
    fn step(&mut self, token: u32, pos: usize) -> Fut<'_, &[f32]>;
    /// Runs one token and returns only the most likely next token (greedy decoding). Backends that can
    /// avoid reading back all logits override this.
    fn step_argmax(&mut self, token: u32, pos: usize) -> Fut<'_, u32> {
        Box::pin(async move { Ok(eval::argmax(self.step(token, pos).await?)) })
    }
    /// Greedy decoding: runs `token` at `pos`, then each answer at the next position, `n` passes in
    /// all, and returns the `n` answers. The default steps one token at a time; the GPU keeps the
    /// loop on the device and reads the ids back in batches.
    fn decode_greedy(&mut self, token: u32, pos: usize, n: usize) -> Fut<'_, Vec<u32>> {
        Box::pin(async move {
            let mut ids = Vec::with_capacity(n);
            let mut t = token;
            for i in 0..n {
                t = self.step_argmax(t, pos + i).await?;
                ids.push(t);
            }
            Ok(ids)
        })
    }
    /// Scoring: runs `tokens` at `pos0..` as a prompt and returns every position's logits, row after
    /// row. The default steps each position; the GPU runs batched passes (as llama.cpp's perplexity
    /// does) and reads the logits of several back at once.
    fn score<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> Fut<'a, Vec<f32>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(tokens.len() * self.config().vocab_size);
            for (i, &t) in tokens.iter().enumerate() {
                out.extend_from_slice(self.step(t, pos0 + i).await?);
            }
            Ok(out)
        })
    }
    /// Times the backend's own launch choices on the loaded model and keeps the fastest (the GPU:
    /// the integer-dot kernels' workgroups); what it chose, or none where it has nothing to choose.
    /// Leaves the cache reset. Benchmarks call it before timing.
    fn tune(&mut self) -> Fut<'_, Option<tuning::Tuning>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    /// How [`Decoder::decode_greedy`] runs, as recorded with decode timings.
    fn decode_method(&self) -> String {
        "token by token, each answer read back before the next step".into()
    }
    /// Runs one token whose output nobody reads (a prompt token): the GPU skips the readback and the
    /// wait, so consecutive tokens pipeline.
    fn feed(&mut self, token: u32, pos: usize) -> Fut<'_, ()> {
        Box::pin(async move { self.step(token, pos).await.map(|_| ()) })
    }
    /// Runs a prompt at positions `pos0..` and returns the logits after its last token. Backends with
    /// batched kernels run many positions per pass; the default runs them one by one.
    fn prefill<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> Fut<'a, &'a [f32]> {
        Box::pin(async move {
            let (last, pos) = feed_prefix(self, tokens, pos0).await?;
            self.step(last, pos).await
        })
    }
    /// [`Decoder::prefill`] answering only the most likely next token.
    fn prefill_argmax<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> Fut<'a, u32> {
        Box::pin(async move {
            let (last, pos) = feed_prefix(self, tokens, pos0).await?;
            self.step_argmax(last, pos).await
        })
    }
    /// How [`Decoder::prefill`] runs a prompt, as recorded with prefill timings.
    fn prefill_method(&self) -> String {
        "token by token, one pass per token".into()
    }
    /// CPU time the last step spent recording and submitting GPU work, for backends that do.
    fn encode_ms(&self) -> Option<f64> {
        None
    }
    /// GPU dispatches the last pass recorded, for backends that dispatch kernels.
    fn dispatches(&self) -> Option<usize> {
        None
    }
    /// GPU time per kernel of one pass over `tokens` at `pos0..` (a prompt's first pass, or one decode
    /// step with its argmax), for backends that can time their kernels; None elsewhere.
    fn profile<'a>(
        &'a mut self,
        _tokens: &'a [u32],
        _pos0: usize,
    ) -> Fut<'a, Option<Vec<gpu::KernelTime>>> {
        Box::pin(async { Ok(None) })
    }
    /// Time making the decoder spent compiling shaders, for backends that do.
    fn compile_ms(&self) -> Option<f64> {
        None
    }
    /// GPU bytes by category, for backends that allocate on a GPU.
    fn gpu_memory(&self) -> Option<gpu::GpuMemory> {
        None
    }
    /// Which backend ran, as reported in results.
    fn backend(&self) -> String;
    /// Bytes the KV cache holds now (the CPU grows it; the GPU allocates it whole up front).
    fn kv_bytes(&self) -> usize;
    /// Forgets the sequence so the next step starts again at position 0.
    fn reset(&mut self);
    /// Whether a position may run again after later ones: true where each position's cache slot is
    /// its own ([`kv::KvConfig::rewinds`]). A benchmark then fills a context once and decodes after
    /// it in every repetition.
    fn rewinds(&self) -> bool {
        false
    }
    /// Positions this decoder can take: the model's context, or unbounded with a sliding window.
    fn context_limit(&self) -> usize;
}

/// Feeds every prompt token but the last, one by one; answers the last token and its position.
async fn feed_prefix<D: Decoder + ?Sized>(
    d: &mut D,
    tokens: &[u32],
    pos0: usize,
) -> Result<(u32, usize)> {
    let (&last, rest) = tokens
        .split_last()
        .ok_or_else(|| Error::Invalid("empty prompt".into()))?;
    for (i, &t) in rest.iter().enumerate() {
        d.feed(t, pos0 + i).await?;
    }
    Ok((last, pos0 + rest.len()))
}

/// Which backend runs a model: the CPU oracle, the fast CPU backend, or an open GPU.
#[derive(Clone, Copy)]
pub enum Backend<'g> {
    Cpu,
    Fast(fast::FastOptions),
    Gpu(&'g gpu::Gpu),
}

impl<'g> Backend<'g> {
    /// A decoder for `model` with a KV cache as `kv` says (the GPU uploads the weights here).
    pub fn decoder<'a>(&self, model: &'a Model, kv: kv::KvConfig) -> Result<Box<dyn Decoder + 'a>>
    where
        'g: 'a,
    {
        Ok(match *self {
            Backend::Cpu => Box::new(cpu::CpuDecoder::with_kv(model, kv)?),
            Backend::Fast(o) => Box::new(fast::FastDecoder::new(model, kv, o)?),
            Backend::Gpu(g) => Box::new(gpu::GpuDecoder::new(g, model, kv)?),
        })
    }

    pub fn name(&self) -> String {
        match self {
            Backend::Cpu => "cpu".into(),
            Backend::Fast(o) => format!("cpu ({})", o.label()),
            Backend::Gpu(g) => format!(
                "gpu ({}, {}, {} activations)",
                g.report.name,
                g.report.backend,
                g.activations.name()
            ),
        }
    }
}
