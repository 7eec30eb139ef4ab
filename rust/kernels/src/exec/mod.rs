//! Execution: the context each kernel call carries ([`Ctx`]: its thread
//! count), the process policy that fills it ([`config`]), and the two thread
//! groups that run its work, the rayon [`pool`] for data-parallel loops and
//! the fork-join [`team`] for latency-critical kernels. `pool` and `team`
//! are leaves: they take their size from a `Ctx` and import nothing here.

pub mod config;
pub mod pool;
pub mod team;

pub use config::{num_threads, set_num_threads};

/// The execution context of one kernel call: how many threads it may use
/// (and through that, which pool and team run them). Passed with each call,
/// as MLAS passes its thread pool; [`Ctx::current`] reads the process policy
/// ([`config`]) once, at the call's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    threads: usize,
}

impl Ctx {
    /// A context of `threads` threads (at least 1).
    pub const fn new(threads: usize) -> Ctx {
        Ctx {
            threads: if threads == 0 { 1 } else { threads },
        }
    }

    /// One thread: everything runs on the caller.
    pub const fn serial() -> Ctx {
        Ctx::new(1)
    }

    /// The calling thread's count if one is set ([`set_local_threads`]),
    /// else the process policy now: [`set_num_threads`], else
    /// `HWREG_NUM_THREADS`, else the cores available.
    pub fn current() -> Ctx {
        match LOCAL_THREADS.with(|t| t.get()) {
            0 => Ctx::new(config::num_threads()),
            n => Ctx::new(n),
        }
    }

    /// Threads this call may use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` inside the library pool when `work` (a count of inner-loop
    /// operations, e.g. MACs) is large enough to pay for threads; else on the
    /// caller.
    pub fn run<R: Send>(&self, work: usize, f: impl FnOnce() -> R + Send) -> R {
        if work < PARALLEL_MIN_WORK || self.threads == 1 {
            f()
        } else {
            pool::pool(self.threads).install(f)
        }
    }

    /// Runs `task(i)` for every `i` in `0..ntasks`, each exactly once, on the
    /// calling thread and the [`team`] workers, which pull indices from a
    /// shared counter (so a core busy with something else gets fewer tasks).
    /// Serial below `PARALLEL_MIN_WORK`, for one task, or on one thread.
    pub fn for_each_task(&self, work: usize, ntasks: usize, task: impl Fn(usize) + Sync) {
        if ntasks <= 1 || work < PARALLEL_MIN_WORK || self.threads == 1 {
            (0..ntasks).for_each(task);
        } else {
            team::team(self.threads).for_each(work, ntasks, &task);
        }
    }

    /// How many chunks to split `work` into: one per `PARALLEL_MIN_WORK`,
    /// capped at a few per thread for load balance.
    pub fn chunks_for(&self, work: usize) -> usize {
        let t = self.threads;
        if t == 1 || work < 2 * PARALLEL_MIN_WORK {
            return 1;
        }
        (work / PARALLEL_MIN_WORK).clamp(1, 4 * t)
    }
}

thread_local! {
    /// This thread's thread count for [`Ctx::current`]; 0: none set.
    static LOCAL_THREADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Sets the thread count that [`Ctx::current`] gives on the calling thread
/// only (`None`: the process policy again); returns the previous one. A
/// caller running one model with its own thread count sets it around the
/// call, and other threads and the process setting never see it.
pub fn set_local_threads(n: Option<usize>) -> Option<usize> {
    let prev = LOCAL_THREADS.with(|t| t.replace(n.map_or(0, |n| n.max(1))));
    (prev != 0).then_some(prev)
}

/// Below this much work (about 64K multiply-accumulates) one thread is faster
/// than waking the pool.
pub const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Whether the caller runs on a worker of a rayon pool (normally the library
/// pool, entered through [`Ctx::run`]). A rayon parallel iterator started anywhere
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

/// `f(i)` for every `i` in `0..n`, collected in order: in parallel inside
/// the pool, serially outside it (see [`in_pool`]).
pub fn map_range<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if in_pool() {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
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

/// The context of the kernel crate's tests: two threads, whatever the
/// process policy, so that the parallel paths run.
#[cfg(test)]
pub(crate) const TEST: Ctx = Ctx::new(2);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pool_is_reused_and_runs_work() {
        let a = pool::pool(2);
        let b = pool::pool(2);
        assert!(Arc::ptr_eq(&a, &b));
        let s: u64 = Ctx::new(2).run(1 << 20, || {
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
        let inside = Ctx::new(2).run(1 << 20, || {
            map_chunks(&v, 100, |_, c| c.iter().sum::<u32>())
        });
        assert_eq!(sums, inside);
        assert_eq!(
            map_chunks_mut(&mut v, 500, |i, c| (i, c.len())),
            vec![(0, 500), (1, 500)]
        );
    }

    #[test]
    fn a_local_thread_count_stays_on_its_thread() {
        let global = Ctx::current();
        assert_eq!(set_local_threads(Some(3)), None);
        assert_eq!(Ctx::current().threads(), 3);
        std::thread::spawn(move || assert_eq!(Ctx::current(), global))
            .join()
            .unwrap();
        assert_eq!(set_local_threads(None), Some(3));
        assert_eq!(Ctx::current(), global);
    }

    #[test]
    fn small_work_runs_on_one_chunk() {
        assert_eq!(Ctx::new(2).chunks_for(10), 1);
        assert_eq!(Ctx::serial().chunks_for(1 << 30), 1);
    }
}
