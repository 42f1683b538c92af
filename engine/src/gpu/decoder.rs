//! One sequence on the GPU: activations, KV cache, per-row steps; records the forward pass through the
//! kernel table and reads back what the caller asks for.

use super::device::{pop_error_scope, Gpu};
use super::kernels::{max_splits, BindKey, Pipelines};
use super::layout::{buffer, kv_layer_bytes, local_slots, GpuMatrix, GpuMemory};
use super::profile::{KernelTime, Profiler};
use super::upload::GpuWeights;
use crate::arch::forward;
use crate::forward::{rope_cos_sin, rope_tables, Act};
use crate::kv::{KvConfig, KvType};
use crate::model::{Config, Model, TensorId};
use crate::{Decoder, Error, Result};
use std::collections::HashMap;
use std::rc::Rc;

/// What a submission copies back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readback {
    Nothing,
    /// The argmax id, into slot `i` of the id staging buffer (read once for a batch of passes).
    Argmax(usize),
    Logits,
    /// Every row's logits, into the score staging buffer at byte `at` (read once for several passes).
    Scores(usize),
}

/// Greedy tokens one readback carries at most in [`Decoder::decode_greedy`]: the GPU-resident loop
/// queues this many passes before the CPU waits.
pub const GREEDY_BATCH: usize = 64;

/// Rows of logits one readback carries at least in [`Decoder::score`] (more where a prompt pass
/// holds more): passes are queued until then before the CPU waits (a browser answers each readback
/// late).
pub const SCORE_BATCH: usize = 32;

/// One sequence on the GPU: uploaded weights, activations, KV cache, pipelines and cached bind groups.
pub struct GpuDecoder<'g> {
    pub(super) gpu: &'g Gpu,
    pub(super) config: Config,
    pub(super) kv: KvConfig,
    /// RoPE's frequency per pair of a head on the global layers (`forward::rope_freqs`).
    pub(super) rope_freqs: Vec<f32>,
    /// The sliding-window layers' steps and RoPE table, where the model has such layers.
    pub(super) local: Option<super::local::Local>,
    pub(super) w: Rc<GpuWeights>,
    pub(super) acts: Vec<wgpu::Buffer>,
    pub(super) kcache: Vec<wgpu::Buffer>,
    pub(super) vcache: Vec<wgpu::Buffer>,
    pub(super) att: wgpu::Buffer,
    /// Per head and context split: the decode attention's partial maximum, sum and values.
    pub(super) parts: wgpu::Buffer,
    /// A prompt pass's x quantized for the integer GEMMs (`quant_x8` in matmul_int8.wgsl), and
    /// what it holds now: (input, row length, q4_0's order), until a dispatch may change the input.
    pub(super) xq: wgpu::Buffer,
    pub(super) xq_of: Option<(Act, usize, bool)>,
    /// Positions the last row of the pass attends (how many splits decode attention dispatches).
    pub(super) n_att: usize,
    pub(super) cap: usize,
    /// The largest batch one pass takes (activation rows), and the rows of the pass being recorded.
    pub(super) max_rows: usize,
    pub(super) rows: usize,
    /// Positions fed since the last reset (what the ring holds follows from them).
    pub(super) held: usize,
    /// One `Step` (8 words) per row, as step.wgsl declares it.
    pub(super) step_buf: wgpu::Buffer,
    pub(super) steps: Vec<u32>,
    pub(super) rope_buf: wgpu::Buffer,
    pub(super) argmax_buf: wgpu::Buffer,
    pub(super) staging_logits: wgpu::Buffer,
    /// Bytes before the logits in `staging_logits`: copies start on a 4-byte boundary, and a row of
    /// f16 logits over an odd vocabulary may not.
    pub(super) logits_shift: usize,
    /// `GREEDY_BATCH` argmax ids, copied here pass by pass and mapped once per batch.
    pub(super) staging_id: wgpu::Buffer,
    /// Rows of logits of several passes, copied pass by pass and mapped once (`score_capacity`).
    pub(super) staging_scores: wgpu::Buffer,
    /// Whether the pass being recorded takes its token from the previous pass's argmax (every
    /// embedding chunk is then dispatched, each keeping the rows whose token it holds).
    pub(super) chained: bool,
    /// Whether every row's logits are read (`Readback::Scores`); otherwise only the last row's are,
    /// and a prompt pass's classifier covers that row alone (`GpuDecoder::classify_last_row`).
    pub(super) all_logits: bool,
    pub(super) pipes: Rc<Pipelines>,
    pub(super) binds: HashMap<BindKey, wgpu::BindGroup>,
    pub(super) pass: Option<wgpu::ComputePass<'static>>,
    pub(super) logits: Vec<f32>,
    pub(super) memory: GpuMemory,
    /// Seconds the last `run` spent on the CPU recording and submitting.
    pub(super) encode_s: f64,
    /// Dispatches recorded in the last pass, and their workgroups.
    pub(super) dispatches: usize,
    pub(super) workgroups: u64,
    /// Seconds spent creating the compute pipelines (shader compilation) in `new`.
    pub(super) compile_s: f64,
    /// cos/sin per RoPE frequency for each row's position, reused every pass, then the decode row's
    /// KV slot (`slot_at`; `rope_buf` is laid out alike).
    pub(super) rope_table: Vec<f32>,
    /// Timestamps of the pass being recorded, while [`Decoder::profile`] runs one.
    pub(super) profiler: Option<Profiler>,
    pub(super) profiling: bool,
    /// Whether this pass's Q/K/V kernel applied RoPE, which `rope_qk` then leaves alone.
    pub(super) roped: bool,
    /// Whether this pass's Q/K/V kernel stored K and V in the cache, which `kv_store` then leaves
    /// alone ([`GpuOptions::kv_direct`](super::GpuOptions::kv_direct)).
    pub(super) kv_stored: bool,
    /// An RMSNorm not yet dispatched (output, input, weights), for the next kernel to fold in
    /// ([`GpuOptions::fold_norm`](super::GpuOptions::fold_norm)).
    pub(super) pending_norm: Option<(Act, Act, TensorId)>,
    /// The integer-dot decode kernels' workgroups ([`GpuDecoder::tune_grid`]).
    pub(super) grid: super::Grid,
}

impl<'g> GpuDecoder<'g> {
    /// Uploads `model` and prepares a KV cache for `kv`. Refuses before uploading anything when a tensor
    /// is larger than the adapter's storage binding limit.
    pub fn new(gpu: &'g Gpu, model: &Model, kv: KvConfig) -> Result<Self> {
        Self::check(&model.config, &kv)?;
        Self::with_weights(gpu, GpuWeights::upload(gpu, model)?, kv)
    }

    /// Whether the GPU kernels can run this shape with this KV configuration.
    pub fn check(c: &Config, kv: &KvConfig) -> Result<()> {
        kv.validate(c)?;
        if !c.head_size().is_multiple_of(4) || c.head_size() > 256 {
            return Err(Error::Gpu(format!(
                "head size {} is not supported by the attention kernel (a multiple of 4, at most 256)",
                c.head_size()
            )));
        }
        Ok(())
    }

    /// A decoder on weights already uploaded, with its own KV cache and activations.
    pub fn with_weights(gpu: &'g Gpu, w: Rc<GpuWeights>, kv: KvConfig) -> Result<Self> {
        let c = w.config.clone();
        Self::check(&c, &kv)?;
        let dev = &gpu.device;
        let oom_scope = dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut memory = GpuMemory {
            weights: w.by_class.values().sum(),
            weights_by_class: w.by_class.clone(),
            ..GpuMemory::default()
        };
        let storage = wgpu::BufferUsages::STORAGE;
        let buf = |label: &str, size: u64, usage| buffer(dev, label, size, usage);
        let cap = kv.capacity(&c);
        let max_rows = batch_rows(gpu, &c, cap);
        let acts = act_buffers(gpu, &c, max_rows);
        // Local layers keep a ring of their window where that is fewer slots than the context.
        let ring = local_slots(&kv, &c, max_rows);
        let bytes = |l: usize| kv_layer_bytes(&kv, &c, ring.filter(|_| c.is_local(l)));
        let caches = |tag: &str, which: fn((u64, u64)) -> u64| -> Vec<_> {
            let layer = |l| buf(&format!("{tag}{l}"), which(bytes(l)), storage);
            (0..c.n_layers).map(layer).collect()
        };
        let (kcache, vcache) = (caches("k", |b| b.0), caches("v", |b| b.1));
        let att = buf("att", (max_rows * c.n_heads * cap * 4) as u64, storage);
        let parts_len = c.n_heads * max_splits(cap) * (c.head_size() + 2);
        let parts = buf("attention splits", (parts_len * 4) as u64, storage);
        let xq = buf("x quantized", xq_bytes(gpu, &w, max_rows), storage);
        let written = |l: &str, n: usize| buf(l, n as u64, storage | wgpu::BufferUsages::COPY_DST);
        let step_buf = written("steps", max_rows * 32);
        let rope_buf = written("rope", (max_rows * c.head_size() + 1) * 4);
        let argmax_buf = buf("argmax", 4, storage | wgpu::BufferUsages::COPY_SRC);
        let read = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = |label: &str, size: usize| buf(label, size as u64, read);
        // Logits rows may start 2 bytes into a word (f16, odd vocabulary): room for the shift.
        let staging_logits = staging("staging logits", c.vocab_size * gpu.activations.bytes() + 2);
        let staging_id = staging("staging ids", 4 * GREEDY_BATCH);
        let staging_scores = staging("staging scores", score_capacity(&c, gpu, max_rows));
        memory.kv_cache = kcache.iter().chain(&vcache).map(|b| b.size()).sum();
        let scratch = [&att, &parts, &xq, &step_buf, &rope_buf, &argmax_buf];
        memory.activations = acts.iter().chain(scratch).map(|b| b.size()).sum::<u64>();
        memory.staging = staging_logits.size() + staging_id.size() + staging_scores.size();
        memory.total = memory.weights + memory.kv_cache + memory.activations + memory.staging;
        out_of_memory(oom_scope, &w.name, memory.total)?;
        gpu.check_errors()?;
        let t0 = web_time::Instant::now();
        let pipes = gpu.pipelines();
        let [rope_freqs, local_freqs] = rope_tables(&c, w.rope_divisors.as_deref());
        let local = super::local::Local::new(&c, local_freqs, max_rows, ring, |l, n| written(l, n));
        memory.activations += local.as_ref().map_or(0, |l| l.bytes());
        Ok(GpuDecoder {
            compile_s: t0.elapsed().as_secs_f64(),
            gpu,
            rope_freqs,
            local,
            kv,
            w,
            acts,
            kcache,
            vcache,
            att,
            parts,
            xq,
            xq_of: None,
            n_att: 0,
            cap,
            max_rows,
            rows: 1,
            held: 0,
            step_buf,
            steps: Vec::with_capacity(max_rows * 8),
            rope_buf,
            argmax_buf,
            staging_logits,
            logits_shift: 0,
            staging_id,
            staging_scores,
            chained: false,
            all_logits: false,
            dispatches: 0,
            workgroups: 0,
            pipes,
            binds: HashMap::new(),
            pass: None,
            logits: vec![0.0; c.vocab_size],
            memory,
            encode_s: 0.0,
            rope_table: vec![0.0; max_rows * c.head_size() + 1],
            profiler: None,
            profiling: false,
            roped: false,
            kv_stored: false,
            pending_norm: None,
            grid: super::Grid::of(gpu),
            config: c,
        })
    }

    pub fn memory(&self) -> &GpuMemory {
        &self.memory
    }

    /// How many storage bindings a weight matrix was split into.
    pub fn bindings(&self, id: TensorId) -> usize {
        self.w.mats.get(&id).map_or(0, |m| m.chunks.len())
    }

    /// Workgroups the last pass dispatched (what the grids add up to; tests check them).
    pub fn workgroups(&self) -> u64 {
        self.workgroups
    }

    pub(super) fn act(&self, a: Act) -> &wgpu::Buffer {
        &self.acts[a as usize]
    }

    pub(super) fn dispatch(&mut self, key: BindKey, groups: (u32, u32)) {
        self.flush_norm();
        // Only the GEMMs of other outputs leave xq's input as it was quantized.
        match key {
            BindKey::QuantX(..) => {}
            BindKey::Matmul(_, _, out, ..) if self.xq_of.is_some_and(|(x, ..)| x != out) => {}
            _ => self.xq_of = None,
        }
        self.ensure(key);
        self.dispatches += 1;
        self.workgroups += groups.0 as u64 * groups.1 as u64;
        let kernel = self.kernel_of(key);
        let pipe = self.pipes.get(kernel);
        let pass = self.pass.as_mut().expect("dispatch outside a token's pass");
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, &self.binds[&key], &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
        if let Some(p) = self.profiler.as_mut().filter(|_| self.profiling) {
            p.mark(pass, key.label(kernel));
        }
    }

    /// Rows the pass starting at `pos0` may take, of `left` tokens still to run. Rows of one pass are
    /// all stored before any attends, so a pass must not reuse a ring slot (with a window, batches stop
    /// where the ring would wrap, and go token by token after it) and may complete at most one kivi4
    /// key group, at its last row (the flush runs after the stores).
    pub(super) fn batch_len(&self, pos0: usize, left: usize) -> usize {
        let mut n = left.min(self.max_rows);
        let kv = &self.kv;
        if let Some(w) = kv.window {
            n = n.min(w.saturating_sub(pos0).max(1));
        }
        if kv.k == KvType::Kivi4 {
            // The first position at or after pos0 that completes a group.
            let first = pos0.max(kv.sinks);
            let done = first + (kv.group - 1 - (first - kv.sinks) % kv.group);
            n = n.min(done + 1 - pos0);
        }
        n.max(1)
    }

    /// Writes each row's step and RoPE table, records the forward pass over `tokens` at `pos0..`, and
    /// submits it with a copy of what `out` asks for (for the last row) into its staging buffer.
    /// `chained`: a single row whose token is the previous pass's argmax, copied on the GPU.
    pub(super) fn run(
        &mut self,
        tokens: &[u32],
        pos0: usize,
        out: Readback,
        chained: bool,
    ) -> Result<()> {
        let start = web_time::Instant::now();
        let c = &self.config;
        let n = tokens.len();
        debug_assert!(n >= 1 && n <= self.max_rows && (!chained || n == 1));
        if let Some(&t) = tokens
            .iter()
            .find(|&&t| !chained && t as usize >= c.vocab_size)
        {
            return Err(Error::Invalid(format!(
                "token {t} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let last = pos0 + n - 1;
        self.kv.check_position(c, last)?;
        // A sequence starts again at position 0, whatever it held before.
        self.held = if pos0 == 0 {
            n
        } else {
            self.held.max(last + 1)
        };
        self.write_steps(tokens, pos0);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.chained = chained;
        if chained {
            // The token field of row 0's step (word 4), after this pass's step write lands.
            enc.copy_buffer_to_buffer(&self.argmax_buf, 0, &self.step_buf, 16, 4);
        }
        self.pass = Some(
            enc.begin_compute_pass(&Default::default())
                .forget_lifetime(),
        );
        if let Some(p) = self.profiler.as_mut().filter(|_| self.profiling) {
            p.begin(self.pass.as_mut().expect("pass begun"));
        }
        self.rows = n;
        self.all_logits = matches!(out, Readback::Scores(_));
        self.dispatches = 0;
        self.workgroups = 0;
        self.xq_of = None;
        let cfg = self.config.clone();
        forward(self, &cfg, tokens, pos0);
        self.flush_norm();
        if let Readback::Argmax(_) = out {
            self.dispatch(BindKey::Argmax, (1, 1));
        }
        drop(self.pass.take());
        if let Some(p) = self.profiler.as_ref().filter(|_| self.profiling) {
            p.resolve(&mut enc);
        }
        match out {
            Readback::Argmax(i) => {
                enc.copy_buffer_to_buffer(&self.argmax_buf, 0, &self.staging_id, 4 * i as u64, 4)
            }
            Readback::Logits => {
                // Copies move whole words: from the word holding the last row's first logit.
                let row = cfg.vocab_size * self.gpu.activations.bytes();
                let from = (n - 1) * row;
                let shift = from % 4;
                let size = (row + shift).div_ceil(4) * 4;
                self.logits_shift = shift;
                let (src, to) = (self.act(Act::Logits), &self.staging_logits);
                enc.copy_buffer_to_buffer(src, (from - shift) as u64, to, 0, size as u64);
            }
            Readback::Scores(at) => {
                let size = (n * cfg.vocab_size * self.gpu.activations.bytes()).div_ceil(4) * 4;
                let (src, to) = (self.act(Act::Logits), &self.staging_scores);
                enc.copy_buffer_to_buffer(src, 0, to, at as u64, size as u64);
            }
            Readback::Nothing => {}
        }
        self.gpu.queue.submit([enc.finish()]);
        self.encode_s = start.elapsed().as_secs_f64();
        Ok(())
    }

    /// Writes each row's step and RoPE table for `tokens` at `pos0..` (they land before the next
    /// submission's commands).
    fn write_steps(&mut self, tokens: &[u32], pos0: usize) {
        let c = &self.config;
        let n = tokens.len();
        let (sinks, span) = match self.kv.window {
            Some(w) => (self.kv.sinks, w - self.kv.sinks),
            None => (0, 0),
        };
        let hs = c.head_size();
        self.steps.clear();
        for (i, &token) in tokens.iter().enumerate() {
            let pos = pos0 + i;
            // The attended positions are sinks 0..n_sinks then lo..=pos (kv.rs), computed without a list.
            let (n_sinks, lo) = self.kv.attended_ranges(pos);
            self.n_att = n_sinks + pos + 1 - lo;
            self.steps.extend([
                pos as u32,
                self.n_att as u32,
                sinks as u32,
                span as u32,
                token,
                self.kv.slot(pos) as u32,
                lo as u32,
                n as u32,
            ]);
            // cos/sin per frequency, computed exactly as the CPU oracle computes them.
            for (f, freq) in self.rope_freqs.iter().enumerate() {
                let (co, s) = rope_cos_sin(c, pos, *freq);
                self.rope_table[i * hs + 2 * f] = co;
                self.rope_table[i * hs + 2 * f + 1] = s;
            }
        }
        let q = &self.gpu.queue;
        q.write_buffer(&self.step_buf, 0, bytemuck::cast_slice(&self.steps));
        q.write_buffer(
            &self.rope_buf,
            0,
            bytemuck::cast_slice(&self.rope_table[..n * hs]),
        );
        if let Some(l) = &mut self.local {
            l.write(c, &self.steps, q);
        }
        if self.gpu.kv_direct {
            // The last row's slot, where a decode step's Q/K/V kernel stores K and V.
            let slot = (self.kv.slot(pos0 + n - 1) as u32).to_le_bytes();
            q.write_buffer(&self.rope_buf, 4 * self.slot_at() as u64, &slot);
        }
    }

    /// The RoPE table's entry holding the decode row's KV slot, after every row's cos/sin.
    pub(super) fn slot_at(&self) -> usize {
        self.max_rows * self.config.head_size()
    }

    /// Runs a prompt in as few passes as [`Self::batch_len`] allows; the last pass reads back `out`.
    fn run_prompt(&mut self, tokens: &[u32], pos0: usize, out: Readback) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        let mut done = 0;
        while done < tokens.len() {
            let n = self.batch_len(pos0 + done, tokens.len() - done);
            let last = done + n == tokens.len();
            let rb = if last { out } else { Readback::Nothing };
            self.run(&tokens[done..done + n], pos0 + done, rb, false)?;
            done += n;
        }
        Ok(())
    }

    /// Reads the logits the last submission copied out, as f32.
    async fn read_logits(&mut self) -> Result<&[f32]> {
        let bytes = self.read(&self.staging_logits).await?;
        let mut logits = std::mem::take(&mut self.logits);
        logits.clear();
        let bytes = &bytes[self.logits_shift..];
        self.gpu
            .activations
            .extend_f32(bytes, self.config.vocab_size, &mut logits);
        self.logits = logits;
        Ok(&self.logits)
    }

    /// Forced decoding as a prompt runs: passes of up to `max_rows` positions (batched kernels, as
    /// llama.cpp's perplexity scores), every row's logits copied into the score staging buffer, which
    /// is read once it is full.
    async fn score_rows(&mut self, tokens: &[u32], pos0: usize) -> Result<Vec<f32>> {
        let v = self.config.vocab_size;
        let row = v * self.gpu.activations.bytes();
        let cap = self.staging_scores.size() as usize;
        let mut out = Vec::with_capacity(tokens.len() * v);
        // (byte offset, rows) of each pass waiting in the staging buffer.
        let mut queued: Vec<(usize, usize)> = Vec::new();
        let (mut at, mut done) = (0, 0);
        while done < tokens.len() {
            let n = self.batch_len(pos0 + done, tokens.len() - done);
            let size = (n * row).div_ceil(4) * 4;
            if at + size > cap {
                self.read_scores(&queued, &mut out).await?;
                (queued, at) = (Vec::new(), 0);
            }
            self.run(
                &tokens[done..done + n],
                pos0 + done,
                Readback::Scores(at),
                false,
            )?;
            queued.push((at, n));
            (at, done) = (at + size, done + n);
        }
        self.read_scores(&queued, &mut out).await?;
        Ok(out)
    }

    async fn read_scores(&self, queued: &[(usize, usize)], out: &mut Vec<f32>) -> Result<()> {
        let bytes = self.read(&self.staging_scores).await?;
        for &(at, n) in queued {
            let v = n * self.config.vocab_size;
            self.gpu.activations.extend_f32(&bytes[at..], v, out);
        }
        Ok(())
    }

    async fn read_id(&self) -> Result<u32> {
        Ok(self.read_ids(1).await?[0])
    }

    /// The first `n` ids of the id staging buffer.
    async fn read_ids(&self, n: usize) -> Result<Vec<u32>> {
        let bytes = self.read(&self.staging_id).await?;
        Ok(bytemuck::cast_slice::<u8, u32>(&bytes[..4 * n]).to_vec())
    }

    /// Greedy decoding kept on the GPU: each pass's argmax is copied into the next pass's step, so
    /// up to [`GREEDY_BATCH`] passes are queued without the CPU waiting, and their ids come back in
    /// one readback.
    async fn greedy(&mut self, token: u32, pos: usize, n: usize) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(n);
        let mut encode = 0.0;
        while ids.len() < n {
            let k = (n - ids.len()).min(GREEDY_BATCH);
            for i in 0..k {
                let p = pos + ids.len() + i;
                let first = ids.is_empty() && i == 0;
                self.run(&[token], p, Readback::Argmax(i), !first)?;
                encode += self.encode_s;
            }
            ids.extend(self.read_ids(k).await?);
        }
        self.encode_s = encode / n.max(1) as f64;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::Gpu(format!(
                "the GPU's argmax answered {bad}, outside the vocabulary (non-finite logits?)"
            )));
        }
        Ok(ids)
    }

    /// Maps `staging` and copies it out. Natively the wait happens here (the map callback fires inside
    /// the poll); in a browser the future resolves from the event loop.
    pub(super) async fn read(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        let (tx, mut rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        let mapped = {
            self.gpu.wait()?;
            rx.try_recv().ok().flatten()
        };
        #[cfg(target_arch = "wasm32")]
        let mapped = (&mut rx).await.ok();
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                // A failed map usually means the device is gone: its lost reason, where it has
                // arrived, says more than the map error.
                self.gpu.check_errors()?;
                return Err(Error::Gpu(format!("reading results back: {e}")));
            }
            None => {
                return Err(Error::Gpu(
                    "the GPU did not return results (hung or lost)".into(),
                ))
            }
        }
        self.gpu.check_errors()?;
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("mapping results: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}

/// Rows of a batched prompt pass at most, and by default (fewer where a binding limit says so): as
/// llama.cpp's ubatch. On an H200, 1B q4_0 pp512 ran at 2153 tokens/s in passes of 64 rows, 4166 in
/// 256 and 4662 in 512 (`benchmarks/2026-12-03-h200-checks.md`): a pass of 64 rows gives a matrix of
/// 2048 rows only 64 workgroups.
pub const PREFILL_ROWS: usize = 512;

impl Decoder for GpuDecoder<'_> {
    fn config(&self) -> &Config {
        &self.config
    }

    fn step(&mut self, token: u32, pos: usize) -> crate::Fut<'_, &[f32]> {
        Box::pin(async move {
            self.run(&[token], pos, Readback::Logits, false)?;
            self.read_logits().await
        })
    }

    fn step_argmax(&mut self, token: u32, pos: usize) -> crate::Fut<'_, u32> {
        Box::pin(async move {
            self.run(&[token], pos, Readback::Argmax(0), false)?;
            self.read_id().await
        })
    }

    fn decode_greedy(&mut self, token: u32, pos: usize, n: usize) -> crate::Fut<'_, Vec<u32>> {
        Box::pin(self.greedy(token, pos, n))
    }

    fn score<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> crate::Fut<'a, Vec<f32>> {
        Box::pin(self.score_rows(tokens, pos0))
    }

    fn decode_method(&self) -> String {
        let grid = self
            .grid
            .note
            .as_deref()
            .map_or(String::new(), |n| format!("; {n}"));
        format!(
            "GPU-resident greedy loop: each pass's argmax feeds the next pass's embedding on the GPU, \
             ids read back every {GREEDY_BATCH} tokens{grid}"
        )
    }

    fn tune(&mut self) -> crate::Fut<'_, Option<crate::tuning::Tuning>> {
        Box::pin(async move { Ok(self.tune_grid().await?.map(|g| g.tuning())) })
    }

    fn feed(&mut self, token: u32, pos: usize) -> crate::Fut<'_, ()> {
        Box::pin(std::future::ready(self.run(
            &[token],
            pos,
            Readback::Nothing,
            false,
        )))
    }

    fn prefill<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> crate::Fut<'a, &'a [f32]> {
        Box::pin(async move {
            self.run_prompt(tokens, pos0, Readback::Logits)?;
            self.read_logits().await
        })
    }

    fn prefill_argmax<'a>(&'a mut self, tokens: &'a [u32], pos0: usize) -> crate::Fut<'a, u32> {
        Box::pin(async move {
            self.run_prompt(tokens, pos0, Readback::Argmax(0))?;
            self.read_id().await
        })
    }

    fn prefill_method(&self) -> String {
        if self.max_rows == 1 {
            return "token by token, one submission per token, no readback until the last".into();
        }
        format!(
            "batched: up to {} tokens per pass (tiled matrix-matrix kernel, causal batched attention), \
             one submission per pass",
            self.max_rows
        )
    }

    fn gpu_memory(&self) -> Option<GpuMemory> {
        Some(self.memory.clone())
    }

    fn encode_ms(&self) -> Option<f64> {
        Some(self.encode_s * 1e3)
    }

    fn compile_ms(&self) -> Option<f64> {
        Some(self.compile_s * 1e3)
    }

    fn profile<'a>(
        &'a mut self,
        tokens: &'a [u32],
        pos0: usize,
    ) -> crate::Fut<'a, Option<Vec<KernelTime>>> {
        Box::pin(self.profile_pass(tokens, pos0))
    }

    fn dispatches(&self) -> Option<usize> {
        Some(self.dispatches)
    }

    fn backend(&self) -> String {
        format!(
            "gpu ({}, {}, {} activations)",
            self.gpu.report.name,
            self.gpu.report.backend,
            self.gpu.activations.name()
        )
    }

    fn reset(&mut self) {
        self.held = 0;
    }

    /// Not where local layers keep a ring: a position run again would find its window's slots
    /// taken by later positions.
    fn rewinds(&self) -> bool {
        self.kv.rewinds() && self.local_ring().is_none()
    }

    /// The bytes of the positions the cache holds now, in the KV format (as the CPU counts them; a
    /// local layer's ring at most its slots): the allocation is `gpu_memory().kv_cache`, made
    /// whole up front.
    fn kv_bytes(&self) -> usize {
        let c = &self.config;
        let Some(slots) = self.local_ring() else {
            return self.kv.bytes_after(c, self.held);
        };
        let layer = |n| self.kv.bytes_after(c, n) / c.n_layers;
        let local = (0..c.n_layers).filter(|&l| c.is_local(l)).count();
        (c.n_layers - local) * layer(self.held) + local * layer(self.held.min(slots))
    }

    fn context_limit(&self) -> usize {
        self.kv.context_limit(&self.config)
    }
}

/// Bytes of the score staging buffer: a whole pass of logits or `SCORE_BATCH` rows, whichever is
/// more, and each pass's rounding up to a whole word.
fn score_capacity(c: &Config, gpu: &Gpu, max_rows: usize) -> usize {
    let rows = max_rows.max(SCORE_BATCH);
    rows * c.vocab_size * gpu.activations.bytes() + 4 * rows
}

/// Rows of a batched prompt pass: the device's `prefill_rows`, fewer where the attention scratch or
/// the logits of a whole batch would not fit one binding.
fn batch_rows(gpu: &Gpu, c: &Config, cap: usize) -> usize {
    let per_row = (c.n_heads * cap * 4)
        .max(c.vocab_size * gpu.activations.bytes())
        .max(1) as u64;
    (gpu.max_binding / per_row).clamp(1, gpu.prefill_rows as u64) as usize
}

/// The out-of-memory error a decoder's allocations raised under `scope`, naming the model.
fn out_of_memory(scope: wgpu::ErrorScopeGuard, model: &str, planned: u64) -> Result<()> {
    match pop_error_scope(scope) {
        Some(e) => Err(Error::Gpu(format!(
            "out of GPU memory preparing a decoder for {model} ({planned} bytes planned): {e}"
        ))),
        None => Ok(()),
    }
}

/// Bytes of `xq` (matmul_int8.wgsl's layout): a byte per value and 8 bytes a block of 32, for
/// passes of `max_rows` rows of the widest matrix a prompt multiplies in integers; a word where none.
fn xq_bytes(gpu: &Gpu, w: &GpuWeights, max_rows: usize) -> u64 {
    let kernel = gpu.matvec_kernel();
    let int8 = |m: &&GpuMatrix| {
        let k = kernel.for_matmul(m.cols, m.ty, m.block, gpu.half_math);
        k.reads_xq()
    };
    let cols = w.mats.values().filter(int8).map(|m| m.cols).max();
    match cols {
        Some(cols) if max_rows > 1 => (max_rows * cols * 5 / 4) as u64,
        _ => 4,
    }
}

/// One buffer per activation role, `max_rows` rows each.
fn act_buffers(gpu: &Gpu, c: &Config, max_rows: usize) -> Vec<wgpu::Buffer> {
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    Act::ALL
        .iter()
        .map(|a| {
            let bytes = (max_rows * a.len(c) * gpu.activations.bytes()) as u64;
            buffer(&gpu.device, &format!("{a:?}"), bytes, usage)
        })
        .collect()
}
