//! Times the depthwise kernel (uint8 out through a requantizing step, as a
//! static graph runs it) on MobileNetV2-at-32×32 layer shapes:
//! `cargo run --release --example depthwise_time [reps]`.
use std::mem::MaybeUninit;
use std::time::Instant;

use hwreg_kernels::depthwise::{depthwise_conv2d_wide, Depthwise, Wide};
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::output::{Fused, OutputStep, Param, Requant};

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let ctx = Ctx::serial();
    for (n, hw, c, s) in [
        (32usize, 16usize, 32usize, 1usize),
        (32, 16, 96, 2),
        (32, 8, 144, 1),
        (32, 4, 192, 1),
        (32, 2, 384, 1),
        (1, 2, 384, 1),
        (1, 1, 960, 1),
    ] {
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
        let t0 = Instant::now();
        for _ in 0..reps {
            depthwise_conv2d_wide(&ctx, &x, &zp, &wide, &g, &step, &mut out).unwrap();
        }
        let t = t0.elapsed().as_secs_f64() / reps as f64;
        let macs = (os * 9) as f64;
        println!(
            "n {n} {hw}x{hw}x{c} s{s}: {:.2} us, {:.1} GMAC/s",
            t * 1e6,
            macs / t * 1e-9
        );
    }
}
