//! GPU time per kernel, from timestamps written between the dispatches of one pass (natively, where the
//! adapter has `TIMESTAMP_QUERY_INSIDE_PASSES`; browsers do not offer it). The interval after a
//! dispatch's timestamp is that dispatch plus the barrier before the next, which is what a token
//! waits for. Profiled passes are run apart from timed ones: each mark costs a little.

use super::decoder::{GpuDecoder, Readback};
use crate::Result;
use serde::{Deserialize, Serialize};

/// GPU time of one kernel (and the matrix it multiplies) in one profiled pass: how many times it was
/// dispatched and the microseconds from each dispatch's start to the next one's (`nibble bench
/// --profile`; natively, where the adapter writes timestamps inside passes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelTime {
    pub kernel: String,
    pub dispatches: usize,
    pub us: f64,
}

/// Timestamps a pass can hold: a 7B decode pass dispatches ~490 kernels, a batched prompt pass with
/// split matrices a few more.
const CAPACITY: u32 = 4096;

pub(super) struct Profiler {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    pub staging: wgpu::Buffer,
    /// The label of each dispatch marked in the pass being recorded, in order.
    labels: Vec<String>,
}

impl Profiler {
    pub fn new(device: &wgpu::Device) -> Profiler {
        let bytes = 8 * CAPACITY as u64;
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Profiler {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: CAPACITY,
            }),
            resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            staging: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            labels: Vec::new(),
        }
    }

    /// Starts a pass: the first timestamp, before any dispatch.
    pub fn begin(&mut self, pass: &mut wgpu::ComputePass<'static>) {
        self.labels.clear();
        pass.write_timestamp(&self.set, 0);
    }

    /// Marks the end of the dispatch just recorded. Past the query set's capacity the rest of the
    /// pass goes unmarked (and uncounted).
    pub fn mark(&mut self, pass: &mut wgpu::ComputePass<'static>, label: String) {
        let i = self.labels.len() as u32 + 1;
        if i < CAPACITY {
            pass.write_timestamp(&self.set, i);
            self.labels.push(label);
        }
    }

    /// Copies the pass's timestamps to the staging buffer.
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let n = self.labels.len() as u32 + 1;
        enc.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.staging, 0, 8 * n as u64);
    }

    /// Microseconds per label, in the order each label first ran, from the staging buffer's ticks
    /// (`period` nanoseconds each).
    pub fn times(&self, bytes: &[u8], period: f32) -> Vec<KernelTime> {
        let ticks: &[u64] = bytemuck::cast_slice(&bytes[..8 * (self.labels.len() + 1)]);
        let mut out: Vec<KernelTime> = Vec::new();
        for (i, label) in self.labels.iter().enumerate() {
            // A driver may write timestamps of concurrent work out of order: count such a gap as 0.
            let us = ticks[i + 1].saturating_sub(ticks[i]) as f64 * period as f64 / 1e3;
            match out.iter_mut().find(|k| &k.kernel == label) {
                Some(k) => {
                    k.dispatches += 1;
                    k.us += us;
                }
                None => out.push(KernelTime {
                    kernel: label.clone(),
                    dispatches: 1,
                    us,
                }),
            }
        }
        out
    }
}

impl GpuDecoder<'_> {
    /// One pass over `tokens` at `pos0` (as many as a pass takes) with a timestamp after each
    /// dispatch; a single token runs as a decode step with its argmax.
    pub(super) async fn profile_pass(
        &mut self,
        tokens: &[u32],
        pos0: usize,
    ) -> Result<Option<Vec<KernelTime>>> {
        if !self.gpu.timestamps || tokens.is_empty() {
            return Ok(None);
        }
        if self.profiler.is_none() {
            self.profiler = Some(Profiler::new(&self.gpu.device));
        }
        let n = self.batch_len(pos0, tokens.len());
        let out = if n == 1 {
            Readback::Argmax(0)
        } else {
            Readback::Nothing
        };
        self.profiling = true;
        let ran = self.run(&tokens[..n], pos0, out, false);
        self.profiling = false;
        ran?;
        let p = self.profiler.as_ref().expect("made above");
        let bytes = self.read(&p.staging).await?;
        Ok(Some(p.times(&bytes, self.gpu.queue.get_timestamp_period())))
    }
}
