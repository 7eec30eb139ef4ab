//! Times the exact int8 GEMM on one shape, one and two threads: packed B
//! with the output buffer reused or fresh per call, and B given per call
//! (row-major), all timed round-robin in one process (so that a noisy
//! machine's drift hits them alike):
//! `cargo run --release --example gemm_time -- M K N [cold]`.
//! `cold`: before every call a buffer twice the L3's size is read, so B
//! comes from memory (without it B stays in L3 when it fits there).
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::{self, output::OutputStep, ASource, PackedB, ZeroPoint};
use std::mem::MaybeUninit;
use std::time::Instant;

mod common;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Packed,
    PackedFresh,
    BPerCall,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dims: Vec<usize> = args[..3]
        .iter()
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let cold = args.get(3).is_some_and(|a| a == "cold");
    let (m, k, n) = (dims[0], dims[1], dims[2]);
    let mut lcg = common::Lcg::new(12345);
    let mut rnd = move || lcg.byte();
    let a: Vec<u8> = (0..m * k).map(|_| rnd()).collect();
    let b: Vec<i8> = (0..k * n).map(|_| rnd() as i8).collect();
    let pb = PackedB::from_kn_i8(&Ctx::current(), &b, k, n, ZeroPoint::Scalar(0)).unwrap();
    let mut out = vec![0i32; m * n];
    let mut out_b = vec![MaybeUninit::<i32>::uninit(); m * n];
    // 64 MiB: twice the 32 MiB L3 of the machines we time on.
    let flush: Vec<u64> = (0..8 << 20).map(|i| i as u64).collect();
    let mut call = |ctx: &Ctx, kind: Kind| match kind {
        Kind::PackedFresh => {
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
        }
        Kind::Packed => gemm::matmul(
            ctx,
            ASource::U8(&a),
            m,
            k,
            ZeroPoint::Scalar(0),
            &pb,
            &OutputStep::Int32,
            &mut out,
        )
        .unwrap(),
        Kind::BPerCall => gemm::matmul_b_rows(
            ctx,
            ASource::U8(&a),
            m,
            k,
            ZeroPoint::Scalar(0),
            ASource::I8(&b),
            n,
            ZeroPoint::Scalar(0),
            &OutputStep::Int32,
            &mut out_b,
        )
        .unwrap(),
    };
    let evict = || std::hint::black_box(flush.iter().fold(0u64, |s, &v| s ^ v));
    let modes: Vec<(Kind, usize)> = [Kind::Packed, Kind::PackedFresh, Kind::BPerCall]
        .into_iter()
        .flat_map(|kind| [(kind, 1), (kind, 2)])
        .collect();
    let mut samples = vec![Vec::new(); modes.len()];
    for _ in 0..9 {
        for (s, &(kind, threads)) in samples.iter_mut().zip(&modes) {
            let ctx = Ctx::new(threads);
            call(&ctx, kind);
            let (mut spent, mut calls) = (0.0, 0u32);
            while spent < 0.02 {
                if cold {
                    evict();
                }
                let t0 = Instant::now();
                call(&ctx, kind);
                spent += t0.elapsed().as_secs_f64();
                calls += 1;
            }
            s.push(spent / calls as f64);
        }
    }
    for (s, (kind, threads)) in samples.iter_mut().zip(modes) {
        s.sort_by(|x, y| x.total_cmp(y));
        let t = s[s.len() / 2];
        let what = match kind {
            Kind::Packed => "packed, reused out",
            Kind::PackedFresh => "packed, fresh out ",
            Kind::BPerCall => "B per call        ",
        };
        println!(
            "{m}x{k}x{n} {threads} thr {what}{}: {:8.1} us {:5.0} GOP/s",
            if cold { " (cold)" } else { "" },
            t * 1e6,
            2.0 * (m * k * n) as f64 / t / 1e9
        );
    }
}
