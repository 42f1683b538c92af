//! Large allocations on 2 MiB pages. Decode reads every weight once per token; on 4 KiB pages a 1B
//! model's q4_0 rows span 150,000 pages and the page walks cost about a fifth of the fast CPU
//! backend's decode time on this project's machines (1B q4_0, two threads, alternating runs:
//! 51/50/35 ms/token with the kernel's default "madvise" policy against 40/36/26 with transparent
//! huge pages forced on). So allocations of 2 MiB and more are aligned to 2 MiB and advised
//! `MADV_HUGEPAGE` before anything touches them; everything else goes to the system allocator as it
//! is. Where the kernel has huge pages off, the advice does nothing.

use std::alloc::{GlobalAlloc, Layout, System};

pub struct HugePages;

const HUGE: usize = 2 << 20;

fn huge(l: Layout) -> Option<Layout> {
    (l.size() >= HUGE)
        .then(|| Layout::from_size_align(l.size(), l.align().max(HUGE)).ok())
        .flatten()
}

fn advise(p: *mut u8, size: usize) {
    if !p.is_null() {
        // SAFETY: advice over the pages of an allocation just made; it changes no contents.
        unsafe { libc::madvise(p.cast(), size.next_multiple_of(HUGE), libc::MADV_HUGEPAGE) };
    }
}

/// `alloc(l)`, widened to 2 MiB alignment and advised where `l` is large.
fn advised(l: Layout, alloc: impl FnOnce(Layout) -> *mut u8) -> *mut u8 {
    match huge(l) {
        Some(h) => {
            let p = alloc(h);
            advise(p, h.size());
            p
        }
        None => alloc(l),
    }
}

// SAFETY: every block is allocated and freed by `System` with the same (possibly widened) layout.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        advised(l, |l| System.alloc(l))
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        advised(l, |l| System.alloc_zeroed(l))
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, huge(l).unwrap_or(l))
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, l.align());
        if huge(l).is_none() && huge(new).is_none() {
            return System.realloc(p, l, new_size);
        }
        let q = self.alloc(new);
        if !q.is_null() {
            std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
            self.dealloc(p, l);
        }
        q
    }
}
