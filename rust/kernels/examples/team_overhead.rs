//! Cost of one fork-join on the team: warm (back-to-back calls, tasks of
//! fixed work) and cold (each call after a pause longer than the workers'
//! spin, so they are parked): the wall time against the same work on the
//! caller alone, when the first worker started a task, and how many tasks
//! the workers took. Each job is declared small (1M MACs: below
//! `WAKE_MIN_WORK`, an isolated one leaves parked workers asleep) or large
//! (16M: wakes them). `cargo run --release --example team_overhead [PAUSE_MS]`.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn spin(iters: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..iters {
        x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
    }
    x
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let pause_ms: u64 = std::env::args()
        .nth(1)
        .map_or(5, |a| a.parse().expect("PAUSE_MS"));
    let team = hwreg_kernels::exec::team::team(2);
    // Calibrate: iterations of `spin` per microsecond on this thread.
    let t = Instant::now();
    spin(2_000_000);
    let per_us = 2_000_000.0 / (t.elapsed().as_secs_f64() * 1e6);
    for (ntasks, job_us, work) in [
        (4usize, 20.0f64, 1 << 20),
        (8, 60.0, 1 << 20),
        (8, 60.0, 1 << 24),
        (16, 60.0, 1 << 24),
        (8, 400.0, 1 << 24),
    ] {
        let iters = (job_us / ntasks as f64 * per_us) as u64;
        let task = |_: usize| {
            std::hint::black_box(spin(iters));
        };
        let reps = 2000;
        let t0 = Instant::now();
        for _ in 0..reps {
            team.for_each(work, ntasks, &task);
        }
        let warm = t0.elapsed().as_secs_f64() / reps as f64 * 1e6;
        let (mut cold, mut serial, mut join, mut taken) = (vec![], vec![], vec![], vec![]);
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(pause_ms));
            let t0 = Instant::now();
            (0..ntasks).for_each(task);
            serial.push(t0.elapsed().as_secs_f64() * 1e6);
            std::thread::sleep(Duration::from_millis(pause_ms));
            let me = std::thread::current().id();
            let (first, n) = (AtomicU64::new(u64::MAX), AtomicUsize::new(0));
            let t0 = Instant::now();
            team.for_each(work, ntasks, &|i| {
                if std::thread::current().id() != me {
                    first.fetch_min(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    n.fetch_add(1, Ordering::Relaxed);
                }
                task(i)
            });
            cold.push(t0.elapsed().as_secs_f64() * 1e6);
            let f = first.load(Ordering::Relaxed);
            join.push(if f == u64::MAX {
                f64::INFINITY
            } else {
                f as f64 / 1e3
            });
            taken.push(n.load(Ordering::Relaxed) as f64);
        }
        println!(
            "{ntasks:2} tasks, {job_us:5.0} us, {:>5}: warm {warm:6.1} us; after {pause_ms} ms: team {:6.1} us, \
             caller alone {:6.1} us, first worker task at {:6.1} us, worker tasks {:.0} (medians of 40)",
            if work < hwreg_kernels::exec::team::WAKE_MIN_WORK { "small" } else { "large" },
            median(&mut cold),
            median(&mut serial),
            median(&mut join),
            median(&mut taken)
        );
    }
}
