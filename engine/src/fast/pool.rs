//! The fast backend's threads: one rayon pool made with the decoder and kept for its life, so a product
//! costs a task hand-off rather than thread starts. wasm without threads (and `threads = 1`) runs the
//! same closures in order on the calling thread.

use crate::Result;

#[derive(Clone)]
pub struct Pool {
    #[cfg(not(target_arch = "wasm32"))]
    pool: Option<std::sync::Arc<rayon::ThreadPool>>,
    threads: usize,
}

impl Pool {
    pub fn new(threads: usize) -> Result<Pool> {
        let threads = threads.max(1);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let pool = if threads > 1 {
                Some(std::sync::Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .thread_name(|i| format!("nibble-cpu-{i}"))
                        .build()
                        .map_err(|e| {
                            crate::Error::Invalid(format!("a pool of {threads} threads: {e}"))
                        })?,
                ))
            } else {
                None
            };
            Ok(Pool { pool, threads })
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = threads;
            Ok(Pool { threads: 1 })
        }
    }

    /// Splits `out` (rows of `n` values) into runs of whole rows, about four per thread so uneven
    /// rows balance, and calls `f(first_row, run)` for each. `work` (multiply-adds, say) below
    /// [`Pool::SMALL`] runs on the calling thread.
    pub fn rows(
        &self,
        out: &mut [f32],
        n: usize,
        work: usize,
        f: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let rows = out.len() / n.max(1);
        let per = rows.div_ceil(self.threads * 4).max(1);
        self.chunks(out, per * n, work, |i, o| f(i * per, o));
    }

    /// Runs `f` on one of the pool's threads, so the products inside it split their rows from there
    /// (rayon runs a nested parallel loop with the current thread taking part) instead of waking the
    /// pool from outside and sleeping until it answers, once per product.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(p) = &self.pool {
            return p.install(f);
        }
        f()
    }

    /// Work below which handing chunks to other threads costs more than it saves: waking a pool
    /// thread takes microseconds, about what 2^16 multiply-adds take.
    pub const SMALL: usize = 1 << 16;

    /// Calls `f(i, chunk)` for each `size`-long chunk `i` of `out`, in parallel where there are threads
    /// and `work` is not small.
    pub fn chunks(
        &self,
        out: &mut [f32],
        size: usize,
        work: usize,
        f: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(p) = self.pool.as_ref().filter(|_| work >= Self::SMALL) {
            use rayon::prelude::*;
            return p.install(|| {
                out.par_chunks_mut(size)
                    .enumerate()
                    .for_each(|(i, o)| f(i, o))
            });
        }
        #[cfg(target_arch = "wasm32")]
        let _ = (work, Self::SMALL);
        for (i, o) in out.chunks_mut(size).enumerate() {
            f(i, o);
        }
    }
}
