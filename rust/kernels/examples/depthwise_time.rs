//! Times the depthwise kernel (uint8 out through a requantizing step, as a
//! static graph runs it) on MobileNetV2-at-32×32 layer shapes:
//! `cargo run --release --example depthwise_time [reps] [shape index]` (one shape: for callgrind).
//! Times are the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): on a machine
//! loaded by other processes wall time varied 2x from run to run, CPU time
//! by a few percent.
use std::mem::MaybeUninit;

use hwreg_kernels::depthwise::{depthwise_conv2d_wide, Depthwise, Wide};
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::output::{Fused, OutputStep, Param, Requant};

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let only: Option<usize> = std::env::args().nth(2).and_then(|a| a.parse().ok());
    let ctx = Ctx::serial();
    for (i, (n, hw, c, s)) in [
        (1usize, 16usize, 32usize, 1usize),
        (1, 16, 96, 2),
        (1, 8, 144, 1),
        (1, 8, 144, 2),
        (1, 4, 192, 1),
        (1, 4, 192, 2),
        (1, 2, 576, 1),
        (32, 16, 32, 1),
        (32, 16, 96, 2),
        (32, 8, 144, 1),
        (32, 4, 192, 1),
        (32, 2, 384, 1),
        (1, 2, 384, 1),
        (1, 1, 960, 1),
    ]
    .into_iter()
    .enumerate()
    {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let g = Depthwise {
            n,
            h: hw,
            w: hw,
            c,
            kernel: (3, 3),
            stride: (s, s),
            dilation: (1, 1),
            padding: [1; 4],
        };
        let (xs, ws, os) = g.sizes().unwrap();
        let x: Vec<u8> = (0..xs).map(|i| (i * 7 % 251) as u8).collect();
        let w: Vec<i8> = (0..ws).map(|i| (i * 5 % 13) as i8 - 6).collect();
        let wide = Wide::new(&w, (3, 3), c).unwrap();
        let (zp, sc) = (vec![3i32; n], vec![0.02f32; n]);
        let cs = vec![0.01f32; c];
        let bias = vec![0.1f32; c];
        let step = OutputStep::Fused(Fused {
            row_scale: Param::PerIndex(&sc),
            col_scale: Param::PerIndex(&cs),
            bias: Some(&bias),
            residual: None,
            relu: true,
            requant: Some(Requant {
                y_scale: 0.05,
                y_zero_point: 0,
                lo: 0,
                hi: 120,
            }),
        });
        let mut out = vec![MaybeUninit::<u8>::uninit(); os];
        depthwise_conv2d_wide(&ctx, &x, &zp, &wide, &g, &step, &mut out).unwrap();
        let t0 = cpu_seconds();
        for _ in 0..reps {
            depthwise_conv2d_wide(&ctx, &x, &zp, &wide, &g, &step, &mut out).unwrap();
        }
        let t = (cpu_seconds() - t0) / reps as f64;
        let macs = (os * 9) as f64;
        println!(
            "n {n} {hw}x{hw}x{c} s{s}: {:.2} us, {:.1} GMAC/s",
            t * 1e6,
            macs / t * 1e-9
        );
    }
}

/// The calling thread's CPU time in seconds.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
