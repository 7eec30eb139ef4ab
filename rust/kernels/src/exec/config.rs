//! The thread policy of the process: `set_num_threads`, else
//! `HWREG_NUM_THREADS`, else `OMP_NUM_THREADS` (so a process tuned for
//! OpenMP libraries needs no second setting), else the cores this process may
//! use. Read into a [`super::Ctx`] per call; nothing here runs threads.
//!
//! A variable's value counts when it is a whole number in `1..=MAX_ENV_THREADS`
//! (surrounding blanks allowed; for `OMP_NUM_THREADS` the first entry of
//! OpenMP's nested list `"4,2"`). Anything else (empty, `0`, `-2`, `four`,
//! `1e3`, a count above the bound) is ignored and the next source is used:
//! a malformed setting must not stop the import of a library that merely
//! runs faster with it, and the fallback is the one an unset variable gets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static OVERRIDE: AtomicUsize = AtomicUsize::new(0);

/// The largest count taken from the environment (Python's `set_num_threads` has
/// the same bound): above it a value is a typo, not a machine.
pub(crate) const MAX_ENV_THREADS: usize = 1 << 16;

/// Sets the thread count for the rest of the process (0 restores the default).
pub fn set_num_threads(n: usize) {
    OVERRIDE.store(n, Ordering::Relaxed);
}

/// Threads to use: the count given to [`set_num_threads`], else the
/// environment's (as set when first read; see the module docs), else the
/// parallelism available to this process.
pub fn num_threads() -> usize {
    let n = OVERRIDE.load(Ordering::Relaxed);
    if n > 0 {
        return n;
    }
    env_threads().unwrap_or_else(available_cores)
}

/// The count of `HWREG_NUM_THREADS`, else of `OMP_NUM_THREADS`, read once:
/// every kernel call asks for the thread count, and reading the environment
/// takes a lock and a scan each time.
fn env_threads() -> Option<usize> {
    static ENV: OnceLock<Option<usize>> = OnceLock::new();
    *ENV.get_or_init(|| {
        let var = |name| std::env::var(name).ok();
        thread_setting(
            var("HWREG_NUM_THREADS").as_deref(),
            var("OMP_NUM_THREADS").as_deref(),
        )
    })
}

/// The policy of the module docs on the two variables' values.
pub(crate) fn thread_setting(hwreg: Option<&str>, omp: Option<&str>) -> Option<usize> {
    let count = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ENV_THREADS).contains(n))
    };
    hwreg
        .and_then(count)
        .or_else(|| omp.and_then(|v| count(v.split(',').next().unwrap_or(""))))
}

/// Cores this process may use, read once: `available_parallelism` reads cgroup
/// files on every call (tens of µs), far too slow for a per-kernel-call check.
fn available_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::thread_setting as t;

    #[test]
    fn hwreg_then_omp_and_malformed_values_are_ignored() {
        assert_eq!(t(None, None), None);
        assert_eq!(t(Some("3"), Some("5")), Some(3));
        assert_eq!(t(None, Some("5")), Some(5));
        assert_eq!(t(Some(" 2 "), None), Some(2));
        assert_eq!(t(None, Some("4,2")), Some(4));
        for bad in [
            "",
            "0",
            "-2",
            "four",
            "1e3",
            "2.5",
            "65537",
            "99999999999999999999999",
        ] {
            assert_eq!(t(Some(bad), Some("6")), Some(6), "{bad:?}");
            assert_eq!(t(Some(bad), None), None, "{bad:?}");
            assert_eq!(t(None, Some(bad)), None, "{bad:?}");
        }
        assert_eq!(t(Some("65536"), None), Some(65536));
    }
}
