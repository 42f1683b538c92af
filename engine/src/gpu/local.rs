//! The sliding-window layers' own per-row state (Gemma 2's and 3's local layers): steps whose
//! attended range starts at the window (`Step.lo`), whose slots go round the layers' ring of
//! `layout::local_slots` where they keep one (`Step.span`), and RoPE's table at their base. The
//! KV store, attention and RoPE kernels are the global layers'; only what they are bound to differs
//! (`GpuDecoder::steps_of`, `GpuDecoder::rope_of`). A KV window ring on such models is refused
//! (`KvConfig::validate`), so a main step's slot is its position.

use super::decoder::GpuDecoder;
use crate::config::Config;
use crate::forward::rope_cos_sin;

pub(super) struct Local {
    /// RoPE's frequencies of the local layers (`forward::rope_tables`).
    pub freqs: Vec<f32>,
    pub steps: Vec<u32>,
    pub step_buf: wgpu::Buffer,
    pub table: Vec<f32>,
    pub rope_buf: wgpu::Buffer,
    /// Positions the last row attends on a local layer.
    pub n_att: usize,
    /// The local layers' slots where they keep a ring (`layout::local_slots`).
    pub ring: Option<usize>,
}

impl Local {
    pub fn new(
        c: &Config,
        freqs: Vec<f32>,
        max_rows: usize,
        ring: Option<usize>,
        buf: impl Fn(&str, usize) -> wgpu::Buffer,
    ) -> Option<Local> {
        c.swa?;
        Some(Local {
            freqs,
            steps: Vec::with_capacity(max_rows * 8),
            step_buf: buf("local steps", max_rows * 32),
            table: vec![0.0; max_rows * c.head_size()],
            rope_buf: buf("local rope", max_rows * c.head_size() * 4),
            n_att: 0,
            ring,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.step_buf.size() + self.rope_buf.size()
    }

    /// Row by row as the main steps (`main`, 8 words a row), but attending from the window's start,
    /// in slots round the ring where there is one, and the table at the local frequencies.
    pub fn write(&mut self, c: &Config, main: &[u32], queue: &wgpu::Queue) {
        let window = c.swa.expect("local layers").window;
        let hs = c.head_size();
        self.steps.clear();
        for (i, m) in main.chunks_exact(8).enumerate() {
            let pos = m[0] as usize;
            let lo = (pos + 1).saturating_sub(window);
            self.n_att = pos + 1 - lo;
            let (span, slot) = match self.ring {
                Some(r) => (r as u32, (pos % r) as u32),
                None => (0, m[5]),
            };
            self.steps.extend([
                m[0],
                self.n_att as u32,
                0,
                span,
                m[4],
                slot,
                lo as u32,
                m[7],
            ]);
            for (f, freq) in self.freqs.iter().enumerate() {
                let (co, s) = rope_cos_sin(c, pos, *freq);
                self.table[i * hs + 2 * f] = co;
                self.table[i * hs + 2 * f + 1] = s;
            }
        }
        let rows = main.len() / 8;
        queue.write_buffer(&self.step_buf, 0, bytemuck::cast_slice(&self.steps));
        queue.write_buffer(
            &self.rope_buf,
            0,
            bytemuck::cast_slice(&self.table[..rows * hs]),
        );
    }
}

impl GpuDecoder<'_> {
    /// The steps a layer's attention reads: its own on a local layer.
    pub(super) fn steps_of(&self, local: bool) -> &wgpu::Buffer {
        match &self.local {
            Some(l) if local => &l.step_buf,
            _ => &self.step_buf,
        }
    }

    /// The RoPE table a layer rotates by.
    pub(super) fn rope_of(&self, local: bool) -> &wgpu::Buffer {
        match &self.local {
            Some(l) if local => &l.rope_buf,
            _ => &self.rope_buf,
        }
    }

    /// The local layers' ring of slots, where they keep one.
    pub(super) fn local_ring(&self) -> Option<usize> {
        self.local.as_ref().and_then(|l| l.ring)
    }

    /// Positions the last row attends on `layer` (how many splits decode attention dispatches).
    pub(super) fn n_att_of(&self, layer: usize) -> usize {
        match &self.local {
            Some(l) if self.config.is_local(layer) => l.n_att,
            _ => self.n_att,
        }
    }
}
