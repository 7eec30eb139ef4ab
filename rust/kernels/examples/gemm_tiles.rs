//! Per-thread efficiency of the packed int8 GEMM: GOP/s at 1 thread for the
//! shapes of issue #13 (transformer and convolution products), beside the
//! register-only `vpdpbusd` rate of this CPU measured in the same process
//! (a loop of independent `vpdpbusd zmm` on registers; no memory operand).
//! All measurements run round-robin (median of the rounds) and count this
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so that time slices lost
//! to other processes on a busy machine do not count:
//! `cargo run --release -p hwreg-kernels --example gemm_tiles [-- M K N ...]`.
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::{
    self,
    output::{OutElem, OutputStep, Param},
    ASource, PackedB, ZeroPoint,
};

mod common;

use common::cpu_now;

const SHAPES: [(usize, usize, usize); 8] = [
    (32, 768, 768),
    (128, 768, 3072),
    (512, 1024, 1024),
    (1024, 1024, 1024),
    (3136, 576, 64),
    (784, 1152, 128),
    (2048, 9, 16),
    (2048, 144, 32),
];

/// Independent `vpdpbusd` chains per loop step: more than the latency ×
/// throughput product of any x86 core, so the loop runs at throughput.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 16;
#[cfg(target_arch = "x86_64")]
const STEPS: usize = 1 << 16;

/// Seconds for `STEPS × CHAINS` register-only `vpdpbusd zmm`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd_loop() -> f64 {
    use std::arch::x86_64::*;
    let a = std::hint::black_box(_mm512_set1_epi32(0x0101_0101));
    let b = std::hint::black_box(_mm512_set1_epi32(0x0102_0304));
    let mut s = [_mm512_setzero_si512(); CHAINS];
    let t0 = cpu_now();
    for _ in 0..STEPS {
        for v in s.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    let dt = cpu_now() - t0;
    std::hint::black_box(s);
    dt
}

/// Seconds for `STEPS × CHAINS` dependent 1-cycle `add`s: the core clock.
#[cfg(target_arch = "x86_64")]
fn add_chain() -> f64 {
    let mut x = 0u64;
    let t0 = cpu_now();
    for _ in 0..STEPS {
        // SAFETY: register arithmetic only.
        unsafe {
            std::arch::asm!(
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                x = inout(reg) x, options(nomem, nostack),
            )
        };
    }
    let dt = cpu_now() - t0;
    std::hint::black_box(x);
    dt
}

/// One shape: random uint8 A, int8 B packed once, int32 output reused.
struct Case {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<u8>,
    pb: PackedB,
    out: Vec<i32>,
    out_f32: Vec<f32>,
}

impl Case {
    fn new(m: usize, k: usize, n: usize, seed: u64) -> Case {
        let mut lcg = common::Lcg::new(seed);
        let mut rnd = move || lcg.byte();
        let a: Vec<u8> = (0..m * k).map(|_| rnd()).collect();
        let b: Vec<i8> = (0..k * n).map(|_| rnd() as i8).collect();
        let pb = PackedB::from_kn_i8(&Ctx::new(1), &b, k, n, ZeroPoint::Scalar(0)).expect("pack B");
        Case {
            m,
            k,
            n,
            a,
            pb,
            out: vec![0; m * n],
            out_f32: vec![0.0; m * n],
        }
    }

    /// `i32` output straight from the kernel, or `f32` through the output
    /// step (the runtime's int8 layers) with a nonzero A zero point (static
    /// int8 activations).
    fn call(&mut self, ctx: &Ctx, f32_out: bool) {
        let float = OutputStep::Float {
            row_scale: Param::Scalar(0.01),
            col_scale: Param::Scalar(0.02),
            bias: None,
            relu: true,
        };
        let (m, k, pb, a) = (self.m, self.k, &self.pb, ASource::U8(&self.a));
        if f32_out {
            product(ctx, a, m, k, 3, pb, &float, &mut self.out_f32)
        } else {
            product(ctx, a, m, k, 0, pb, &OutputStep::Int32, &mut self.out)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn product<T: OutElem>(
    ctx: &Ctx,
    a: ASource<'_>,
    m: usize,
    k: usize,
    za: i32,
    pb: &PackedB,
    step: &OutputStep<'_>,
    out: &mut [T],
) {
    gemm::matmul(ctx, a, m, k, ZeroPoint::Scalar(za), pb, step, out).expect("matmul");
}

fn median(s: &mut [f64]) -> f64 {
    s.sort_by(|x, y| x.total_cmp(y));
    s[s.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let shapes: Vec<(usize, usize, usize)> = if args.is_empty() {
        SHAPES.to_vec()
    } else {
        args.chunks_exact(3).map(|c| (c[0], c[1], c[2])).collect()
    };
    let ctx = Ctx::new(1);
    let mut cases: Vec<Case> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(m, k, n))| Case::new(m, k, n, 12345 + i as u64))
        .collect();
    #[cfg(target_arch = "x86_64")]
    let vnni = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
    let mut peak = Vec::new();
    let mut clock = Vec::new();
    let mut samples = vec![Vec::new(); 2 * cases.len()];
    for _ in 0..9 {
        #[cfg(target_arch = "x86_64")]
        if vnni {
            // SAFETY: the CPU has AVX-512 VNNI (checked above).
            let dt = unsafe { dpbusd_loop() };
            peak.push((STEPS * CHAINS * 64 * 2) as f64 / dt / 1e9);
            clock.push((STEPS * 16) as f64 / add_chain() / 1e9);
        }
        for (i, s) in samples.iter_mut().enumerate() {
            let (c, f32_out) = (&mut cases[i / 2], i % 2 == 1);
            c.call(&ctx, f32_out);
            let (t0, mut calls) = (cpu_now(), 0u32);
            while cpu_now() - t0 < 0.03 {
                c.call(&ctx, f32_out);
                calls += 1;
            }
            s.push((cpu_now() - t0) / calls as f64);
        }
    }
    let peak = if peak.is_empty() {
        f64::NAN
    } else {
        median(&mut peak)
    };
    if !clock.is_empty() {
        let ghz = median(&mut clock);
        println!(
            "register-only vpdpbusd zmm: {peak:.0} GOP/s at ~{ghz:.2} GHz = {:.2} per cycle",
            peak / (2.0 * 64.0) / ghz
        );
    }
    println!("| M x K x N | i32 out: us | GOP/s | % of peak | f32 out (za = 3): us | GOP/s | % of peak |");
    println!("|---|---|---|---|---|---|---|");
    for (s, c) in samples.chunks_exact_mut(2).zip(&cases) {
        let ops = 2.0 * (c.m * c.k * c.n) as f64;
        let cols: Vec<String> = s
            .iter_mut()
            .map(|s| {
                let t = median(s);
                let gops = ops / t / 1e9;
                format!("{:.1} | {gops:.0} | {:.0}%", t * 1e6, 100.0 * gops / peak)
            })
            .collect();
        println!("| {}x{}x{} | {} |", c.m, c.k, c.n, cols.join(" | "));
    }
}
