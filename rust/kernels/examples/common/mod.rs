//! What the timing examples share: a fixed pseudo-random byte stream (a
//! 64-bit LCG's top byte), so that runs compare like with like, and the one
//! clock of their one-thread figures.

/// The byte stream from `seed`.
#[allow(dead_code)] // not every example draws bytes
pub struct Lcg(u64);

#[allow(dead_code)]
impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed)
    }

    pub fn byte(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 56) as u8
    }
}

/// This thread's CPU time in seconds (the one-thread figures: a loaded
/// machine's waits for a core do not count).
#[cfg(target_os = "linux")]
#[allow(dead_code)] // not every example times one thread
pub fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Elsewhere, wall-clock seconds since the first call.
#[cfg(not(target_os = "linux"))]
#[allow(dead_code)]
pub fn cpu_now() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}
