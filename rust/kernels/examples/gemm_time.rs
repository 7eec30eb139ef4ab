//! Times the exact int8 GEMM on one shape, one and two threads, output
//! buffer reused or fresh per call, all four timed round-robin in one process
//! (so that a noisy machine's drift hits them alike):
//! `cargo run --release --example gemm_time -- M K N`.
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::{self, output::OutputStep, ASource, PackedB, ZeroPoint};
use std::time::Instant;

mod common;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let (m, k, n) = (args[0], args[1], args[2]);
    let mut lcg = common::Lcg::new(12345);
    let mut rnd = move || lcg.byte();
    let a: Vec<u8> = (0..m * k).map(|_| rnd()).collect();
    let b: Vec<i8> = (0..k * n).map(|_| rnd() as i8).collect();
    let pb = PackedB::from_kn_i8(&Ctx::current(), &b, k, n, ZeroPoint::Scalar(0)).unwrap();
    let mut out = vec![0i32; m * n];
    let mut call = |ctx: &Ctx, fresh: bool| {
        if fresh {
            let mut o: Vec<i32> = Vec::with_capacity(m * n);
            let dst = &mut o.spare_capacity_mut()[..m * n];
            gemm::matmul_uninit(
                ctx,
                ASource::U8(&a),
                m,
                k,
                ZeroPoint::Scalar(0),
                &pb,
                &OutputStep::Int32,
                dst,
            )
            .unwrap();
            // SAFETY: on Ok every element was written.
            unsafe { o.set_len(m * n) };
            std::hint::black_box(o);
        } else {
            gemm::matmul(
                ctx,
                ASource::U8(&a),
                m,
                k,
                ZeroPoint::Scalar(0),
                &pb,
                &OutputStep::Int32,
                &mut out,
            )
            .unwrap()
        }
    };
    let modes = [(1, false), (2, false), (1, true), (2, true)];
    let mut samples = vec![Vec::new(); modes.len()];
    for _ in 0..9 {
        for (s, &(threads, fresh)) in samples.iter_mut().zip(&modes) {
            let ctx = Ctx::new(threads);
            call(&ctx, fresh);
            let (t0, mut calls) = (Instant::now(), 0u32);
            while t0.elapsed().as_secs_f64() < 0.02 {
                call(&ctx, fresh);
                calls += 1;
            }
            s.push(t0.elapsed().as_secs_f64() / calls as f64);
        }
    }
    for (s, (threads, fresh)) in samples.iter_mut().zip(modes) {
        s.sort_by(|x, y| x.total_cmp(y));
        let t = s[s.len() / 2];
        let out = if fresh { "fresh out" } else { "reused out" };
        println!(
            "{m}x{k}x{n} {threads} thr {out}: {:8.1} us {:5.0} GOP/s",
            t * 1e6,
            2.0 * (m * k * n) as f64 / t / 1e9
        );
    }
}
