//! Thread policy: one rayon pool for the library, sized by `HWREG_NUM_THREADS`
//! (default: the cores this process may use), rebuilt after `fork()`.
//!
//! A private pool keeps us from fighting whatever else uses rayon's global pool,
//! and lets a forked child (multiprocessing, Dask, Ray workers) get live threads
//! instead of handles to threads that only exist in the parent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

struct PoolEntry {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<PoolEntry>> = Mutex::new(None);

static OVERRIDE: AtomicUsize = AtomicUsize::new(0);

/// Sets the thread count for the rest of the process (0 restores the default).
pub fn set_num_threads(n: usize) {
    OVERRIDE.store(n, Ordering::Relaxed);
}

/// Threads to use: the count given to [`set_num_threads`], else
/// `HWREG_NUM_THREADS` (as set when first read) if it is a positive integer, else the parallelism
/// available to this process.
pub fn num_threads() -> usize {
    let n = OVERRIDE.load(Ordering::Relaxed);
    if n > 0 {
        return n;
    }
    env_threads().unwrap_or_else(available_cores)
}

/// `HWREG_NUM_THREADS`, read once: every kernel call asks for the thread
/// count, and reading the environment takes a lock and a scan each time.
fn env_threads() -> Option<usize> {
    static ENV: OnceLock<Option<usize>> = OnceLock::new();
    *ENV.get_or_init(|| {
        std::env::var("HWREG_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
    })
}

/// Cores this process may use, read once: `available_parallelism` reads cgroup
/// files on every call (tens of µs), far too slow for a per-kernel-call check.
fn available_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The library pool, created on first use and again after a fork or a change of
/// `HWREG_NUM_THREADS`.
pub fn pool() -> Arc<rayon::ThreadPool> {
    let pid = std::process::id();
    let threads = num_threads();
    let mut guard = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = guard.as_ref() {
        if e.pid == pid && e.threads == threads {
            return Arc::clone(&e.pool);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("hwreg-{i}"))
        .build()
        .map(Arc::new)
        .unwrap_or_else(|_| {
            // Could not spawn threads (resource limits): run on the caller's thread.
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .use_current_thread()
                    .build()
                    .expect("single-thread pool"),
            )
        });
    *guard = Some(PoolEntry {
        pid,
        threads,
        pool: Arc::clone(&pool),
    });
    pool
}

/// Runs `f` inside the library pool when `work` (a count of inner-loop
/// operations, e.g. MACs) is large enough to pay for threads; else on the caller.
pub fn run<R: Send>(work: usize, f: impl FnOnce() -> R + Send) -> R {
    if work < PARALLEL_MIN_WORK || num_threads() == 1 {
        f()
    } else {
        pool().install(f)
    }
}

/// Runs `task(i)` for every `i` in `0..ntasks`, each exactly once, on the
/// calling thread and the [`crate::team`] workers, which pull indices from a
/// shared counter (so a core busy with something else gets fewer tasks).
/// Serial below `PARALLEL_MIN_WORK`, for one task, or on one thread.
pub fn for_each_task(work: usize, ntasks: usize, task: impl Fn(usize) + Sync) {
    if ntasks <= 1 || work < PARALLEL_MIN_WORK || num_threads() == 1 {
        (0..ntasks).for_each(task);
    } else {
        crate::team::team().for_each(ntasks, &task);
    }
}

/// Below this much work (about 64K multiply-accumulates) one thread is faster
/// than waking the pool.
pub const PARALLEL_MIN_WORK: usize = 1 << 16;

/// How many chunks to split `work` into: one per `PARALLEL_MIN_WORK`, capped at a
/// few per thread for load balance.
pub fn chunks_for(work: usize) -> usize {
    let t = num_threads();
    if t == 1 || work < 2 * PARALLEL_MIN_WORK {
        return 1;
    }
    (work / PARALLEL_MIN_WORK).clamp(1, 4 * t)
}

/// Whether the caller runs on a worker of a rayon pool (normally the library
/// pool, entered through [`run`]). A rayon parallel iterator started anywhere
/// else wakes rayon's *global* pool, which ignores `HWREG_NUM_THREADS` and is
/// not rebuilt after a fork; the chunk helpers below run serially then.
pub fn in_pool() -> bool {
    rayon::current_thread_index().is_some()
}

/// `f(chunk_index, chunk)` over `buf.chunks_mut(size)`: in parallel inside
/// the pool, serially outside it (see [`in_pool`]).
pub fn for_each_chunk_mut<T: Send>(
    buf: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    use rayon::prelude::*;
    let size = size.max(1);
    if in_pool() {
        buf.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        buf.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// [`for_each_chunk_mut`] collecting one result per chunk, in order.
pub fn map_chunks_mut<T: Send, R: Send>(
    buf: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    let size = size.max(1);
    if in_pool() {
        buf.par_chunks_mut(size)
            .enumerate()
            .map(|(i, c)| f(i, c))
            .collect()
    } else {
        buf.chunks_mut(size)
            .enumerate()
            .map(|(i, c)| f(i, c))
            .collect()
    }
}

/// `f(chunk_index, chunk)` over `buf.chunks(size)`, one result per chunk.
pub fn map_chunks<T: Sync, R: Send>(
    buf: &[T],
    size: usize,
    f: impl Fn(usize, &[T]) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    let size = size.max(1);
    if in_pool() {
        buf.par_chunks(size)
            .enumerate()
            .map(|(i, c)| f(i, c))
            .collect()
    } else {
        buf.chunks(size).enumerate().map(|(i, c)| f(i, c)).collect()
    }
}

/// A raw pointer that tasks on several threads may share, each writing only
/// its own disjoint elements (the caller's `unsafe` blocks promise that).
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: used only to write disjoint elements from different threads.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// A method, so closures capture the whole (Sync) wrapper, not its field.
    #[inline]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_reused_and_runs_work() {
        let a = pool();
        let b = pool();
        assert!(Arc::ptr_eq(&a, &b));
        let s: u64 = run(1 << 20, || {
            use rayon::prelude::*;
            (0..1000u64).into_par_iter().sum()
        });
        assert_eq!(s, 499_500);
    }

    #[test]
    fn chunk_helpers_serial_outside_and_parallel_inside_the_pool() {
        let mut v = vec![0u32; 1000];
        for_each_chunk_mut(&mut v, 7, |i, c| c.fill(i as u32));
        assert_eq!(v[999], 999 / 7);
        let sums = map_chunks(&v, 100, |_, c| c.iter().sum::<u32>());
        let inside = run(1 << 20, || {
            map_chunks(&v, 100, |_, c| c.iter().sum::<u32>())
        });
        assert_eq!(sums, inside);
        assert_eq!(
            map_chunks_mut(&mut v, 500, |i, c| (i, c.len())),
            vec![(0, 500), (1, 500)]
        );
    }

    #[test]
    fn small_work_runs_on_one_chunk() {
        assert_eq!(chunks_for(10), 1);
    }
}
