//! A fork-join team for latency-critical kernels (GEMM, convolution): the
//! calling thread plus `threads - 1` workers that spin briefly between jobs
//! before they park. A leaf: it knows nothing of the thread policy
//! ([`super::Ctx`] asks for a team of its size).
//!
//! Why not rayon here: a GEMM of a few hundred microseconds is split into a
//! handful of tasks, and what it costs to start them decides whether a second
//! thread pays. `ThreadPool::install` parks the caller and wakes every worker;
//! on a VM each wake-up of a halted vCPU costs tens to hundreds of
//! microseconds (measured on the 2-vCPU CI machine: a 32×1024×1024 GEMM took
//! 410 µs on two rayon threads after a pause and 250 µs on one). ONNX Runtime
//! and OpenMP runtimes avoid it the same way: the caller works too, and
//! workers keep polling for a short while after a job, so back-to-back calls
//! (the layers of one model, the rounds of a benchmark) find them awake.
//! Workers spin `HWREG_SPIN_US` microseconds (default [`DEFAULT_SPIN_US`];
//! 0 parks at once), yielding to other runnable threads while they do.
//! Waking a parked worker costs the caller more than a small job gains from
//! it (see [`WAKE_MIN_WORK`]), so a small job that comes alone (more than
//! `STREAM_GAP` after the previous one) leaves them parked and runs on the
//! caller; a longer spin was not the fix, since it would burn the second
//! core through every pause.
//!
//! Rayon remains the pool for data-parallel loops ([`super::Ctx::run`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before it parks.
pub const DEFAULT_SPIN_US: u64 = 200;

/// Below this much work (multiply-accumulates, as `Ctx::for_each_task`
/// counts it) a job that finds the workers parked and follows no recent job
/// runs on the caller alone. Measured on the 2-vCPU Zen 5 VM (loaded):
/// `unpark` costs the caller 8-20 µs and the worker starts its first task
/// 50-70 µs later, so a job under ~100 µs on one thread (a cold 1×1024×1024
/// int8 product, 1M MACs, ~75 µs) only paid for the wake-up (137 µs on two
/// threads); a 16M-MAC one still gains from the second thread.
pub const WAKE_MIN_WORK: usize = 1 << 21;

/// A job that starts within this long of the previous one's end is part of
/// a stream (a model's layers, a loop of calls): it wakes parked workers
/// whatever its size, so that the jobs after it find them awake.
const STREAM_GAP: Duration = Duration::from_millis(1);

fn spin_time() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("HWREG_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        Duration::from_micros(us.unwrap_or(DEFAULT_SPIN_US).min(1_000_000))
    })
}

/// One posted job: `task(i)` for every index the shared counter hands out.
#[derive(Clone, Copy)]
struct JobRef {
    task: *const (dyn Fn(usize) + Sync),
    next: *const AtomicUsize,
    ntasks: usize,
    epoch: u64,
}

// SAFETY: the pointers are only dereferenced while the posting caller waits
// for every worker that joined the job (see `Team::for_each`).
unsafe impl Send for JobRef {}

impl JobRef {
    /// Runs tasks until the counter is exhausted.
    ///
    /// # Safety
    /// The job's caller must still be waiting in `Team::for_each`.
    unsafe fn drain(&self) {
        let (task, next) = (&*self.task, &*self.next);
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= self.ntasks {
                break;
            }
            task(i);
        }
    }
}

struct Shared {
    /// Bumped for every posted job; workers poll it.
    epoch: AtomicU64,
    /// The current job, `None` once its caller stops accepting helpers.
    job: Mutex<Option<JobRef>>,
    /// Workers inside the current job.
    active: AtomicUsize,
    /// A worker's task panicked during the current job.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// The CPU the current job's caller posted it from (`usize::MAX`: unknown).
    caller_cpu: AtomicUsize,
    /// Workers parked (not polling).
    parked: AtomicUsize,
}

/// The team: shared state, worker handles, and the lock one caller holds.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<Thread>,
    caller: Mutex<()>,
    pid: u32,
    /// When the last job ended, in nanoseconds after `born`.
    last_end: AtomicU64,
    born: Instant,
}

impl Team {
    fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            caller_cpu: AtomicUsize::new(usize::MAX),
            parked: AtomicUsize::new(0),
        });
        let mut workers = Vec::new();
        for i in 1..threads {
            let s = Arc::clone(&shared);
            match thread::Builder::new()
                .name(format!("hwreg-team-{i}"))
                .spawn(move || worker(&s))
            {
                Ok(h) => workers.push(h.thread().clone()),
                Err(_) => break, // resource limits: fewer helpers, the caller still works
            }
        }
        Team {
            shared,
            workers,
            caller: Mutex::new(()),
            pid: std::process::id(),
            last_end: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Threads that work on a job: the workers plus the caller.
    pub fn size(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `task(i)` for every `i` in `0..ntasks`, each once, on the caller
    /// and the workers. If another thread is using the team (or a task calls
    /// back in), runs serially on the caller instead of waiting; so does a
    /// job of less than [`WAKE_MIN_WORK`] `work` that finds the workers
    /// parked outside a stream of jobs (`STREAM_GAP`).
    pub fn for_each(&self, work: usize, ntasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let guard = match self.caller.try_lock() {
            Ok(g) if ntasks > 1 && !self.workers.is_empty() => g,
            // A task that panicked on the caller poisoned the lock; the team is fine.
            Err(std::sync::TryLockError::Poisoned(p)) if ntasks > 1 && !self.workers.is_empty() => {
                p.into_inner()
            }
            _ => {
                (0..ntasks).for_each(task);
                return;
            }
        };
        let sh = &*self.shared;
        let start = self.now_ns();
        let woken = sh.parked.load(Ordering::Acquire) > 0;
        let isolated = start.saturating_sub(self.last_end.load(Ordering::Relaxed))
            > STREAM_GAP.as_nanos() as u64;
        if woken && isolated && work < WAKE_MIN_WORK {
            (0..ntasks).for_each(task);
            self.last_end.store(self.now_ns(), Ordering::Relaxed);
            return;
        }
        let next = AtomicUsize::new(0);
        let epoch = sh.epoch.load(Ordering::Relaxed) + 1;
        // SAFETY (lifetime erasure): `Finish` below keeps this frame alive
        // until no worker can touch `task` or `next`.
        let task_static: *const (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute(task) };
        let job = JobRef {
            task: task_static,
            next: &next,
            ntasks,
            epoch,
        };
        *lock(&sh.job) = Some(job);
        sh.panicked.store(false, Ordering::Relaxed);
        sh.caller_cpu.store(
            placement::current_cpu().unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        sh.epoch.store(epoch, Ordering::Release);
        for w in self.workers.iter().take(ntasks - 1) {
            w.unpark();
        }
        if woken {
            // A parked worker that the scheduler woke onto this CPU waits behind
            // the caller; yielding once lets it run and move itself (see `join`).
            thread::yield_now();
        }
        let finish = Finish(sh);
        // SAFETY: we are the waiting caller.
        unsafe { job.drain() };
        drop(finish);
        self.last_end.store(self.now_ns(), Ordering::Relaxed);
        drop(guard);
        if sh.panicked.load(Ordering::Acquire) {
            panic!("a task of a parallel kernel panicked on a worker thread");
        }
    }
}

/// Closes the current job and waits for the workers inside it (also when the
/// caller's own task unwinds, since the job borrows the caller's frame).
struct Finish<'a>(&'a Shared);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        *lock(&self.0.job) = None;
        let mut spins = 0u32;
        while self.0.active.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn worker(sh: &Shared) {
    // From 0, not the current epoch: a job posted while this thread started is still joined.
    let mut seen = 0;
    loop {
        // Poll for a new epoch for `spin_time()`, then park until unparked.
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            if sh.stop.load(Ordering::Relaxed) {
                return;
            }
            let e = sh.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                join(sh, e);
                break;
            }
            polls = polls.wrapping_add(1);
            if polls % 64 == 0 {
                if start.elapsed() >= spin_time() {
                    sh.parked.fetch_add(1, Ordering::AcqRel);
                    thread::park();
                    sh.parked.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Joins job `epoch` if its caller still accepts helpers.
fn join(sh: &Shared, epoch: u64) {
    let job = {
        let g = lock(&sh.job);
        match *g {
            Some(j) if j.epoch == epoch => {
                sh.active.fetch_add(1, Ordering::AcqRel);
                j
            }
            _ => return,
        }
    };
    placement::leave_cpu(sh.caller_cpu.load(Ordering::Relaxed));
    // SAFETY: `active` > 0 keeps the caller waiting in `Finish::drop`.
    if catch_unwind(AssertUnwindSafe(|| unsafe { job.drain() })).is_err() {
        sh.panicked.store(true, Ordering::Release);
    }
    sh.active.fetch_sub(1, Ordering::AcqRel);
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in &self.workers {
            w.unpark();
        }
    }
}

static TEAM: Mutex<Option<Arc<Team>>> = Mutex::new(None);

/// The process's team of `threads` threads (the caller included); created
/// on first use and again after a fork or when a call asks for another size.
pub fn team(threads: usize) -> Arc<Team> {
    let threads = threads.max(1);
    let pid = std::process::id();
    let mut g = lock(&TEAM);
    if let Some(t) = g.as_ref() {
        if t.pid == pid && t.size() == threads {
            return Arc::clone(t);
        }
        if t.pid != pid {
            // After fork() the workers do not exist in this process: forget
            // the old team without touching its (absent) threads.
            std::mem::forget(g.take());
        }
    }
    let t = Arc::new(Team::new(threads));
    *g = Some(Arc::clone(&t));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moving off the caller's CPU restores the thread's affinity exactly.
    #[cfg(target_os = "linux")]
    #[test]
    fn leaving_a_cpu_keeps_the_affinity() {
        let mask = || {
            let mut m: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::cpu_set_t>();
            // SAFETY: m is a cpu_set_t of `size` bytes.
            assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut m) }, 0);
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| unsafe { libc::CPU_ISSET(c, &m) })
                .collect::<Vec<_>>()
        };
        let before = mask();
        let here = super::placement::current_cpu().expect("sched_getcpu works on Linux");
        super::placement::leave_cpu(here);
        assert_eq!(mask(), before);
        super::placement::leave_cpu(usize::MAX); // unknown caller CPU: nothing to do
        assert_eq!(mask(), before);
    }

    #[test]
    fn every_task_runs_once() {
        let t = Team::new(3);
        for n in [0usize, 1, 2, 5, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            t.for_each(usize::MAX, n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn an_isolated_small_job_leaves_parked_workers_asleep() {
        let t = Team::new(2);
        let me = thread::current().id();
        for _ in 0..3 {
            // Wait until the worker parks, then past the stream gap.
            let t0 = Instant::now();
            while t.shared.parked.load(Ordering::Acquire) == 0
                && t0.elapsed() < Duration::from_secs(5)
            {
                thread::sleep(Duration::from_millis(1));
            }
            thread::sleep(STREAM_GAP * 2);
            let (elsewhere, n) = (AtomicUsize::new(0), AtomicUsize::new(0));
            t.for_each(WAKE_MIN_WORK - 1, 8, &|_| {
                n.fetch_add(1, Ordering::Relaxed);
                if thread::current().id() != me {
                    elsewhere.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert_eq!(n.load(Ordering::Relaxed), 8);
            if t.shared.parked.load(Ordering::Acquire) > 0 {
                assert_eq!(elsewhere.load(Ordering::Relaxed), 0);
            }
        }
    }

    #[test]
    fn nested_calls_run_serially() {
        let t = Team::new(2);
        let total = AtomicUsize::new(0);
        t.for_each(usize::MAX, 4, &|_| {
            t.for_each(usize::MAX, 3, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_survives() {
        let t = Team::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            t.for_each(usize::MAX, 64, &|i| {
                if i == 63 {
                    panic!("boom");
                }
                thread::sleep(Duration::from_micros(50));
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        t.for_each(usize::MAX, 10, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 10);
    }
}

/// Keeping a woken worker off its caller's CPU.
///
/// On a VM a vCPU that has been idle for a while looks busy to the guest's
/// scheduler (its host thread is not running), so a worker woken after a pause
/// is often queued on the caller's own CPU and only migrates milliseconds later:
/// measured on the 2-vCPU machine, a 512×1024×1024 GEMM on two threads ran at
/// one thread's speed for its first three calls after a 50 ms pause (3.1 ms,
/// against 1.5 ms warm). A worker that finds itself on the caller's CPU moves
/// to another allowed CPU by narrowing its affinity for an instant and
/// restoring it, which migrates it at once and pins nothing.
mod placement {
    #[cfg(target_os = "linux")]
    pub fn current_cpu() -> Option<usize> {
        // SAFETY: sched_getcpu has no preconditions.
        let c = unsafe { libc::sched_getcpu() };
        usize::try_from(c).ok()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn current_cpu() -> Option<usize> {
        None
    }

    #[cfg(target_os = "linux")]
    pub fn leave_cpu(cpu: usize) {
        if cpu >= libc::CPU_SETSIZE as usize || current_cpu() != Some(cpu) {
            return;
        }
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: cpu_set_t is plain data; the calls get its true size, and
        // `cpu` is below CPU_SETSIZE (checked above).
        unsafe {
            let mut allowed: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut allowed) != 0 || libc::CPU_COUNT(&allowed) < 2
            {
                return;
            }
            let mut elsewhere = allowed;
            libc::CPU_CLR(cpu, &mut elsewhere);
            if libc::sched_setaffinity(0, size, &elsewhere) == 0 {
                libc::sched_setaffinity(0, size, &allowed);
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn leave_cpu(_cpu: usize) {}
}
