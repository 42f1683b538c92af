//! The KV cache: element types (f32, f16, ggml-style q8_0/q4_0 per token, KIVI-style 4-bit), sliding-window
//! attention with attention sinks, and exact memory accounting.
//!
//! Per-token types store each token's K (or V) row, all KV heads together, as one row of a [`QMatrix`]
//! (q8_0/q4_0 in blocks of 32 along the row, as llama.cpp's `-ctk/-ctv`). `kivi4` follows KIVI
//! (arXiv 2402.02750): keys are quantized per channel over groups of G consecutive tokens, because a few
//! outlier channels dominate keys and ruin per-token scales; values are quantized per token. Both use
//! asymmetric 4-bit blocks (f16 scale + f16 min). Keys of the newest tokens that do not yet fill a group
//! stay in f16 until the group completes.
//!
//! With a window W and S sinks (StreamingLLM), positions `0..S` are kept forever and of the rest only the
//! newest `W - S`. Keys are stored already rotated at their true position, so RoPE stays correct.

use crate::error::{Error, Result};
use crate::model::Config;
use crate::quant::{QMatrix, WType};
use serde::{Deserialize, Serialize};

pub use crate::dtype::KvType;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvConfig {
    pub k: KvType,
    pub v: KvType,
    /// kivi4 key group length in tokens.
    pub group: usize,
    /// Sliding window in positions (sinks included); `None` keeps everything.
    pub window: Option<usize>,
    pub sinks: usize,
    /// Positions the cache holds where there is no window: llama.cpp's `-c`, WebLLM's context
    /// window. `None`: the model's whole context, which for a 128K-context model is gigabytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<usize>,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            k: KvType::F32,
            v: KvType::F32,
            group: 32,
            window: None,
            sinks: 0,
            ctx: None,
        }
    }
}

impl KvConfig {
    /// Whether running a position again overwrites only that position's slot: no window ring (whose
    /// slots later positions reuse) and no kivi4 groups (quantized when a group completes).
    pub fn rewinds(&self) -> bool {
        self.window.is_none() && self.k != KvType::Kivi4 && self.v != KvType::Kivi4
    }

    pub fn validate(&self, c: &Config) -> Result<()> {
        let kv = c.kv_dim();
        for (which, t) in [("keys", self.k), ("values", self.v)] {
            if !matches!(t, KvType::F32 | KvType::F16) && !kv.is_multiple_of(32) {
                return Err(Error::Invalid(format!(
                    "{} {which} need a KV row ({kv} values) that is a whole number of 32-blocks",
                    t.name()
                )));
            }
        }
        if self.k == KvType::Kivi4 && (self.group == 0 || !self.group.is_multiple_of(8)) {
            return Err(Error::Invalid(format!(
                "--kv-group {} must be a positive multiple of 8",
                self.group
            )));
        }
        if let (Some(w), Some(s)) = (self.window, c.swa) {
            // A ring would reuse slots a local layer's window still attends, and the local
            // layers' positions would need their own ring: not built.
            return Err(Error::Invalid(format!(
                "--window {w}: this model's layers already attend sliding windows of {} \
                 positions; a KV window on such a model is not supported",
                s.window
            )));
        }
        match (self.ctx, self.window) {
            (Some(0), _) => {
                return Err(Error::Invalid("--ctx 0: a context holds a position".into()))
            }
            (Some(n), Some(w)) => {
                return Err(Error::Invalid(format!(
                    "--ctx {n} with --window {w}: the window already bounds the cache"
                )))
            }
            _ => {}
        }
        if let Some(w) = self.window {
            if w <= self.sinks {
                return Err(Error::Invalid(format!(
                    "--window {w} must be larger than --sinks {}",
                    self.sinks
                )));
            }
        } else if self.sinks > 0 {
            return Err(Error::Invalid("--sinks needs --window".into()));
        }
        Ok(())
    }

    pub fn label(&self) -> String {
        let mut s = if self.k == self.v {
            self.k.name().to_string()
        } else {
            format!("k={},v={}", self.k.name(), self.v.name())
        };
        if self.k == KvType::Kivi4 && self.group != 32 {
            s.push_str(&format!("/g{}", self.group));
        }
        if let Some(w) = self.window {
            s.push_str(&format!(" window={w},sinks={}", self.sinks));
        }
        if let Some(n) = self.ctx {
            s.push_str(&format!(" ctx={n}"));
        }
        s
    }

    /// Positions a decoder can take: the model's context (or `ctx`, where smaller), or unbounded
    /// with a window.
    pub fn context_limit(&self, c: &Config) -> usize {
        match self.window {
            Some(_) => usize::MAX,
            None => self.ctx.map_or(c.seq_len, |n| n.min(c.seq_len)),
        }
    }

    /// Slots a layer's cache holds: the window, or the context limit.
    pub fn capacity(&self, c: &Config) -> usize {
        self.window.unwrap_or_else(|| self.context_limit(c))
    }

    /// Refuses a position past [`KvConfig::context_limit`], saying which limit it is.
    pub fn check_position(&self, c: &Config, pos: usize) -> Result<()> {
        let limit = self.context_limit(c);
        if pos < limit {
            return Ok(());
        }
        Err(Error::Invalid(if limit < c.seq_len {
            format!(
                "position {pos} is past the context of {limit} that --ctx sets (the model's is {})",
                c.seq_len
            )
        } else {
            format!(
                "position {pos} is past the model's context of {limit} (a --window lets decoding \
                 go on)"
            )
        }))
    }

    /// The positions attended at step `pos` as two ranges: sinks `0..n_sinks`, then `lo..=pos`.
    pub fn attended_ranges(&self, pos: usize) -> (usize, usize) {
        match self.window {
            None => (0, 0),
            Some(w) => {
                let s = self.sinks.min(pos + 1);
                (s, (pos + 1).saturating_sub(w - self.sinks).max(s))
            }
        }
    }

    /// Positions attended at step `pos`, ascending.
    pub fn attended(&self, pos: usize, out: &mut Vec<usize>) {
        out.clear();
        let (n_sinks, lo) = self.attended_ranges(pos);
        out.extend(0..n_sinks);
        out.extend(lo..=pos);
    }

    /// Ring slot of a position in a per-token store.
    pub(crate) fn slot(&self, pos: usize) -> usize {
        match self.window {
            Some(w) if pos >= self.sinks => self.sinks + (pos - self.sinks) % (w - self.sinks),
            _ => pos,
        }
    }

    /// Complete kivi4 key groups a window can need at once, plus one being replaced.
    fn group_ring(&self) -> Option<usize> {
        self.window
            .map(|w| (w - self.sinks).div_ceil(self.group) + 1)
    }

    /// Exact bytes the cache holds, all layers, K and V, after `n` tokens: codes, scales, mins, and the f16
    /// sinks and residual of kivi4 keys.
    pub fn bytes_after(&self, c: &Config, n: usize) -> usize {
        let kv = c.kv_dim();
        let per_token_rows = |t: KvType| {
            let rows = match self.window {
                Some(w) => n.min(w),
                None => n,
            };
            rows * t.row_bytes(kv)
        };
        let k = if self.k == KvType::Kivi4 {
            let sinks = n.min(self.sinks);
            let rest = n - sinks;
            let (mut groups, residual) = (rest / self.group, rest % self.group);
            if let Some(cap) = self.group_ring() {
                groups = groups.min(cap);
            }
            sinks * kv * 2 + groups * kv * (self.group / 2 + 4) + residual * kv * 2
        } else {
            per_token_rows(self.k)
        };
        c.n_layers * (k + per_token_rows(self.v))
    }

    /// Bytes per token of context, all layers, K and V; kivi4 amortized over a full key group.
    pub fn bytes_per_token(&self, c: &Config) -> f64 {
        let kv = c.kv_dim() as f64;
        let k = if self.k == KvType::Kivi4 {
            kv * (self.group as f64 / 2.0 + 4.0) / self.group as f64
        } else {
            self.k.row_bytes(c.kv_dim()) as f64
        };
        c.n_layers as f64 * (k + self.v.row_bytes(c.kv_dim()) as f64)
    }

    /// The most tokens of context whose cache fits in `budget` bytes (f16 residual counted), or `None`
    /// when a sliding window keeps the cache below the budget forever.
    pub fn tokens_in_budget(&self, c: &Config, budget: usize) -> Option<usize> {
        if let Some(w) = self.window {
            // Past the window the cache no longer grows (kivi4's group ring is bounded too).
            let bound = w + self.group_ring().unwrap_or(0) * self.group + self.group;
            if (0..=bound).all(|n| self.bytes_after(c, n) <= budget) {
                return None;
            }
        }
        // bytes_after is not monotone for kivi4 (a group flush shrinks the residual), so search for the
        // first n that does not fit rather than bisecting.
        let per = self.bytes_per_token(c).max(1.0);
        let mut n = ((budget as f64 / per) as usize).saturating_sub(self.group * 2);
        while self.bytes_after(c, n) > budget && n > 0 {
            n = n.saturating_sub(self.group.max(16));
        }
        while self.bytes_after(c, n + 1) <= budget {
            n += 1;
        }
        Some(n)
    }
}

/// One layer's keys or values.
#[derive(Debug, Clone)]
enum Store {
    /// Per-token rows, one per ring slot.
    Rows(QMatrix),
    /// KIVI keys: f16 sink rows, a ring of complete groups (each a `[kv_dim, G]` q4_1 matrix with one
    /// block per channel), and the f16 rows of the group being filled.
    Kivi {
        sinks: QMatrix,
        groups: Vec<QMatrix>,
        residual: QMatrix,
    },
}

impl Store {
    fn new(t: KvType, kivi_keys: bool, dim: usize) -> Store {
        if kivi_keys {
            return Store::Kivi {
                sinks: QMatrix::zeros(WType::F16, 1, 0, dim),
                groups: Vec::new(),
                residual: QMatrix::zeros(WType::F16, 1, 0, dim),
            };
        }
        let (ty, block) = t.row_type();
        Store::Rows(QMatrix::zeros(ty, block, 0, dim))
    }

    fn bytes(&self) -> usize {
        match self {
            Store::Rows(m) => m.n_bytes(),
            Store::Kivi {
                sinks,
                groups,
                residual,
            } => {
                sinks.n_bytes()
                    + groups.iter().map(QMatrix::n_bytes).sum::<usize>()
                    + residual.n_bytes()
            }
        }
    }
}

/// A KV cache for every layer of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub config: KvConfig,
    dim: usize,
    layers: Vec<(Store, Store)>,
    scratch: Vec<f32>,
}

impl KvCache {
    pub fn new(c: &Config, config: KvConfig) -> Result<KvCache> {
        config.validate(c)?;
        let dim = c.kv_dim();
        let layers = (0..c.n_layers)
            .map(|_| {
                (
                    Store::new(config.k, config.k == KvType::Kivi4, dim),
                    Store::new(config.v, false, dim),
                )
            })
            .collect();
        Ok(KvCache {
            config,
            dim,
            layers,
            scratch: Vec::new(),
        })
    }

    /// Empties every store (allocations shrink to nothing).
    pub fn reset(&mut self) {
        let cfg = &self.config;
        for (k, v) in &mut self.layers {
            *k = Store::new(cfg.k, cfg.k == KvType::Kivi4, self.dim);
            *v = Store::new(cfg.v, false, self.dim);
        }
    }

    /// Bytes held now, measured from the stores themselves.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| k.bytes() + v.bytes()).sum()
    }

    /// The keys and values of `layer` as f32 rows indexed by position, where the cache stores them so
    /// (f32 rows, no window ring): readers skip [`KvCache::gather`]'s copy.
    pub fn f32_rows(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        if self.config.window.is_some() {
            return None;
        }
        match &self.layers[layer] {
            (Store::Rows(k), Store::Rows(v)) if k.ty == WType::F32 && v.ty == WType::F32 => Some((
                bytemuck::cast_slice(&k.words),
                bytemuck::cast_slice(&v.words),
            )),
            _ => None,
        }
    }

    /// Stores the rotated key and the value of `layer` at `pos`. Positions arrive in order.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let cfg = &self.config;
        let (ks, vs) = &mut self.layers[layer];
        for (store, row) in [(ks, k), (vs, v)] {
            match store {
                Store::Rows(m) => {
                    let slot = cfg.slot(pos);
                    if slot >= m.rows {
                        m.resize_rows(slot + 1);
                    }
                    m.set_row(slot, row);
                }
                Store::Kivi {
                    sinks,
                    groups,
                    residual,
                } => {
                    if pos < cfg.sinks {
                        sinks.resize_rows(pos + 1);
                        sinks.set_row(pos, row);
                        continue;
                    }
                    let i = (pos - cfg.sinks) % cfg.group;
                    residual.resize_rows(i + 1);
                    residual.set_row(i, row);
                    if i + 1 == cfg.group {
                        // The group is complete: quantize each channel over its G tokens.
                        let (g_len, dim) = (cfg.group, residual.cols);
                        let rows = residual.to_f32();
                        let mut by_channel = vec![0.0f32; dim * g_len];
                        for t in 0..g_len {
                            for ch in 0..dim {
                                by_channel[ch * g_len + t] = rows[t * dim + ch];
                            }
                        }
                        let q = QMatrix::quantize(WType::Q4_1, g_len, dim, g_len, &by_channel);
                        let g = (pos - cfg.sinks) / g_len;
                        let at = cfg.group_ring().map_or(g, |cap| g % cap);
                        if at < groups.len() {
                            groups[at] = q;
                        } else {
                            groups.push(q);
                        }
                        residual.resize_rows(0);
                    }
                }
            }
        }
    }

    /// Writes the keys and values of `positions` (as from [`KvConfig::attended`] at `pos`) into `k` and
    /// `v`, one `kv_dim` row each, in order.
    pub fn gather(
        &mut self,
        layer: usize,
        pos: usize,
        positions: &[usize],
        k: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) {
        let dim = self.dim;
        k.resize(positions.len() * dim, 0.0);
        v.resize(positions.len() * dim, 0.0);
        let cfg = &self.config;
        let (ks, vs) = &self.layers[layer];
        for (store, out) in [(ks, k), (vs, v)] {
            match store {
                Store::Rows(m) => {
                    for (i, &p) in positions.iter().enumerate() {
                        m.row_into(cfg.slot(p), &mut out[i * dim..(i + 1) * dim]);
                    }
                }
                Store::Kivi {
                    sinks,
                    groups,
                    residual,
                } => {
                    let g_len = cfg.group;
                    // The group holding `pos` is the one still being filled (in `residual`).
                    let current = pos.saturating_sub(cfg.sinks) / g_len;
                    let filling = pos >= cfg.sinks;
                    let mut loaded: Option<usize> = None;
                    for (i, &p) in positions.iter().enumerate() {
                        let row = &mut out[i * dim..(i + 1) * dim];
                        if p < cfg.sinks {
                            sinks.row_into(p, row);
                            continue;
                        }
                        let (g, t) = ((p - cfg.sinks) / g_len, (p - cfg.sinks) % g_len);
                        if filling && g == current && residual.rows > t {
                            residual.row_into(t, row);
                            continue;
                        }
                        if loaded != Some(g) {
                            let at = cfg.group_ring().map_or(g, |cap| g % cap);
                            self.scratch.resize(dim * g_len, 0.0);
                            for ch in 0..dim {
                                groups[at]
                                    .row_into(ch, &mut self.scratch[ch * g_len..(ch + 1) * g_len]);
                            }
                            loaded = Some(g);
                        }
                        for (ch, r) in row.iter_mut().enumerate() {
                            *r = self.scratch[ch * g_len + t];
                        }
                    }
                }
            }
        }
    }
}
