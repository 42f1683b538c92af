//! Fusions of a decode step (one row): products that do two operations' work in one dispatch.
//!
//! - RMSNorm folded into the products that read it: a decode step's `rmsnorm` dispatches nothing and
//!   is remembered; a product whose kernel folds norms (`matvec4_q4c`, `matvec4_glu_q4c`) reads the
//!   raw residual and the norm weights and scales its sums by 1 / rms(x) itself, since each row's
//!   lanes read all of x anyway. Any other product first dispatches the norm, once. This relies on
//!   [`crate::forward::Kernels::rmsnorm`]'s contract: a norm's output is read only by products
//!   before its input is next written. On the H200 a norm was a 4096-value workgroup that took
//!   ~10 us, as long as a 4096-square q4_0 product (benchmarks/2026-12-03-h200-profile.md).
//! - SwiGLU's gate and up products in one kernel (`matvec4_glu_q4c`), also folding the norm.
//!
//! Prompt passes (several rows) run the tiled matrix-matrix kernel, which folds nothing.

use super::decoder::GpuDecoder;
use super::kernels::{fold, BindKey, Kernel};
use crate::dtype::WType;
use crate::forward::{Act, Kernels};
use crate::model::TensorId;

/// A decode step's RMSNorm not dispatched yet: `out = x / rms(x) * w`, `done` once dispatched.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingNorm {
    out: Act,
    x: Act,
    w: TensorId,
    done: bool,
}

impl GpuDecoder<'_> {
    /// `Kernels::rmsnorm`: deferred in a decode step, dispatched in a prompt pass.
    pub(super) fn norm_op(&mut self, out: Act, x: Act, w: TensorId) {
        if self.rows == 1 {
            self.norm = Some(PendingNorm {
                out,
                x,
                w,
                done: false,
            });
        } else {
            self.dispatch(BindKey::Norm(w, out, x), (self.rows as u32, 1));
        }
    }

    /// What a product reading `x` binds: the raw input and the norm where `x` is a pending norm's
    /// output and `folds`, else `x` (the pending norm dispatched first, once).
    fn input(&mut self, x: Act, folds: bool) -> (Act, Option<TensorId>) {
        let Some(p) = self.norm.filter(|p| p.out == x) else {
            return (x, None);
        };
        if folds {
            return (p.x, Some(p.w));
        }
        if !p.done {
            self.dispatch(BindKey::Norm(p.w, p.out, p.x), (1, 1));
            self.norm = Some(PendingNorm { done: true, ..p });
        }
        (x, None)
    }

    /// `out = W x` or `out += W x`.
    pub(super) fn matvec_into(&mut self, out: Act, w: TensorId, x: Act, accumulate: bool) {
        if self.norm.is_some_and(|p| p.x == out) {
            // The norm's input changes: its output is dead (the contract above).
            self.norm = None;
        }
        if self.rows > 1 {
            // A batch: the tiled kernel covers 64 weight rows by 32 tokens per workgroup.
            let tiles = self.rows.div_ceil(32) as u32;
            for ci in 0..self.w.mats[&w].chunks.len() {
                let rows = self.w.mats[&w].chunks[ci].rows;
                let key = BindKey::Matmul(w, ci, out, x, accumulate);
                self.dispatch(key, (rows.div_ceil(64) as u32, tiles));
            }
            return;
        }
        let folds = self
            .kernel_of(BindKey::Matvec(w, 0, out, x, accumulate, None))
            .folds_norm();
        let (x, norm) = self.input(x, folds);
        for ci in 0..self.w.mats[&w].chunks.len() {
            let rows = self.w.mats[&w].chunks[ci].rows;
            let key = BindKey::Matvec(w, ci, out, x, accumulate, norm);
            let groups = fold(rows.div_ceil(self.kernel_of(key).rows_per_group()));
            self.dispatch(key, groups);
        }
    }

    /// Whether a decode step runs SwiGLU's gate and up products as one kernel (`matvec4_glu_q4c`):
    /// both q4_0 matrices of one shape and block in one binding each, whose products the chosen
    /// kernel would run in `matvec4_q4c`.
    pub(super) fn fuses_glu(&self, gate: TensorId, up: TensorId) -> bool {
        let (g, u) = (&self.w.mats[&gate], &self.w.mats[&up]);
        self.rows == 1
            && g.ty == WType::Q4_0
            && (u.ty, u.block, u.cols) == (g.ty, g.block, g.cols)
            && g.chunks.len() == 1
            && u.chunks.len() == 1
            && g.chunks[0].rows == u.chunks[0].rows
            && self.kernel_of(BindKey::Matvec(gate, 0, Act::Hb, Act::Xb, false, None))
                == Kernel::Matvec4Q4C
    }

    /// `Kernels::gate_up`: one kernel where [`Self::fuses_glu`], else the two products and SwiGLU.
    pub(super) fn gate_up_op(
        &mut self,
        out: Act,
        scratch: Act,
        gate: TensorId,
        up: TensorId,
        x: Act,
    ) {
        if !self.fuses_glu(gate, up) {
            self.matvec_into(out, gate, x, false);
            self.matvec_into(scratch, up, x, false);
            self.swiglu(out, scratch);
            return;
        }
        let (x, norm) = self.input(x, true);
        let rows = self.w.mats[&gate].chunks[0].rows;
        let key = BindKey::Glu(gate, up, out, x, norm);
        let groups = fold(rows.div_ceil(self.kernel_of(key).rows_per_group()));
        self.dispatch(key, groups);
    }
}
