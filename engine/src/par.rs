//! Work shared out over the machine's threads natively; inline in wasm, which has no threads here.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f(i)` for every index of `order` (a permutation of `0..order.len()`: the order the work is
/// taken in, e.g. largest first), on as many threads as the machine has; answered by index,
/// `out[i] = f(i)`, whatever the threads.
pub fn map_indexed<T: Send>(order: &[usize], f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = match cfg!(target_arch = "wasm32") {
        true => 1,
        false => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    map_on(threads, order, f)
}

/// [`map_indexed`] on at most `threads` threads (1: inline).
fn map_on<T: Send>(threads: usize, order: &[usize], f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut out: Vec<Option<T>> = (0..order.len()).map(|_| None).collect();
    if threads <= 1 || order.len() <= 1 {
        for &i in order {
            out[i] = Some(f(i));
        }
    } else {
        let next = AtomicUsize::new(0);
        let f = &f;
        std::thread::scope(|s| {
            let work = || {
                let mut done = Vec::new();
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    done.push((i, f(i)));
                }
                done
            };
            let handles: Vec<_> = (0..threads.min(order.len()))
                .map(|_| s.spawn(work))
                .collect();
            for h in handles {
                for (i, t) in h.join().expect("a worker thread panicked") {
                    out[i] = Some(t);
                }
            }
        });
    }
    out.into_iter()
        .map(|t| t.expect("order covers every index"))
        .collect()
}

#[cfg(test)]
mod tests {
    /// Answers land at their index whatever order the work is taken in, inline (wasm, one core)
    /// and on threads.
    #[test]
    fn answers_land_by_index() {
        let order: Vec<usize> = (0..100).rev().collect();
        for threads in [1, 4] {
            let out = super::map_on(threads, &order, |i| i * i);
            assert_eq!(
                out,
                (0..100).map(|i| i * i).collect::<Vec<_>>(),
                "{threads}"
            );
        }
    }
}
