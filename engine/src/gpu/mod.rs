//! The WebGPU backend (wgpu): the same forward pass as the CPU, with WGSL kernels from `shaders/`.
//!
//! - `device`: opening the adapter, its report and limits, the choices made per adapter.
//! - `layout`: matrices split into bindings, KV cache sizes, memory accounting.
//! - `upload`: weights uploaded whole or tensor by tensor as a load streams them (`GpuSink`).
//! - `kernels`: the kernel table (entry points, shader files, pipelines) and the binding keys.
//! - `bind`: what each binding key runs and binds on a decoder's weights (fused kernels chosen).
//! - `decoder`: one sequence: activations, KV cache, recording a pass, reading back.
//! - `grid`: the integer-dot decode kernels' workgroups, timed on the loaded model.
//! - `local`: the sliding-window layers' own steps and RoPE table.
//! - `ops`: the forward pass's operations as dispatches, fused kernels chosen where weights allow.
//!
//! Weights are uploaded once in the planar layout of `quant.rs`. Activations, the KV cache, the attention
//! scratch, the per-row steps and the staging buffers are allocated when the decoder is made; bind
//! groups are made on first use and cached, so a steady-state token allocates nothing. Each pass is one
//! compute pass in one command buffer; greedy decoding keeps its loop on the GPU (each argmax feeds the
//! next pass) and reads ids back in batches, scoring reads the logits.

mod bind;
mod decoder;
mod device;
mod grid;
mod kernels;
mod layout;
mod local;
mod ops;
mod profile;
mod upload;

pub use decoder::{GpuDecoder, GREEDY_BATCH, PREFILL_ROWS, SCORE_BATCH};
pub use device::{Activations, AdapterReport, Gpu, GpuOptions, LimitsReport, ShaderChecks};
pub use grid::Grid;
pub use kernels::MatvecKernel;
pub use layout::GpuMemory;
pub use profile::KernelTime;
pub use upload::{GpuSink, GpuWeights, WeightUpload};
