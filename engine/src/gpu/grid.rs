//! How many workgroups the integer-dot decode kernels run on, timed on the loaded model.
//!
//! Each workgroup of `matvec4_q4i`, `_glu_q4i` and `_qkv_q4i` quantizes x into workgroup memory
//! before its rows; on fewer workgroups than row groups each does that once and loops. A cap is
//! balanced per dispatch (`ops::balanced`: as many turns each, on the fewest workgroups), so caps
//! that give as many turns run the same grid. The best count looks like what the GPU holds
//! resident at once, which WebGPU does not tell (SMs, occupancy): on the H200 at 7B, 1536 groups
//! for Q/K/V, 396 workgroups ran decode in 2.375 ms/token, every group in 3.08-3.13, 528 in 2.749
//! and 132 in 3.032 (`benchmarks/2026-12-04-h200-int8-grid.md`). So it is timed, as
//! `Gpu::tune_matvec` times kernels, by `bench::measure` before it times anything.

use super::decoder::GpuDecoder;
use crate::tuning::{Trial, Tuning};
use crate::{Decoder, Result};

/// The grid chosen for a decoder and the timings it was chosen from.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    /// Workgroups at most (`None`: a workgroup per row group).
    pub cap: Option<u32>,
    /// Each cap tried, ms/token (`None` where its short run was already slower than the best's
    /// long run and it was stopped), and the workgroups of one pass with it.
    pub timings: Vec<(Option<u32>, Option<f64>, u64)>,
    /// Why this cap (for results): set by the caller, or timed.
    pub note: Option<String>,
    /// The row groups of each looping dispatch seen, without repeats: what a cap's grid is made of.
    pub sizes: std::collections::BTreeSet<usize>,
}

impl Grid {
    pub(super) fn of(gpu: &super::Gpu) -> Grid {
        Grid {
            cap: gpu.int8_groups.filter(|&n| n > 0),
            ..Default::default()
        }
    }

    /// The most row groups one looping dispatch has covered (the ladder's top).
    pub fn groups(&self) -> usize {
        self.sizes.last().copied().unwrap_or(0)
    }

    /// The workgroups each looping dispatch runs on with `cap`, in the order of `sizes`: two caps
    /// with the same run the same grid (caps are balanced, `ops::balanced`).
    pub fn layout(&self, cap: Option<u32>) -> Vec<usize> {
        let on = |g: usize| cap.map_or(g, |c| super::ops::balanced(g, c as usize));
        self.sizes.iter().map(|&g| on(g)).collect()
    }

    /// As results record it.
    pub fn tuning(&self) -> Tuning {
        let setting =
            |cap: Option<u32>| cap.map_or("every group".into(), |n| format!("at most {n}"));
        Tuning {
            note: self.note.clone().unwrap_or_default(),
            chosen: setting(self.cap),
            trials: (self.timings.iter())
                .map(|&(cap, ms_per_token, workgroups)| Trial {
                    setting: setting(cap),
                    ms_per_token,
                    workgroups,
                })
                .collect(),
        }
    }
}

/// Tokens of the short and the long timed run: the long less the short is the per-token time with
/// the readback's latency and the first pass cancelled.
const SHORT: usize = 4;
const LONG: usize = 36;
/// Seconds of untimed decoding before the first grid is timed.
const WARM: f64 = 0.5;
/// The ladder's ratio (the H200's optimum lies within 12% of a step), its floor, and how much
/// slower than the fastest a cap ends the descent (H200, 7B: 1.28x at a third of the best cap,
/// 1.97x at a sixth). Descending, since the smallest grids are the slowest by far (one workgroup
/// per SM, looping over every row, would take seconds a token at 7B).
const RATIO: f64 = 1.25;
const FLOOR: usize = 8;
const GIVE_UP: f64 = 1.5;

impl GpuDecoder<'_> {
    /// The grid in use ([`GpuDecoder::tune_grid`]).
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Times greedy decoding on the loaded model with the integer-dot kernels on a workgroup per
    /// row group, then on at most N workgroups, N down a x1.25 ladder from the most row groups one
    /// dispatch covers, until 8 or a cap 1.5 times slower than the fastest, then eight steps
    /// between the fastest's neighbours, passing over caps that run a grid already timed (7B:
    /// 2560 and 2048 run 3200's, 1048 runs 1310's); keeps the fastest. Nothing where the caller
    /// set the grid, no kernel loops (other kernels, or other weight types), or the context is too
    /// short to time. Leaves the cache reset.
    pub async fn tune_grid(&mut self) -> Result<Option<&Grid>> {
        let int8 = self.gpu.matvec_kernel() == super::MatvecKernel::TiledInt8;
        if !int8 || self.gpu.int8_groups.is_some() || self.context_limit() < SHORT + LONG {
            return Ok(None);
        }
        // Untimed first, the trials' own run for WARM seconds: pipelines compiled and bind groups
        // made on first use would count as the first grid's short run. After 4 untimed tokens the
        // H200's first grid read about 2x slow (7B: a workgroup per row group 5.0-7.4 ms/token,
        // the next grid, the same but for the classifier, 3.0-3.1), the cause not isolated: the
        // clocks of a GPU idle while the model was prepared, or work done on the first 32-token
        // run. It also finds the top.
        self.grid.cap = None;
        self.grid.sizes.clear();
        let t0 = web_time::Instant::now();
        loop {
            self.reset();
            self.decode_greedy(1, 0, LONG).await?;
            if t0.elapsed().as_secs_f64() >= WARM {
                break;
            }
        }
        let top = self.grid.groups();
        if top <= FLOOR {
            self.reset();
            return Ok(None);
        }
        let mut best: Option<(Option<u32>, f64, f64)> = None;
        let all = self.time_cap(None, &mut best).await?;
        let mut timings = vec![(None, all.0, all.1)];
        // Caps whose grid was timed already (balanced, several caps run one grid) are passed over.
        let mut timed = vec![self.grid.layout(None)];
        let mut ladder = vec![top];
        loop {
            let cap = (*ladder.last().unwrap() as f64 / RATIO) as usize;
            if cap < FLOOR {
                break;
            }
            ladder.push(cap);
            let layout = self.grid.layout(Some(cap as u32));
            if timed.contains(&layout) {
                continue;
            }
            timed.push(layout);
            let (ms, wg) = self.time_cap(Some(cap as u32), &mut best).await?;
            timings.push((Some(cap as u32), ms, wg));
            let fastest = best.map_or(f64::INFINITY, |b| b.1);
            if ms.is_none_or(|ms| ms > GIVE_UP * fastest) {
                break;
            }
        }
        // Between the fastest's neighbours on the ladder (the top stands for every group).
        if let Some(b) = best.and_then(|b| b.0) {
            let i = ladder.iter().position(|&c| c == b as usize).unwrap_or(0);
            let hi = ladder[i.saturating_sub(1)];
            let lo = ladder.get(i + 1).copied().unwrap_or(FLOOR);
            let step = ((hi - lo) / 8).max(1);
            for c in (lo + step..hi).step_by(step) {
                let layout = self.grid.layout(Some(c as u32));
                if !timed.contains(&layout) {
                    timed.push(layout);
                    let (ms, wg) = self.time_cap(Some(c as u32), &mut best).await?;
                    timings.push((Some(c as u32), ms, wg));
                }
            }
        }
        self.reset();
        let (cap, ms, _) = best.expect("every group is always timed");
        let every = all.0.unwrap_or(f64::NAN);
        let what = cap.map_or("a workgroup per row group".into(), |n| {
            format!("at most {n}")
        });
        self.grid.cap = cap;
        self.grid.note = Some(format!(
            "integer-dot decode kernels on {what} workgroups, the fastest of {} grids tried on \
             this model ({ms:.3} ms/token; {every:.3} with a workgroup per row group, {} \
             workgroups a pass)",
            timings.len(),
            all.1
        ));
        self.grid.timings = timings;
        Ok(Some(&self.grid))
    }

    /// Greedy decoding's ms/token with `cap`, or none where the short run was slower than the
    /// fastest's long run (then it is not worth the long one); the workgroups of its last pass.
    /// Keeps the fastest in `best` (cap, ms/token, long run's seconds).
    async fn time_cap(
        &mut self,
        cap: Option<u32>,
        best: &mut Option<(Option<u32>, f64, f64)>,
    ) -> Result<(Option<f64>, u64)> {
        self.grid.cap = cap;
        self.reset();
        let t0 = web_time::Instant::now();
        self.decode_greedy(1, 0, SHORT).await?;
        let short = t0.elapsed().as_secs_f64();
        let wg = self.workgroups;
        if best.is_some_and(|b| short > b.2) {
            return Ok((None, wg));
        }
        let t0 = web_time::Instant::now();
        self.decode_greedy(1, SHORT, LONG).await?;
        let long = t0.elapsed().as_secs_f64();
        let ms = ((long - short) * 1e3 / (LONG - SHORT) as f64).max(0.0);
        if best.is_none_or(|b| ms < b.1) {
            *best = Some((cap, ms, long));
        }
        Ok((Some(ms), wg))
    }
}
