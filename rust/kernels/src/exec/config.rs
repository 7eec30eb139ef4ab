//! The thread policy of the process: `set_num_threads`, else
//! `HWREG_NUM_THREADS`, else the cores this process may use. Read into a
//! [`super::Ctx`] per call; nothing here runs threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

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
