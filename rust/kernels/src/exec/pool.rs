//! The library's rayon pool for data-parallel loops: private (we do not
//! fight whatever else uses rayon's global pool) and rebuilt after `fork()`,
//! so a forked child (multiprocessing, Dask, Ray workers) gets live threads.
//! A leaf: its size comes from the caller's [`super::Ctx`].

use std::sync::{Arc, Mutex};

struct PoolEntry {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<PoolEntry>> = Mutex::new(None);

/// The library's rayon pool of `threads` threads, created on first use and
/// again after a fork or when a call asks for another size.
pub fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    let pid = std::process::id();
    let threads = threads.max(1);
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
