//! The forward pass's operations on the GPU ([`Kernels`] for [`GpuDecoder`]): each records its
//! dispatches into the pass being built, choosing the fused kernels where the weights allow.

use super::decoder::GpuDecoder;
use super::device::Activations;
use super::kernels::{fold, BindKey, Kernel, ATTN_SPLIT, ATTN_STAGED_ROWS};
use crate::dtype::WType;
use crate::forward::{Act, Glu, Kernels};
use crate::kv::KvType;
use crate::model::TensorId;

/// The fewest workgroups, at most `cap`, over which `groups` row groups take as many turns of the
/// loop as on `cap` workgroups: a dispatch lasts as long as its longest workgroup, so on `cap`
/// those a turn short shorten nothing, and stage x all the same (512 groups on a cap of 387: 256
/// workgroups, two turns each). On an H200, 7B q4_0 decode 2.306-2.325 -> 2.276-2.277 ms/token,
/// each grid tuned (`benchmarks/2026-12-04-h200-dispatch-costs.md`).
pub(super) fn balanced(groups: usize, cap: usize) -> usize {
    let turns = groups.div_ceil(cap.max(1));
    groups.div_ceil(turns.max(1))
}

/// Workgroups a prompt product's grid of 128 x 128 tiles must have for `matmul_h128` to take it
/// from `matmul_h` (128 x 64): about two a multiprocessor on an H100 or H200 (132). 7B f16 pp512:
/// 344 workgroups (ffn_gate, ffn_up) 1541 -> 1404 us a dispatch on an H200; 128 (the 4096-row
/// matrices) 7% slower on an H100 (`benchmarks/2026-12-06-h200-tall.md`); between those, not
/// measured.
const TALL_MIN_GROUPS: usize = 256;

/// Whether `rows` weight rows by `tokens` make a grid of 128 x 128 tiles big enough for
/// `matmul_h128` ([`TALL_MIN_GROUPS`]).
fn tall_grid(rows: usize, tokens: usize) -> bool {
    tokens > 64 && rows.div_ceil(128) * tokens.div_ceil(128) >= TALL_MIN_GROUPS
}

impl GpuDecoder<'_> {
    /// Whether a prompt product of `rows` weight rows takes 128-token tiles where its kernel is
    /// `matmul_h`: passes of more than 64 tokens, by the grid's size ([`TALL_MIN_GROUPS`]) unless
    /// `GpuOptions::tall_tiles` says.
    pub(super) fn tall_tiles(&self, rows: usize) -> bool {
        self.rows > 64
            && self
                .gpu
                .tall_tiles
                .unwrap_or_else(|| tall_grid(rows, self.rows))
    }

    fn matvec_into(&mut self, out: Act, w: TensorId, x: Act, accumulate: bool) {
        if self.rows > 1 && !accumulate && self.classify_last_row(out, w, x) {
            return;
        }
        if self.rows > 1 {
            // A batch: the tiled kernels cover 64 tokens by 64 weight rows a workgroup (`matmul_h`
            // 128 rows; `matmul_h128` 128 by 128).
            self.quantize_x(w, x);
            for ci in 0..self.w.mats[&w].chunks.len() {
                let rows = self.w.mats[&w].chunks[ci].rows;
                let tall = self.tall_tiles(rows);
                let kernel = self.kernel_of(BindKey::Matmul(w, ci, out, x, accumulate, tall));
                // Only matmul_h has a tall form: other kernels keep one key.
                let tall = tall && kernel == Kernel::MatmulH128;
                let key = BindKey::Matmul(w, ci, out, x, accumulate, tall);
                let tiles = self.rows.div_ceil(kernel.tokens_per_group()) as u32;
                self.dispatch(key, (rows.div_ceil(kernel.rows_per_group()) as u32, tiles));
            }
            return;
        }
        for ci in 0..self.w.mats[&w].chunks.len() {
            let rows = self.w.mats[&w].chunks[ci].rows;
            let key = BindKey::Matvec(w, ci, out, x, accumulate);
            let groups = self.row_grid(key, rows);
            self.dispatch(key, groups);
        }
    }

    /// Quantizes a prompt pass's x for the integer GEMMs (`quant_x8`) unless xq holds it so already
    /// (Q, K and V, or gate and up, share one).
    fn quantize_x(&mut self, w: TensorId, x: Act) {
        let kernel = self.kernel_of(BindKey::Matmul(w, 0, x, x, false, false));
        if !kernel.reads_xq() {
            return;
        }
        let (cols, ty) = (self.w.mats[&w].cols, self.w.mats[&w].ty);
        let want = (x, cols, ty == WType::Q4_0);
        // A held RMSNorm writes x.
        self.flush_norm();
        if self.xq_of == Some(want) {
            return;
        }
        let blocks = self.rows * cols / 32;
        self.dispatch(BindKey::QuantX(x, cols, want.2), fold(blocks.div_ceil(64)));
        self.xq_of = Some(want);
    }

    /// The grid covering `rows` rows of `key`'s kernel: a workgroup per group of rows, or at most
    /// the decoder's grid cap for the kernels that loop over groups (`GpuDecoder::tune_grid`),
    /// balanced.
    fn row_grid(&mut self, key: BindKey, rows: usize) -> (u32, u32) {
        let kernel = self.kernel_of(key);
        let groups = rows.div_ceil(kernel.rows_per_group());
        if !kernel.loops_groups() {
            return fold(groups);
        }
        self.grid.sizes.insert(groups);
        fold(
            self.grid
                .cap
                .map_or(groups, |cap| balanced(groups, cap as usize)),
        )
    }

    /// A prompt pass's classifier over its last row alone where no other row's logits are read (as
    /// llama.cpp computes a prompt's logits): the decode product on that row, its x bound at the
    /// row's offset, where the offset meets the adapter's storage alignment (a 4096-wide f16 row
    /// does; rows of 64 f16 values may not, and then every row is computed). False if not taken.
    fn classify_last_row(&mut self, out: Act, w: TensorId, x: Act) -> bool {
        if w != TensorId::Output || self.all_logits {
            return false;
        }
        let cols = self.w.mats[&w].cols;
        let offset = (self.rows - 1) * cols * self.gpu.activations.bytes();
        let align = self.gpu.device.limits().min_storage_buffer_offset_alignment as usize;
        if !offset.is_multiple_of(align) {
            return false;
        }
        for ci in 0..self.w.mats[&w].chunks.len() {
            let rows = self.w.mats[&w].chunks[ci].rows;
            let key = BindKey::LastRow(w, ci, out, x, self.rows);
            let groups = self.row_grid(key, rows);
            self.dispatch(key, groups);
        }
        true
    }

    /// The key `make` gives, with the held RMSNorm folded in where it wrote `x` and the kernel takes
    /// one (the integer-dot kernels; the f16 and Q4_K ones with f16 activations, which store the
    /// normalised x as f16 anyway): `make(input, norm weights)`.
    fn fold_norm(&mut self, x: Act, make: impl Fn(Act, Option<TensorId>) -> BindKey) -> BindKey {
        let Some((_, input, w)) = self.pending_norm.filter(|&(out, ..)| out == x) else {
            return make(x, None);
        };
        let folded = make(input, Some(w));
        let kernel = self.kernel_of(folded);
        if !kernel.folds_norm() || (kernel.stages_f16() && self.gpu.activations != Activations::F16)
        {
            return make(x, None);
        }
        self.pending_norm = None;
        folded
    }

    /// Whether the prompt pass's attention runs in tiles of rows (`attention_staged`): f16 keys and
    /// values, heads of 64 or 128, no window (each row attends every position before it at its own
    /// slot).
    fn tiles_attention(&self) -> bool {
        let kv = &self.kv;
        (kv.k, kv.v) == (KvType::F16, KvType::F16)
            && kv.window.is_none()
            && self.config.attn_softcap.is_none()
            && matches!(self.config.head_size(), 64 | 128)
    }

    /// Runs the held RMSNorm, if any.
    pub(super) fn flush_norm(&mut self) {
        if let Some((out, x, w)) = self.pending_norm.take() {
            self.dispatch(BindKey::Norm(w, out, x), (self.rows as u32, 1));
        }
    }
}

pub(super) fn wg(n: usize, size: usize) -> (u32, u32) {
    (n.div_ceil(size) as u32, 1)
}

impl Kernels for GpuDecoder<'_> {
    fn max_rows(&self) -> usize {
        self.max_rows
    }

    fn embed(&mut self, tokens: &[u32], out: Act) {
        // The kernel reads each row's token from the steps; every chunk holding one of them is bound.
        let n = self.config.dim;
        let rows = tokens.len() as u32;
        for ci in 0..self.w.mats[&TensorId::TokEmbd].chunks.len() {
            let ch = &self.w.mats[&TensorId::TokEmbd].chunks[ci];
            let (lo, hi) = (ch.row0, ch.row0 + ch.rows);
            if self.chained || tokens.iter().any(|&t| (lo..hi).contains(&(t as usize))) {
                self.dispatch(BindKey::Embed(out, ci), (wg(n, 64).0, rows));
            }
        }
    }

    fn rmsnorm(&mut self, out: Act, x: Act, w: TensorId) {
        if self.rows == 1 && self.gpu.fold_norm {
            // Held for the next operation: a kernel that folds it in takes it, any other
            // dispatch runs it first (`GpuDecoder::dispatch`).
            self.flush_norm();
            self.pending_norm = Some((out, x, w));
            return;
        }
        self.dispatch(BindKey::Norm(w, out, x), (self.rows as u32, 1));
    }

    fn head_norm(&mut self, x: Act, w: TensorId) {
        let heads = x.len(&self.config) / self.config.head_size();
        self.dispatch(BindKey::HeadNorm(w, x), ((self.rows * heads) as u32, 1));
    }

    fn matvec(&mut self, out: Act, w: TensorId, x: Act) {
        self.matvec_into(out, w, x, false);
    }

    fn matvec_add(&mut self, out: Act, w: TensorId, x: Act) {
        self.matvec_into(out, w, x, true);
    }

    fn qkv(&mut self, layer: usize, x: Act) {
        if !self.fuses_qkv(layer) {
            self.matvec(Act::Q, TensorId::Wq(layer), x);
            self.matvec(Act::K, TensorId::Wk(layer), x);
            self.matvec(Act::V, TensorId::Wv(layer), x);
            return;
        }
        let c = &self.config;
        // Nothing between the products and RoPE, and pairs of adjacent rows.
        let rope = !c.qkv_bias() && !c.qk_norm() && !c.rope_neox() && c.swa.is_none();
        let rows = c.q_dim() + 2 * c.kv_dim();
        // K and V straight into f16 caches where they leave the kernel final: rotated there, and
        // stored as f16 activations are (an f16 cache row is an f16 activation row).
        let kv = &self.kv;
        let direct = rope
            && self.gpu.kv_direct
            && self.gpu.activations == Activations::F16
            && (kv.k, kv.v) == (KvType::F16, KvType::F16);
        let key = self.fold_norm(x, |x, norm| BindKey::Qkv(layer, x, rope, direct, norm));
        let groups = self.row_grid(key, rows);
        self.dispatch(key, groups);
        self.roped = rope;
        self.kv_stored = direct;
    }

    fn rope_qk(&mut self, layer: usize, _pos0: usize) {
        if std::mem::take(&mut self.roped) {
            return;
        }
        let n = self.config.q_dim() + self.config.kv_dim();
        let key = BindKey::RopeQk(self.config.is_local(layer));
        self.dispatch(key, (wg(n / 2, 64).0, self.rows as u32));
    }

    fn kv_store(&mut self, layer: usize, pos0: usize) {
        if std::mem::take(&mut self.kv_stored) {
            return;
        }
        let n = self.config.kv_dim();
        self.dispatch(BindKey::KvStore(layer), (wg(n, 64).0, self.rows as u32));
        // A kivi4 key group completes at the pass's last position: quantize it per channel.
        let kv = &self.kv;
        let pos = pos0 + self.rows - 1;
        if kv.k == KvType::Kivi4 && pos >= kv.sinks && (pos - kv.sinks) % kv.group == kv.group - 1 {
            self.dispatch(BindKey::KiviFlush(layer), wg(n, 64));
        }
    }

    fn attention(&mut self, out: Act, layer: usize, _pos0: usize) {
        let h = self.config.n_heads as u32;
        let local = self.config.is_local(layer);
        if self.rows == 1 {
            // Decode: the context split across workgroups, then combined (flash-decoding); one
            // split writes the output itself.
            let splits = self.n_att_of(layer).div_ceil(ATTN_SPLIT) as u32;
            self.dispatch(BindKey::AttnSplit(layer, out), (h, splits));
            if splits > 1 {
                self.dispatch(BindKey::AttnCombine(out, local), (h, 1));
            }
        } else if self.tiles_attention() && !local {
            let tiles = self.rows.div_ceil(ATTN_STAGED_ROWS) as u32;
            self.dispatch(BindKey::AttnStaged(layer, out), (h, tiles));
        } else {
            self.dispatch(BindKey::Attention(layer, out), (h, self.rows as u32));
        }
    }

    fn gate_up(&mut self, out: Act, scratch: Act, gate: TensorId, up: TensorId, x: Act, act: Glu) {
        if !self.fuses_glu(gate, up) {
            self.matvec(out, gate, x);
            self.matvec(scratch, up, x);
            self.glu(out, scratch, act);
            return;
        }
        let rows = self.w.mats[&gate].chunks[0].rows;
        let gelu = act == Glu::Gelu;
        let key = self.fold_norm(x, |x, norm| BindKey::Glu(gate, up, out, x, gelu, norm));
        let groups = self.row_grid(key, rows);
        self.dispatch(key, groups);
    }

    fn swiglu(&mut self, gate: Act, up: Act) {
        let n = gate.len(&self.config);
        self.dispatch(BindKey::Swiglu(gate, up), (wg(n, 64).0, self.rows as u32));
    }

    fn geglu(&mut self, gate: Act, up: Act) {
        let n = gate.len(&self.config);
        self.dispatch(BindKey::Geglu(gate, up), (wg(n, 64).0, self.rows as u32));
    }

    fn scale(&mut self, x: Act, s: f32) {
        let n = x.len(&self.config);
        let key = BindKey::Scale(x, s.to_bits());
        self.dispatch(key, (wg(n, 64).0, self.rows as u32));
    }

    fn softcap(&mut self, x: Act, cap: f32) {
        let n = x.len(&self.config);
        let key = BindKey::Softcap(x, cap.to_bits());
        self.dispatch(key, (wg(n, 64).0, self.rows as u32));
    }

    fn add_bias(&mut self, x: Act, b: TensorId) {
        let n = x.len(&self.config);
        self.dispatch(BindKey::AddBias(x, b), (wg(n, 64).0, self.rows as u32));
    }

    fn add(&mut self, x: Act, y: Act) {
        let n = x.len(&self.config);
        self.dispatch(BindKey::Add(x, y), (wg(n, 64).0, self.rows as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::{balanced, tall_grid};

    /// 7B's shapes over a 512-token prompt: gate and up (11008 rows, 344 tiles) take 128 x 128
    /// tiles, the 4096-row matrices (128) do not; 1024 tokens make 4096 rows 256 tiles (896: 224); a
    /// 64-token pass never does.
    #[test]
    fn tall_tiles_need_a_full_grid() {
        assert!(tall_grid(11008, 512));
        assert!(!tall_grid(4096, 512));
        assert!(tall_grid(4096, 1024));
        assert!(!tall_grid(4096, 896));
        assert!(!tall_grid(11008, 128));
        assert!(!tall_grid(1 << 20, 64));
    }

    /// As many turns as the cap gives, on the fewest workgroups: every workgroup takes that many
    /// or one fewer, none more, and no grid exceeds the cap.
    #[test]
    fn balanced_grids_keep_the_turns_on_fewer_workgroups() {
        assert_eq!(balanced(512, 387), 256);
        assert_eq!(balanced(1536, 387), 384);
        assert_eq!(balanced(1376, 438), 344);
        assert_eq!(balanced(4000, 387), 364);
        assert_eq!(balanced(10, 7), 5);
        assert_eq!(balanced(5, 8), 5);
        assert_eq!(balanced(0, 3), 0);
        for groups in 1..300 {
            for cap in 1..40 {
                let n = balanced(groups, cap);
                let turns = groups.div_ceil(cap);
                assert!(n <= cap && n * turns >= groups, "{groups} on {cap}: {n}");
                assert!(
                    n == 1 || (n - 1) * turns < groups,
                    "{groups} on {cap}: {n} not fewest"
                );
            }
        }
    }
}
